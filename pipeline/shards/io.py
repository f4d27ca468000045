"""Format-independent reading and writing of single shard files."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.shards import hdf5_format, parquet_format
from pipeline.shards.errors import ShardError
from pipeline.shards.schema import format_of
from pipeline.shards.table import ShardTable

_CODECS = {"parquet": parquet_format, "hdf5": hdf5_format}


class ShardReadError(ShardError):
    """A shard file cannot be decoded (truncated, corrupt, wrong format)."""


def codec(fmt: str):
    try:
        return _CODECS[fmt]
    except KeyError:
        raise ValueError(f"unknown shard format {fmt!r}; choose one of {sorted(_CODECS)}") from None


def write_shard(path: Path, table: ShardTable, metadata: dict, fmt: str) -> None:
    """Write under a temporary name, fsync, and rename: a shard file is complete or absent."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        codec(fmt).write(tmp, table, metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_shard(path: Path, fmt: str | None = None) -> tuple[ShardTable, dict]:
    path = Path(path)
    fmt = fmt or format_of(path.name)
    if fmt is None:
        raise ShardReadError(f"{path}: not a shard file name (.parquet or .h5)")
    try:
        return codec(fmt).read(path)
    # Damaged bytes make pyarrow and h5py fail in many ways (pyarrow's errors derive from
    # ValueError, OSError, NotImplementedError...); all of them mean "cannot read this shard".
    except (OSError, ValueError, KeyError, TypeError, IndexError, NotImplementedError, RuntimeError) as error:
        raise ShardReadError(f"{path}: cannot read {fmt} shard: {error}") from error
