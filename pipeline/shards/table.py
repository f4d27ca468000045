"""In-memory columnar form of one shard: flat per-box arrays plus per-image offsets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ShardRecord:
    """One image as stored in a shard (the trainer's unit of data).

    ``embeddings`` is float32 (N, D); rows of ignore boxes (which have no
    embedding) are NaN, and so are their ``teacher_norms``.
    """

    image: str
    width: int
    height: int
    boxes: np.ndarray
    identities: np.ndarray
    ignore: np.ndarray
    embeddings: np.ndarray
    teacher_norms: np.ndarray
    sequence: str = ""
    frame: int = -1

    @property
    def has_embedding(self) -> np.ndarray:
        return ~self.ignore


@dataclass(frozen=True)
class ShardTable:
    """Columns of one shard. Box ``j`` of image ``i`` is row ``offsets[i] + j``."""

    images: list[str]
    widths: np.ndarray
    heights: np.ndarray
    sequences: list[str]
    frames: np.ndarray
    offsets: np.ndarray
    boxes: np.ndarray
    identities: np.ndarray
    ignore: np.ndarray
    embeddings: np.ndarray
    teacher_norms: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.images)

    @property
    def num_boxes(self) -> int:
        return int(self.offsets[-1])

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def has_embedding(self) -> np.ndarray:
        """The contract: exactly the non-ignore boxes carry an embedding (stored values, even NaN)."""
        return ~self.ignore

    @property
    def num_embeddings(self) -> int:
        return int(self.has_embedding.sum())

    def record(self, row: int) -> ShardRecord:
        start, stop = int(self.offsets[row]), int(self.offsets[row + 1])
        return ShardRecord(
            image=self.images[row],
            width=int(self.widths[row]),
            height=int(self.heights[row]),
            boxes=self.boxes[start:stop],
            identities=self.identities[start:stop],
            ignore=self.ignore[start:stop],
            embeddings=self.embeddings[start:stop].astype(np.float32),
            teacher_norms=self.teacher_norms[start:stop],
            sequence=self.sequences[row],
            frame=int(self.frames[row]),
        )

    @classmethod
    def from_records(cls, records: list[ShardRecord], dim: int, dtype: str) -> ShardTable:
        counts = np.array([len(r.boxes) for r in records], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

        def stack(values: list[np.ndarray], shape: tuple[int, ...], np_dtype) -> np.ndarray:
            if not values:
                return np.zeros((0, *shape), dtype=np_dtype)
            return np.concatenate([np.asarray(v, dtype=np_dtype).reshape(-1, *shape) for v in values])

        return cls(
            images=[r.image for r in records],
            widths=np.array([r.width for r in records], dtype=np.int32),
            heights=np.array([r.height for r in records], dtype=np.int32),
            sequences=[r.sequence for r in records],
            frames=np.array([r.frame for r in records], dtype=np.int32),
            offsets=offsets,
            boxes=stack([r.boxes for r in records], (4,), np.float32),
            identities=stack([r.identities for r in records], (), np.int64),
            ignore=stack([r.ignore for r in records], (), bool),
            embeddings=stack([r.embeddings for r in records], (dim,), np.dtype(dtype)),
            teacher_norms=stack([r.teacher_norms for r in records], (), np.float32),
        )
