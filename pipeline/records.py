"""The image record: what every dataset reader yields and every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ImageRecord:
    """One annotated image.

    ``image`` is relative to the dataset root (POSIX separators). ``boxes`` are
    x1, y1, x2, y2 in pixels, already clipped to the image. ``identities`` is -1
    where unknown. ``ignore`` marks crowd/ignore regions and degenerate boxes:
    no crop, no embedding, ignored by the detector loss.
    """

    image: str
    width: int
    height: int
    boxes: np.ndarray
    identities: np.ndarray
    ignore: np.ndarray
    sequence: str = ""
    frame: int = -1
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        identities = np.asarray(self.identities, dtype=np.int64).reshape(-1)
        ignore = np.asarray(self.ignore, dtype=bool).reshape(-1)
        if len(identities) != n or len(ignore) != n:
            raise ValueError(
                f"{self.image}: {n} boxes but {len(identities)} identities and {len(ignore)} ignore flags"
            )
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "identities", identities)
        object.__setattr__(self, "ignore", ignore)

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)

    @property
    def num_embeddable(self) -> int:
        return int((~self.ignore).sum())
