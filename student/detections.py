"""What every family's post-processing returns: one image's detections in network-input pixels."""

from __future__ import annotations

import dataclasses

from torch import Tensor


@dataclasses.dataclass(frozen=True)
class InputDetections:
    """Detections of one image in network-input pixels.

    ``anchor_indices`` says where each detection was read: the anchor (into
    ``StudentOutputs.anchors``) for RetinaNet, the flat heatmap cell
    (``row * width + column`` at the output stride) for CenterNet.
    """

    boxes: Tensor  # (N, 4) x1, y1, x2, y2
    scores: Tensor  # (N,)
    labels: Tensor  # (N,) int64, always 0 (person)
    anchor_indices: Tensor  # (N,) int64
    embeddings: Tensor | None  # (N, D), L2-normalised
