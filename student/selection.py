"""Which shard records a run uses, and the deterministic order in which training draws them.

:func:`select_images` applies each :class:`student.sources.ShardSource`'s frame and
sequence selection to a :class:`student.data.StudentDataset` (training and
evaluation both use it) and, on request, averages the selected boxes' teacher
embeddings (the training-set mean evaluation centres embeddings with).
:class:`DrawStream` is the training sampler: every training image is identified
by a :class:`student.data.SampleKey` (epoch, draw number, image) derived from
the step alone, so a resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Sampler

from pipeline.shards import ShardSet, open_shards
from tdt.config import ConfigError

from .data import SampleKey, StudentDataError, StudentDataset
from .sources import ShardSource


@dataclasses.dataclass(frozen=True)
class SelectedImages:
    """Global dataset indices chosen from each source, and the sources' mixing weights."""

    per_source: tuple[np.ndarray, ...]
    weights: tuple[float, ...]

    @property
    def count(self) -> int:
        return int(sum(len(indices) for indices in self.per_source))

    def all_indices(self) -> np.ndarray:
        return np.concatenate(self.per_source) if self.per_source else np.zeros(0, np.int64)


@dataclasses.dataclass(frozen=True)
class SourceScan:
    """What one pass over a source's shard tables gives: its selected rows and embedding sums."""

    selected: np.ndarray  # bool per record, manifest order
    embedding_sum: np.ndarray | None  # sum of L2-normalised first-D teacher dims over selected boxes
    embedding_count: int


def scan_source(source: ShardSource, embedding_dim: int = 0, *, shards: ShardSet | None = None) -> SourceScan:
    """Select the source's records; with ``embedding_dim`` > 0 also sum, over the selected
    boxes that have an embedding, their teacher embeddings' first ``embedding_dim`` dims,
    each re-normalised to unit length (for the training-set mean used by evaluation).

    ``shards``: the source's shards as a dataset already opened (and checked) them;
    None opens the directory again.
    """
    if shards is None:
        shards = open_shards(source.directory)
    masks = []
    total = np.zeros(embedding_dim, dtype=np.float64) if embedding_dim > 0 else None
    count = 0
    for shard_index in range(len(shards.manifest.shards)):
        table = shards.shard_table(shard_index)
        mask = source.selection_mask(np.asarray(table.frames), table.sequences)
        masks.append(mask)
        if total is not None and table.num_boxes:
            box_selected = np.repeat(mask, np.diff(table.offsets))
            prefix = np.asarray(table.embeddings[box_selected, :embedding_dim], dtype=np.float64)
            prefix = prefix[np.isfinite(prefix).all(axis=1)]
            norms = np.linalg.norm(prefix, axis=1, keepdims=True)
            prefix = prefix[norms[:, 0] > 0] / norms[norms[:, 0] > 0]
            total += prefix.sum(axis=0)
            count += len(prefix)
    selected = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
    return SourceScan(selected, total, count)


def select_images(
    dataset: StudentDataset, sources: Sequence[ShardSource], embedding_dim: int = 0
) -> tuple[SelectedImages, np.ndarray | None]:
    """The dataset's images selected by each source's frames / sequences, and (with
    ``embedding_dim``) the mean of their normalised teacher embedding prefixes."""
    if len(sources) != len(dataset.source_sizes):
        raise ValueError(
            f"{len(sources)} source configs for a dataset of {len(dataset.source_sizes)} sources"
        )
    starts = np.concatenate([[0], np.cumsum(dataset.source_sizes)])
    per_source = []
    total = np.zeros(embedding_dim) if embedding_dim > 0 else None
    count = 0
    for number, source in enumerate(sources):
        scan = scan_source(source, embedding_dim, shards=dataset.shard_set(number))
        if len(scan.selected) != dataset.source_sizes[number]:
            raise StudentDataError(
                f"{source.directory}: {len(scan.selected)} records scanned but the dataset holds "
                f"{dataset.source_sizes[number]}"
            )
        indices = starts[number] + np.flatnonzero(scan.selected)
        if len(indices) == 0:
            raise ConfigError(f"{source.directory}: {source.describe_selection()} select no images")
        per_source.append(indices.astype(np.int64))
        if total is not None and scan.embedding_sum is not None:
            total += scan.embedding_sum
            count += scan.embedding_count
    mean = None
    if total is not None and count > 0:
        mean = (total / count).astype(np.float32)
    selection = SelectedImages(tuple(per_source), tuple(source.weight for source in sources))
    return selection, mean


def overlapping_images(train: Sequence[ShardSource], validation: Sequence[ShardSource]) -> int:
    """How many validation records are also training records (same shard directory).

    Only frame numbers and sequence names are read, for a warning: the shards are not
    hashed again here (the datasets that train and evaluate on them check them).
    """
    overlap = 0
    for validation_source in validation:
        shards = None
        for train_source in train:
            if Path(train_source.directory) != Path(validation_source.directory):
                continue
            if shards is None:
                shards = open_shards(validation_source.directory, verify_checksums=False)
                validation_scan = scan_source(validation_source, shards=shards).selected
            overlap += int((validation_scan & scan_source(train_source, shards=shards).selected).sum())
    return overlap


class DrawStream(Sampler[SampleKey]):
    """An endless, deterministic stream of :class:`SampleKey` s over selected images.

    An epoch is as many draws as there are selected images; each draw picks a
    source by mixing weight, and within a source the images come in a fresh
    random order (each once before any repeats). Epoch ``e`` is seeded by
    (seed, e). Process ``rank`` of ``world_size`` takes global draws
    ``rank, rank + world_size, ...`` (DistributedSampler-style sharding), and
    ``start`` is this process's position in its share, so a run resumed at step
    ``s`` starts at ``s * batch_size``.
    """

    def __init__(
        self, selection: SelectedImages, seed: int, *, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if selection.count == 0:
            raise StudentDataError("no images selected for training")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.selection = selection
        self.seed = seed
        self.start = start
        self.rank = rank
        self.world_size = world_size
        weights = np.asarray(selection.weights, dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self._cached_epoch: tuple[int, np.ndarray] | None = None

    @property
    def epoch_length(self) -> int:
        return self.selection.count

    def epoch_draws(self, epoch: int) -> np.ndarray:
        """Global image indices of one epoch, in draw order."""
        if self._cached_epoch is not None and self._cached_epoch[0] == epoch:
            return self._cached_epoch[1]
        rng = np.random.default_rng([self.seed, epoch])
        length = self.epoch_length
        sources = rng.choice(len(self.probabilities), size=length, p=self.probabilities)
        draws = np.empty(length, dtype=np.int64)
        for number, pool in enumerate(self.selection.per_source):
            positions = np.flatnonzero(sources == number)
            if len(positions) == 0:
                continue
            rounds = math.ceil(len(positions) / len(pool))
            draws[positions] = np.concatenate([rng.permutation(pool) for _ in range(rounds)])[
                : len(positions)
            ]
        self._cached_epoch = (epoch, draws)
        return draws

    def key_at(self, position: int) -> SampleKey:
        epoch, draw = divmod(position * self.world_size + self.rank, self.epoch_length)
        return SampleKey(int(self.epoch_draws(epoch)[draw]), epoch, draw)

    def __iter__(self) -> Iterator[SampleKey]:
        position = self.start
        while True:
            yield self.key_at(position)
            position += 1


__all__ = ["DrawStream", "SelectedImages", "SourceScan", "overlapping_images", "scan_source", "select_images"]
