"""Cost matrices and assignment for track-detection association (pure functions)."""

from __future__ import annotations

import lap
import numpy as np
import numpy.typing as npt

from tdt.boxes import box_iou

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]


def iou_distance(tracks_tlbr: npt.ArrayLike, detections_tlbr: npt.ArrayLike) -> FloatArray:
    """1 − IoU, shape ``(tracks, detections)``."""
    return 1.0 - box_iou(tracks_tlbr, detections_tlbr)


def embedding_distance(
    track_features: npt.NDArray[np.floating], detection_features: npt.NDArray[np.floating]
) -> FloatArray:
    """Cosine distance of unit-norm features, clipped at 0 (as scipy's cdist + max(0, ·))."""
    if len(track_features) == 0 or len(detection_features) == 0:
        return np.zeros((len(track_features), len(detection_features)))
    similarity = (track_features @ detection_features.T).astype(np.float64)
    return np.maximum(0.0, 1.0 - similarity)


def fuse_motion(
    appearance_cost: FloatArray,
    gating_distance: FloatArray,
    *,
    appearance_weight: float,
    gating_threshold: float,
) -> FloatArray:
    """λ·appearance + (1 − λ)·squared Mahalanobis; pairs outside the gate become ``inf``."""
    fused = appearance_weight * appearance_cost + (1.0 - appearance_weight) * gating_distance
    fused[gating_distance > gating_threshold] = np.inf
    return fused


def linear_assignment(cost: FloatArray, threshold: float) -> tuple[IndexArray, IndexArray, IndexArray]:
    """Minimum-cost matching keeping only pairs with cost ≤ ``threshold``.

    Returns ``matches (K, 2)`` of (row, column), unmatched rows, unmatched columns,
    all ascending by row / column.
    """
    rows, columns = cost.shape
    if rows == 0 or columns == 0:
        return (
            np.empty((0, 2), dtype=np.int64),
            np.arange(rows, dtype=np.int64),
            np.arange(columns, dtype=np.int64),
        )
    _, row_to_column, column_to_row = lap.lapjv(
        np.ascontiguousarray(cost, dtype=np.float64), extend_cost=True, cost_limit=threshold
    )
    row_to_column = np.asarray(row_to_column, dtype=np.int64)
    column_to_row = np.asarray(column_to_row, dtype=np.int64)
    matched_rows = np.flatnonzero(row_to_column >= 0)
    matches = np.stack([matched_rows, row_to_column[matched_rows]], axis=1)
    return matches, np.flatnonzero(row_to_column < 0), np.flatnonzero(column_to_row < 0)


def split_by_score(
    scores: npt.NDArray[np.floating], high_threshold: float, low_threshold: float | None = None
) -> tuple[IndexArray, IndexArray]:
    """Indices of detections scoring ≥ ``high_threshold``, and of those in ``[low_threshold, high_threshold)``.

    Without ``low_threshold`` the second set is empty (FairMOT drops weak detections).
    """
    high = scores >= high_threshold
    if low_threshold is None:
        return np.flatnonzero(high), np.empty(0, dtype=np.int64)
    return np.flatnonzero(high), np.flatnonzero(~high & (scores >= low_threshold))


def plausible_person_boxes(
    tlbr: npt.ArrayLike, min_area: float, max_aspect_ratio: float
) -> npt.NDArray[np.bool_]:
    """FairMOT's output rule: area > ``min_area`` and width / height ≤ ``max_aspect_ratio``."""
    boxes = np.asarray(tlbr, dtype=np.float64).reshape(-1, 4)
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    return (width * height > min_area) & (width <= max_aspect_ratio * height)
