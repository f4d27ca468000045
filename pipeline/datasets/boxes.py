"""Turn annotation boxes into a clipped, validated ImageRecord (shared by every reader)."""

from __future__ import annotations

import math

import numpy as np

from pipeline.datasets.stats import StatsCollector
from pipeline.errors import AnnotationError
from pipeline.records import ImageRecord

MIN_BOX_SIDE_PX = 2.0
# Annotation numbers are parsed as float64, which holds every integer up to 2**53 exactly.
LARGEST_EXACT_INTEGER = 2.0**53


def annotation_numbers(fields: list[str], line: str, where: str, *, integer_pair: str) -> list[float]:
    """``fields`` of an annotation ``line`` as finite floats whose first two (``integer_pair``,
    e.g. "frame and id") are whole numbers below 2**53 in magnitude; anything else is an
    AnnotationError at ``where``."""
    try:
        values = [float(field) for field in fields]
    except ValueError as exc:
        raise AnnotationError(f"{where}: {exc} in {line.strip()!r}") from exc
    if not all(math.isfinite(value) for value in values):
        raise AnnotationError(f"{where}: non-finite value in {line.strip()!r}")
    if not (values[0].is_integer() and values[1].is_integer()):
        raise AnnotationError(f"{where}: {integer_pair} must be integers in {line.strip()!r}")
    if max(abs(values[0]), abs(values[1])) >= LARGEST_EXACT_INTEGER:
        raise AnnotationError(
            f"{where}: {integer_pair} must be below 2**53 in magnitude (a larger identity or frame "
            f"number cannot be stored exactly and would silently change) in {line.strip()!r}"
        )
    return values


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    xywh = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def build_record(
    stats: StatsCollector,
    *,
    image: str,
    width: int,
    height: int,
    xyxy: np.ndarray,
    identities: np.ndarray,
    ignore: np.ndarray,
    keep_identities: bool = True,
    sequence: str = "",
    frame: int = -1,
) -> ImageRecord:
    """Clip boxes to the image, mark boxes under MIN_BOX_SIDE_PX as ignore, count both.

    A box with negative width or height collapses to zero size and so becomes degenerate.
    """
    xyxy = np.array(xyxy, dtype=np.float64).reshape(-1, 4)
    xyxy[:, 2:] = np.maximum(xyxy[:, 2:], xyxy[:, :2])
    limits = np.array([width, height, width, height], dtype=np.float64)
    was_clipped = ((xyxy < 0) | (xyxy > limits)).any(axis=1)
    clipped = np.clip(xyxy, 0.0, limits)
    degenerate = (clipped[:, 2:] - clipped[:, :2] < MIN_BOX_SIDE_PX).any(axis=1)
    identities = np.asarray(identities, dtype=np.int64).reshape(-1)
    if not keep_identities:
        identities = np.full_like(identities, -1)
    record = ImageRecord(
        image=image,
        width=int(width),
        height=int(height),
        boxes=clipped.astype(np.float32),
        identities=identities,
        ignore=np.asarray(ignore, dtype=bool).reshape(-1) | degenerate,
        sequence=sequence,
        frame=frame,
    )
    stats.count_record(record, clipped=int(was_clipped.sum()), degenerate=int(degenerate.sum()))
    return record
