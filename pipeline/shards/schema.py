"""The shard data contract shared by the Parquet and HDF5 formats.

One row per image; per-box list columns. Embeddings are the teacher's
L2-normalised outputs stored as float16 or float32; boxes without an embedding
(ignore regions, degenerate boxes) have a null embedding (NaN rows in memory).
"""

from __future__ import annotations

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = frozenset({1})
MANIFEST_NAME = "manifest.json"
MANIFEST_KIND = "tdt-embedding-shards"
FORMATS = ("parquet", "hdf5")
DTYPES = ("float16", "float32")
SUFFIX = {"parquet": ".parquet", "hdf5": ".h5"}
METADATA_KEY = "tdt"


def shard_file_name(index: int, fmt: str) -> str:
    return f"shard-{index:05d}{SUFFIX[fmt]}"


def format_of(path_name: str) -> str | None:
    for fmt, suffix in SUFFIX.items():
        if path_name.endswith(suffix):
            return fmt
    return None
