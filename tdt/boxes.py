"""Box conversions and pairwise IoU on plain numpy arrays.

Boxes are continuous pixel coordinates: ``tlbr`` = (x1, y1, x2, y2), ``tlwh`` =
(x, y, w, h), ``xyah`` = (centre x, centre y, w / h, h). IoU uses ``(x2 - x1)``
widths, not the legacy ``x2 - x1 + 1`` of cython_bbox.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def tlbr_to_xyah(tlbr: npt.ArrayLike) -> FloatArray:
    boxes = np.asarray(tlbr, dtype=np.float64)
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    return np.stack([boxes[..., 0] + width / 2, boxes[..., 1] + height / 2, width / height, height], axis=-1)


def xyah_to_tlbr(xyah: npt.ArrayLike) -> FloatArray:
    boxes = np.asarray(xyah, dtype=np.float64)
    height = boxes[..., 3]
    width = boxes[..., 2] * height
    x1 = boxes[..., 0] - width / 2
    y1 = boxes[..., 1] - height / 2
    return np.stack([x1, y1, x1 + width, y1 + height], axis=-1)


def tlbr_to_tlwh(tlbr: npt.ArrayLike) -> FloatArray:
    boxes = np.array(tlbr, dtype=np.float64)
    boxes[..., 2:] -= boxes[..., :2]
    return boxes


def tlwh_to_tlbr(tlwh: npt.ArrayLike) -> FloatArray:
    boxes = np.array(tlwh, dtype=np.float64)
    boxes[..., 2:] += boxes[..., :2]
    return boxes


def box_iou(boxes_a: npt.ArrayLike, boxes_b: npt.ArrayLike) -> FloatArray:
    """Pairwise IoU of ``(A, 4)`` and ``(B, 4)`` tlbr boxes, shape ``(A, B)``.

    A pair whose union is empty (two zero-area boxes) has IoU 0.
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    inter_w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    inter_h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    intersection = np.clip(inter_w, 0.0, None) * np.clip(inter_h, 0.0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - intersection
    iou = np.zeros_like(intersection)
    np.divide(intersection, union, out=iou, where=union > 0)
    return iou
