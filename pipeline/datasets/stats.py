"""Reader statistics: what a reader kept, ignored, clipped and warned about."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

from pipeline.records import ImageRecord


class DatasetWarning(UserWarning):
    """The data disagrees with itself (e.g. seqinfo.ini vs frames present); reading went on."""


@dataclass(frozen=True)
class ReaderStats:
    """Counts over one read of one split; ``summary()`` is the line a CLI prints."""

    images: int
    boxes: int
    ignored: int
    clipped: int
    degenerate: int
    negative_images: int
    skipped_gt_rows: int
    identities: int
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, int | list[str]]:
        """JSON-ready form, for shard manifests and reports."""
        return {**asdict(self), "warnings": list(self.warnings)}

    @property
    def embeddable(self) -> int:
        return self.boxes - self.ignored

    def summary(self) -> str:
        return (
            f"{self.images} images ({self.negative_images} without boxes), {self.boxes} boxes: "
            f"{self.embeddable} embeddable, {self.ignored} ignored "
            f"({self.degenerate} under 2 px), {self.clipped} clipped to the image, "
            f"{self.identities} identities, {self.skipped_gt_rows} gt rows skipped, "
            f"{len(self.warnings)} warnings"
        )


@dataclass
class StatsCollector:
    """Mutable counterpart of ReaderStats, filled while a reader runs."""

    images: int = 0
    boxes: int = 0
    ignored: int = 0
    clipped: int = 0
    degenerate: int = 0
    negative_images: int = 0
    skipped_gt_rows: int = 0
    identity_values: set[int] = field(default_factory=set)
    messages: list[str] = field(default_factory=list)

    def count_record(self, record: ImageRecord, clipped: int, degenerate: int) -> None:
        self.images += 1
        self.boxes += record.num_boxes
        self.ignored += int(record.ignore.sum())
        self.clipped += clipped
        self.degenerate += degenerate
        if record.num_boxes == 0:
            self.negative_images += 1
        self.identity_values.update(record.identities[record.identities >= 0].tolist())

    def warn(self, message: str) -> None:
        self.messages.append(message)
        warnings.warn(message, DatasetWarning, stacklevel=2)

    def freeze(self) -> ReaderStats:
        return ReaderStats(
            images=self.images,
            boxes=self.boxes,
            ignored=self.ignored,
            clipped=self.clipped,
            degenerate=self.degenerate,
            negative_images=self.negative_images,
            skipped_gt_rows=self.skipped_gt_rows,
            identities=len(self.identity_values),
            warnings=tuple(self.messages),
        )
