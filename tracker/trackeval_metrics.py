"""TrackEval's own HOTA, CLEAR and Identity metric classes, fed with prepared frames.

:mod:`tracker.evaluation` applies the MOTChallenge protocol and hands each
sequence over as scored frames (target ids, prediction ids, their IoU). This
module relabels the ids as TrackEval's dataset classes do (0..n-1 per
sequence) and lets ``trackeval.metrics`` compute every number, so HOTA, DetA,
AssA, MOTA, IDF1, IDs, ... are exactly what TrackEval's run script prints for
the same files (its CLEAR matching differs from motmetrics': it carries a
track's match over from the previous frame only, motmetrics from its last
match at any time, so their ID switches and MOTA can differ).

TrackEval (PyPI ``trackeval`` 1.3.0) is installed with ``--no-deps``: its
metric classes need only numpy and scipy, while its declared requirements
include ``opencv-python`` (which would shadow this project's
``opencv-python-headless``), matplotlib and pycocotools, used only by its
plotting and other datasets' readers. ``make install`` does this.
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tracker.evaluation import ScoredFrame

TRACKEVAL_REQUIREMENT = "trackeval==1.3.0"
INSTALL_HINT = (
    f"the evaluation runs TrackEval's metric code: pip install --no-deps {TRACKEVAL_REQUIREMENT} "
    "(make install does this; --no-deps keeps its opencv-python requirement from shadowing "
    "opencv-python-headless)"
)
# Printed by ``import trackeval`` when pycocotools (needed only by its BURST dataset reader) is absent.
_EXPECTED_IMPORT_NOTICE = "Error importing BURST due to missing underlying dependency"

TrackEvalResult = dict[str, Any]


@dataclass(frozen=True)
class TrackEvalScores:
    """TrackEval's result dicts of one sequence (or of several, combined)."""

    hota: TrackEvalResult
    clear: TrackEvalResult
    identity: TrackEvalResult


def score_sequence(frames: Sequence[ScoredFrame], iou_threshold: float) -> TrackEvalScores:
    """HOTA, CLEAR and Identity of one prepared sequence; CLEAR / Identity match at IoU ≥ ``iou_threshold``."""
    data = trackeval_sequence_data(frames)
    hota, clear, identity = _metric_classes(iou_threshold)
    return TrackEvalScores(hota.eval_sequence(data), clear.eval_sequence(data), identity.eval_sequence(data))


def combine_sequences(scores: Iterable[TrackEvalScores], iou_threshold: float) -> TrackEvalScores:
    """Several sequences combined as TrackEval combines a benchmark's sequences (counts pooled)."""
    per_sequence = dict(enumerate(scores))
    hota, clear, identity = _metric_classes(iou_threshold)
    return TrackEvalScores(
        hota.combine_sequences({key: value.hota for key, value in per_sequence.items()}),
        clear.combine_sequences({key: value.clear for key, value in per_sequence.items()}),
        identity.combine_sequences({key: value.identity for key, value in per_sequence.items()}),
    )


def trackeval_sequence_data(frames: Sequence[ScoredFrame]) -> dict[str, Any]:
    """The data dict TrackEval's metrics read, with ids relabelled to 0..n-1 per sequence."""
    gt_ids = _contiguous_ids([frame.gt_ids for frame in frames])
    tracker_ids = _contiguous_ids([frame.predicted_ids for frame in frames])
    return {
        "num_timesteps": len(frames),
        "num_gt_ids": _count_ids(gt_ids),
        "num_tracker_ids": _count_ids(tracker_ids),
        "num_gt_dets": sum(len(ids) for ids in gt_ids),
        "num_tracker_dets": sum(len(ids) for ids in tracker_ids),
        "gt_ids": gt_ids,
        "tracker_ids": tracker_ids,
        "similarity_scores": [frame.iou for frame in frames],
    }


def _contiguous_ids(per_frame: list[np.ndarray]) -> list[np.ndarray]:
    if not per_frame:
        return []
    flat = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in per_frame])
    _, relabelled = np.unique(flat, return_inverse=True)
    splits = np.cumsum([len(ids) for ids in per_frame])[:-1]
    return [part.astype(np.int64) for part in np.split(relabelled.reshape(-1), splits)]


def _count_ids(per_frame: list[np.ndarray]) -> int:
    return int(max((int(ids.max()) + 1 for ids in per_frame if len(ids)), default=0))


@functools.cache
def _metric_classes(iou_threshold: float) -> tuple[Any, Any, Any]:
    metrics = _trackeval_metrics()
    config = {"THRESHOLD": float(iou_threshold), "PRINT_CONFIG": False}
    return metrics.HOTA(), metrics.CLEAR(dict(config)), metrics.Identity(dict(config))


@functools.cache
def _trackeval_metrics() -> Any:
    """``trackeval.metrics``, imported once.

    Importing the package prints a notice to stdout when pycocotools is absent;
    it is captured so that ``--json`` output stays parseable, and anything else
    it prints is passed on to stderr.
    """
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            import trackeval.metrics
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    for line in captured.getvalue().splitlines():
        if line.strip() and not line.startswith(_EXPECTED_IMPORT_NOTICE):
            print(line, file=sys.stderr)
    return trackeval.metrics
