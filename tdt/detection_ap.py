"""Detection average precision at an IoU threshold (numpy only), for student and tracker evaluation.

Matching, per image, greedy in descending score order: a detection takes the
highest-IoU not-yet-matched, non-ignored ground-truth box with IoU ≥ the
threshold (true positive); failing that, a detection overlapping an ignore box
with IoU ≥ the threshold is set aside (neither TP nor FP); otherwise it is a
false positive. AP is the area under the precision/recall curve with VOC
all-point interpolation (precision made monotone from the right), recall
relative to the non-ignored ground-truth boxes of all images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from tdt.boxes import box_iou

_TRUE_POSITIVE = 1
_FALSE_POSITIVE = 0
_IGNORED = -1


class ImageDetections(NamedTuple):
    tlbr: npt.ArrayLike  # (N, 4) x1, y1, x2, y2
    score: npt.ArrayLike  # (N,)


class ImageGroundTruth(NamedTuple):
    tlbr: npt.ArrayLike  # (M, 4)
    ignore: npt.ArrayLike | None = None  # (M,) bool; None = nothing ignored


def average_precision(
    detections: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]],
    ground_truth: Sequence[tuple[npt.ArrayLike, npt.ArrayLike | None]],
    iou_threshold: float = 0.5,
) -> float:
    """AP over a set of images; ``detections[i]`` and ``ground_truth[i]`` describe image ``i``.

    Each detection entry is ``(tlbr (N, 4), score (N,))`` (e.g. :class:`ImageDetections`),
    each ground-truth entry ``(tlbr (M, 4), ignore (M,) bool or None)``. Returns NaN when
    there is no non-ignored ground-truth box at all (recall undefined).
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} detection entries for {len(ground_truth)} ground-truth entries")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    all_scores: list[npt.NDArray[np.float64]] = []
    all_outcomes: list[npt.NDArray[np.int8]] = []
    num_positives = 0
    for image_index, (image_detections, image_ground_truth) in enumerate(
        zip(detections, ground_truth, strict=True)
    ):
        det_boxes, det_scores = _detections(image_detections, image_index)
        gt_boxes, gt_ignore = _ground_truth(image_ground_truth, image_index)
        num_positives += int(np.count_nonzero(~gt_ignore))
        order = np.argsort(-det_scores, kind="stable")
        all_scores.append(det_scores[order])
        all_outcomes.append(_match_image(det_boxes[order], gt_boxes, gt_ignore, iou_threshold))
    if num_positives == 0:
        return float("nan")
    scores = np.concatenate(all_scores) if all_scores else np.empty(0)
    outcomes = np.concatenate(all_outcomes) if all_outcomes else np.empty(0, dtype=np.int8)
    counted = outcomes != _IGNORED
    scores, outcomes = scores[counted], outcomes[counted]
    if len(scores) == 0:
        return 0.0
    ranking = np.argsort(-scores, kind="stable")
    is_true_positive = outcomes[ranking] == _TRUE_POSITIVE
    true_positives = np.cumsum(is_true_positive)
    false_positives = np.cumsum(~is_true_positive)
    recall = true_positives / num_positives
    precision = true_positives / (true_positives + false_positives)
    return _all_point_interpolated_area(recall, precision)


def _all_point_interpolated_area(
    recall: npt.NDArray[np.float64], precision: npt.NDArray[np.float64]
) -> float:
    recall_points = np.concatenate([[0.0], recall, [1.0]])
    precision_envelope = np.concatenate([[0.0], precision, [0.0]])
    precision_envelope = np.maximum.accumulate(precision_envelope[::-1])[::-1]
    steps = np.flatnonzero(recall_points[1:] != recall_points[:-1])
    return float(np.sum((recall_points[steps + 1] - recall_points[steps]) * precision_envelope[steps + 1]))


def _match_image(
    det_boxes: npt.NDArray[np.float64],
    gt_boxes: npt.NDArray[np.float64],
    gt_ignore: npt.NDArray[np.bool_],
    iou_threshold: float,
) -> npt.NDArray[np.int8]:
    """Outcome per detection (already sorted by descending score)."""
    outcomes = np.full(len(det_boxes), _FALSE_POSITIVE, dtype=np.int8)
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return outcomes
    iou = box_iou(det_boxes, gt_boxes)
    overlaps = iou >= iou_threshold
    available = ~gt_ignore
    overlaps_ignored = (overlaps & gt_ignore[None, :]).any(axis=1)
    for index in range(len(det_boxes)):
        candidates = overlaps[index] & available
        if candidates.any():
            best = int(np.argmax(np.where(candidates, iou[index], -1.0)))
            available[best] = False
            outcomes[index] = _TRUE_POSITIVE
        elif overlaps_ignored[index]:
            outcomes[index] = _IGNORED
    return outcomes


def _detections(
    entry: tuple[npt.ArrayLike, npt.ArrayLike], image_index: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    boxes_like, scores_like = entry
    boxes = _boxes(boxes_like, f"detections[{image_index}] tlbr")
    scores = np.asarray(scores_like, dtype=np.float64)
    if scores.size == 0:
        scores = np.empty(0)
    if scores.shape != (len(boxes),):
        raise ValueError(
            f"detections[{image_index}]: {len(boxes)} boxes but score has shape {np.shape(scores_like)}"
        )
    if not np.isfinite(scores).all():
        raise ValueError(f"detections[{image_index}] score has NaN or infinite values")
    return boxes, scores


def _ground_truth(
    entry: tuple[npt.ArrayLike, npt.ArrayLike | None], image_index: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    boxes_like, ignore_like = entry
    boxes = _boxes(boxes_like, f"ground_truth[{image_index}] tlbr")
    if ignore_like is None:
        return boxes, np.zeros(len(boxes), dtype=bool)
    ignore = np.asarray(ignore_like)
    if ignore.size == 0 and len(boxes) == 0:
        return boxes, np.zeros(0, dtype=bool)
    if ignore.shape != (len(boxes),) or ignore.dtype != np.bool_:
        raise ValueError(
            f"ground_truth[{image_index}] ignore must be a bool array of shape ({len(boxes)},), "
            f"got {ignore.dtype} {ignore.shape}"
        )
    return boxes, ignore


def _boxes(boxes_like: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    boxes = np.asarray(boxes_like, dtype=np.float64)
    if boxes.size == 0:
        return np.empty((0, 4))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return boxes
