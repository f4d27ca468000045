"""Anchor-to-box assignment: RetinaNet IoU matching plus ignore regions.

For each anchor the result is the index of its ground-truth box (a positive),
:data:`NEGATIVE` (background) or :data:`IGNORED` (left out of every loss).

- Only boxes that are not ``ignore`` and at least ``min_box_size`` pixels wide
  and high take part in matching; ignore boxes never become positives.
- IoU >= ``positive_iou``: positive; < ``negative_iou``: negative; between:
  ignored. With ``allow_low_quality_matches`` the anchors with a box's highest
  IoU also become positives (matched to their own best box, as torchvision's
  ``Matcher``), but only when that IoU is above zero: otherwise a box too small
  to touch any anchor would claim every anchor in the image.
- A non-positive anchor overlapping an ignore box by ``ignore_overlap_threshold``
  (IoU, or intersection over the anchor's area for ``ioa``, suited to crowd
  regions much larger than the anchors) is ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

from .config import LossConfig

NEGATIVE = -1
IGNORED = -2


def box_ioa(anchors: Tensor, regions: Tensor) -> Tensor:
    """(R, A) intersection area over the anchor's area."""
    top_left = torch.maximum(regions[:, None, :2], anchors[None, :, :2])
    bottom_right = torch.minimum(regions[:, None, 2:], anchors[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    anchor_area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    return intersection / anchor_area.clamp(min=1e-6)[None, :]


def _region_ioa(regions: Tensor, anchors: Tensor) -> Tensor:
    return box_ioa(anchors, regions)


def match_by_quality(
    quality: Tensor,
    positive_threshold: float,
    negative_threshold: float,
    allow_low_quality_matches: bool,
) -> Tensor:
    """(A,) matched row of ``quality`` (G, A) per anchor, or NEGATIVE / IGNORED."""
    num_anchors = quality.shape[1]
    if quality.shape[0] == 0:
        return torch.full((num_anchors,), NEGATIVE, dtype=torch.int64, device=quality.device)
    best_quality, best_box = quality.max(dim=0)
    matched = best_box.clone()
    matched[best_quality < positive_threshold] = IGNORED
    matched[best_quality < negative_threshold] = NEGATIVE
    if allow_low_quality_matches:
        highest_per_box = quality.max(dim=1, keepdim=True).values
        is_box_best = (quality == highest_per_box) & (highest_per_box > 0)
        low_quality = is_box_best.any(dim=0)
        matched[low_quality] = best_box[low_quality]
    return matched


def assign_anchors(anchors: Tensor, boxes: Tensor, ignore: Tensor, config: LossConfig) -> Tensor:
    """(A,) int64: index into ``boxes`` for positives, else NEGATIVE or IGNORED.

    ``anchors`` (A, 4) and ``boxes`` (N, 4) are x1, y1, x2, y2 in input pixels;
    ``ignore`` (N,) bool marks crowd / ignore regions.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got {tuple(boxes.shape)}")
    if ignore.shape != boxes.shape[:1]:
        raise ValueError(f"ignore must be ({boxes.shape[0]},), got {tuple(ignore.shape)}")
    ignore = ignore.to(device=boxes.device, dtype=torch.bool)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    matchable = ~ignore & (widths >= config.min_box_size) & (heights >= config.min_box_size)
    matchable_indices = torch.nonzero(matchable).flatten()

    anchors = anchors.to(boxes.dtype)
    quality = box_iou(boxes[matchable_indices], anchors)
    matched = match_by_quality(
        quality, config.positive_iou, config.negative_iou, config.allow_low_quality_matches
    )
    positive = matched >= 0
    matched[positive] = matchable_indices[matched[positive]]

    regions = boxes[ignore]
    if len(regions):
        measure = box_iou if config.ignore_overlap == "iou" else _region_ioa
        overlap = measure(regions, anchors)
        in_ignore_region = overlap.max(dim=0).values >= config.ignore_overlap_threshold
        matched[in_ignore_region & ~positive] = IGNORED
    return matched
