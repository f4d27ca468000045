"""One reader interface over a shard directory, whatever its format.

The student trainer uses :func:`open_shards`: random access by image index,
iteration, total counts and the teacher fingerprint. Shards are decoded
lazily and a few are kept in memory.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.shards.io import read_shard
from pipeline.shards.manifest import ShardManifest, read_manifest, sha256_file
from pipeline.shards.table import ShardRecord, ShardTable


class ShardChecksumError(ValueError):
    """A shard's bytes do not match the manifest."""


class ShardSet:
    """All images of one shard directory, in manifest order."""

    def __init__(self, directory: Path, *, verify_checksums: bool = False, cache_shards: int = 4):
        self.directory = Path(directory)
        self.manifest: ShardManifest = read_manifest(self.directory)
        self._verify = verify_checksums
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
        path = self.directory / entry.file
        if self._verify and sha256_file(path) != entry.sha256:
            raise ShardChecksumError(f"{entry.file}: sha256 differs from the manifest")
        table, _ = read_shard(path, self.manifest.format)
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


def open_shards(directory: Path | str, *, verify_checksums: bool = False) -> ShardSet:
    return ShardSet(Path(directory), verify_checksums=verify_checksums)
