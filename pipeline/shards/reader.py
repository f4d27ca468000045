"""One reader interface over a shard directory, whatever its format.

The student trainer uses :func:`open_shards`: random access by image index,
iteration, total counts and the teacher fingerprint. Shards are decoded
lazily and a few are kept in memory.

Every shard is checked when it is first read: its file must lie inside the
directory (links included), its sha256 must match the manifest (unless
``verify_checksums=False``), and its content must agree with the manifest
(rows, boxes, embedding size) and be usable: finite boxes, and finite embeddings
for every box that should have one. Ignore boxes have no embedding; they read as
NaN rows, the documented "no embedding" marker, and are not refused. The content
checks cost one pass over arrays already in memory and always run; hashing reads
the file once more (see the README for its cost).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.shards.errors import ShardError
from pipeline.shards.io import ShardReadError, read_shard
from pipeline.shards.manifest import ShardEntry, ShardManifest, read_manifest, sha256_file, shard_path
from pipeline.shards.table import ShardRecord, ShardTable


class ShardChecksumError(ShardError):
    """A shard's bytes do not match the manifest."""


class ShardContentError(ShardError):
    """A shard that decodes but disagrees with its manifest or holds unusable values."""


class ShardSet:
    """All images of one shard directory, in manifest order."""

    def __init__(self, directory: Path, *, verify_checksums: bool = True, cache_shards: int = 4):
        self.directory = Path(directory)
        self.manifest: ShardManifest = read_manifest(self.directory)
        self._verify = verify_checksums
        self._verified: set[int] = set()
        self._cache: OrderedDict[int, ShardTable] = OrderedDict()
        self._cache_size = max(1, cache_shards)
        self._starts = np.cumsum([0] + [s.rows for s in self.manifest.shards]).tolist()

    @property
    def teacher_fingerprint(self) -> dict:
        return self.manifest.teacher

    @property
    def teacher_id(self) -> str:
        return self.manifest.teacher_id

    @property
    def embedding_dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def num_images(self) -> int:
        return self.manifest.num_images

    @property
    def num_boxes(self) -> int:
        return self.manifest.num_boxes

    @property
    def dataset_root(self) -> Path:
        return Path(self.manifest.dataset.root)

    def __len__(self) -> int:
        return self.num_images

    def shard_table(self, shard_index: int) -> ShardTable:
        if shard_index in self._cache:
            self._cache.move_to_end(shard_index)
            return self._cache[shard_index]
        entry = self.manifest.shards[shard_index]
        path = shard_path(self.directory, entry.file)
        if not path.is_file():
            raise ShardReadError(f"{path}: shard file is missing (listed in the manifest)")
        if self._verify and shard_index not in self._verified:
            if sha256_file(path) != entry.sha256:
                raise ShardChecksumError(
                    f"{path}: sha256 differs from the manifest (the file was modified, truncated or replaced)"
                )
            self._verified.add(shard_index)
        table, _ = read_shard(path, self.manifest.format)
        _check_content(table, entry, self.manifest, path)
        self._cache[shard_index] = table
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return table

    def __getitem__(self, index: int) -> ShardRecord:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"image index {index} out of range for {len(self)} images")
        shard = bisect.bisect_right(self._starts, index) - 1
        return self.shard_table(shard).record(index - self._starts[shard])

    def __iter__(self) -> Iterator[ShardRecord]:
        for shard in range(len(self.manifest.shards)):
            table = self.shard_table(shard)
            for row in range(table.num_rows):
                yield table.record(row)


def _check_content(table: ShardTable, entry: ShardEntry, manifest: ShardManifest, path: Path) -> None:
    counts = (table.num_rows, table.num_boxes, table.embedding_dim)
    expected = (entry.rows, entry.boxes, manifest.embedding_dim)
    if counts != expected:
        raise ShardContentError(
            f"{path}: holds {counts[0]} rows, {counts[1]} boxes, {counts[2]}-d embeddings; "
            f"the manifest says {expected[0]}, {expected[1]}, {expected[2]}-d"
        )
    if not np.isfinite(table.boxes).all():
        raise ShardContentError(f"{path}: boxes contain NaN or infinite values")
    should_have = ~table.ignore
    bad = should_have & ~np.isfinite(table.embeddings).all(axis=1)
    if bad.any():
        first_row = int(np.searchsorted(table.offsets, np.flatnonzero(bad)[0], side="right") - 1)
        raise ShardContentError(
            f"{path}: {int(bad.sum())} non-finite embedding(s) of boxes that should have one "
            f"(first in {table.images[first_row]}); NaN marks only ignore boxes"
        )


def open_shards(directory: Path | str, *, verify_checksums: bool = True) -> ShardSet:
    return ShardSet(Path(directory), verify_checksums=verify_checksums)
