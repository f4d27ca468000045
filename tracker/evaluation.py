"""CLEAR-MOT / ID metrics of tracker output against MOTChallenge ground truth.

motmetrics 1.4.0 does the event bookkeeping and the metrics; the IoU distances,
the ground-truth filtering and the MOTChallenge preprocessing are ours, because
its ``iou_matrix`` (and so ``compare_to_groundtruth``, ``CLEAR_MOT_M`` and
``preprocessResult``) calls ``np.asfarray``, which numpy 2 removed.

Protocol (MOTChallenge / TrackEval):

- MOT16/17/20: ground-truth rows of class 1 (pedestrian) with mark 1 are the
  targets. Per frame, predictions are matched (Hungarian on IoU ≥ 0.5) against
  *all* ground-truth boxes of the frame; a prediction matched to a distractor
  (class 2 person on vehicle, 7 static person, 8 distractor, 12 reflection; for
  MOT20 also 6 non-mot vehicle) or to a mark-0 box is removed before scoring.
- MOT15: no class column; rows whose flag (column 7) is 0 are dropped from the
  ground truth, everything else is a target, no prediction is removed.
- Every frame that has ground-truth rows, predictions, or is listed in
  ``frames`` is scored, so a frame where the tracker output nothing counts
  its targets as misses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum

import motmetrics
import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from tdt.boxes import box_iou, tlwh_to_tlbr

FloatArray = npt.NDArray[np.float64]

PEDESTRIAN_CLASS = 1
DISTRACTOR_CLASSES = frozenset({2, 7, 8, 12})
NON_MOT_VEHICLE_CLASS = 6
OVERALL = "OVERALL"

# The distances fed to motmetrics are 1 − IoU; pairs below this IoU cannot match.
DEFAULT_IOU_THRESHOLD = 0.5


class MotBenchmark(StrEnum):
    MOT15 = "MOT15"
    MOT16 = "MOT16"
    MOT17 = "MOT17"
    MOT20 = "MOT20"

    @property
    def has_classes(self) -> bool:
        return self is not MotBenchmark.MOT15

    @property
    def distractor_classes(self) -> frozenset[int]:
        if self is MotBenchmark.MOT20:
            return DISTRACTOR_CLASSES | {NON_MOT_VEHICLE_CLASS}
        return DISTRACTOR_CLASSES

    @property
    def min_gt_columns(self) -> int:
        return 8 if self.has_classes else 7


@dataclass(frozen=True)
class MotMetrics:
    """One sequence's (or the overall) metrics, named as motmetrics computes them.

    ``motp`` is motmetrics' mean distance (1 − IoU) over matches; MOTChallenge
    prints ``motchallenge_motp`` = 1 − motp (as a percentage).
    """

    num_frames: int
    num_objects: int  # ground-truth identities ("GT")
    num_matches: int
    mota: float
    motp: float
    idf1: float
    idp: float
    idr: float
    precision: float
    recall: float
    id_switches: int
    false_positives: int
    false_negatives: int
    fragmentations: int
    mostly_tracked: int
    partially_tracked: int
    mostly_lost: int

    @property
    def motchallenge_motp(self) -> float:
        return 1.0 - self.motp


# motmetrics metric name for each MotMetrics field.
_MOTMETRICS_NAMES = {
    "num_frames": "num_frames",
    "num_objects": "num_unique_objects",
    "num_matches": "num_matches",
    "mota": "mota",
    "motp": "motp",
    "idf1": "idf1",
    "idp": "idp",
    "idr": "idr",
    "precision": "precision",
    "recall": "recall",
    "id_switches": "num_switches",
    "false_positives": "num_false_positives",
    "false_negatives": "num_misses",
    "fragmentations": "num_fragmentations",
    "mostly_tracked": "mostly_tracked",
    "partially_tracked": "partially_tracked",
    "mostly_lost": "mostly_lost",
}


def iou_distance_matrix(
    gt_tlwh: npt.ArrayLike, predicted_tlwh: npt.ArrayLike, iou_threshold: float = DEFAULT_IOU_THRESHOLD
) -> FloatArray:
    """motmetrics' distance: 1 − IoU, NaN where the IoU is below ``iou_threshold``."""
    distance = 1.0 - box_iou(tlwh_to_tlbr(gt_tlwh), tlwh_to_tlbr(predicted_tlwh))
    distance[distance > 1.0 - iou_threshold] = np.nan
    return distance


def accumulate_sequence(
    ground_truth: npt.ArrayLike,
    predictions: npt.ArrayLike,
    benchmark: MotBenchmark | str = MotBenchmark.MOT17,
    *,
    frames: Iterable[int] | None = None,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> motmetrics.MOTAccumulator:
    """Feed one sequence to a ``motmetrics.MOTAccumulator``.

    ``ground_truth``: MOT gt rows (frame, id, x, y, w, h, mark/flag, class, ...);
    ``predictions``: MOT result rows (frame, id, x, y, w, h, ...). ``frames``
    adds frames that must be scored even if neither file mentions them (e.g.
    1..seqLength).
    """
    benchmark = MotBenchmark(benchmark)
    gt = _validated_rows(ground_truth, "ground_truth", benchmark.min_gt_columns)
    predicted = _validated_rows(predictions, "predictions", 6)
    _reject_duplicate_ids(predicted, "predictions")
    gt_frames = _split_by_frame(gt)
    predicted_frames = _split_by_frame(predicted)
    all_frames = set(gt_frames) | set(predicted_frames)
    if frames is not None:
        all_frames |= {int(frame) for frame in frames}

    target_mask = _target_mask(gt, benchmark)
    _reject_duplicate_ids(gt[target_mask], "ground_truth targets")
    empty = np.empty((0, gt.shape[1]))
    accumulator = motmetrics.MOTAccumulator(auto_id=False)
    for frame in sorted(all_frames):
        frame_gt = gt_frames.get(frame, empty)
        frame_predicted = predicted_frames.get(frame, np.empty((0, predicted.shape[1])))
        frame_targets = frame_gt[_target_mask(frame_gt, benchmark)]
        if benchmark.has_classes and len(frame_predicted) and len(frame_gt):
            frame_predicted = frame_predicted[~_matched_to_ignored(frame_gt, frame_predicted, benchmark)]
        accumulator.update(
            frame_targets[:, 1].astype(np.int64),
            frame_predicted[:, 1].astype(np.int64),
            iou_distance_matrix(frame_targets[:, 2:6], frame_predicted[:, 2:6], iou_threshold),
            frameid=frame,
        )
    return accumulator


def summarize(accumulators: Mapping[str, motmetrics.MOTAccumulator]) -> dict[str, MotMetrics]:
    """Metrics per sequence plus ``OVERALL`` (all sequences' events pooled, as motmetrics does)."""
    if not accumulators:
        raise ValueError("summarize needs at least one sequence")
    if OVERALL in accumulators:
        raise ValueError(f"{OVERALL!r} is reserved for the combined row; rename that sequence")
    names = list(accumulators)
    host = motmetrics.metrics.create()
    table = host.compute_many(
        [accumulators[name] for name in names],
        metrics=list(_MOTMETRICS_NAMES.values()),
        names=names,
        generate_overall=True,
    )
    return {str(name): _row_to_metrics(table.loc[name]) for name in table.index}


def evaluate_sequences(
    sequences: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    benchmark: MotBenchmark | str = MotBenchmark.MOT17,
    *,
    frames: Mapping[str, Iterable[int]] | None = None,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> dict[str, MotMetrics]:
    """``{name: (ground_truth_rows, prediction_rows)}`` → metrics per sequence and ``OVERALL``."""
    frames = frames or {}
    if not isinstance(frames, Mapping):
        raise TypeError(f"frames must map sequence names to frame numbers, got {type(frames).__name__}")
    unknown = sorted(set(frames) - set(sequences))
    if unknown:
        raise ValueError(f"frames given for unknown sequence(s): {', '.join(unknown)}")
    accumulators = {
        name: accumulate_sequence(
            ground_truth,
            predictions,
            benchmark,
            frames=frames.get(name),
            iou_threshold=iou_threshold,
        )
        for name, (ground_truth, predictions) in sequences.items()
    }
    return summarize(accumulators)


def format_summary(results: Mapping[str, MotMetrics]) -> str:
    """A MOTChallenge-style text table (percentages; MOTP as 1 − distance)."""
    header = (
        f"{'':<16}{'MOTA':>7}{'IDF1':>7}{'MOTP':>7}{'IDs':>6}{'FP':>7}{'FN':>7}"
        f"{'Rcll':>7}{'Prcn':>7}{'GT':>5}{'MT':>5}{'PT':>5}{'ML':>5}{'FM':>6}"
    )
    lines = [header]
    for name, metrics in results.items():
        lines.append(
            f"{name[:15]:<16}{_percent(metrics.mota):>7}{_percent(metrics.idf1):>7}"
            f"{_percent(metrics.motchallenge_motp):>7}{metrics.id_switches:>6}"
            f"{metrics.false_positives:>7}{metrics.false_negatives:>7}"
            f"{_percent(metrics.recall):>7}{_percent(metrics.precision):>7}"
            f"{metrics.num_objects:>5}{metrics.mostly_tracked:>5}{metrics.partially_tracked:>5}"
            f"{metrics.mostly_lost:>5}{metrics.fragmentations:>6}"
        )
    return "\n".join(lines)


def _percent(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.1f}"


def _row_to_metrics(row: object) -> MotMetrics:
    values = {}
    for field in fields(MotMetrics):
        value = row[_MOTMETRICS_NAMES[field.name]]  # type: ignore[index]
        values[field.name] = int(value) if field.type in (int, "int") else float(value)
    return MotMetrics(**values)


def _target_mask(gt: FloatArray, benchmark: MotBenchmark) -> npt.NDArray[np.bool_]:
    considered = gt[:, 6] != 0
    if benchmark.has_classes:
        return considered & (gt[:, 7] == PEDESTRIAN_CLASS)
    return considered


def _matched_to_ignored(
    frame_gt: FloatArray, frame_predicted: FloatArray, benchmark: MotBenchmark
) -> npt.NDArray[np.bool_]:
    """Predictions whose Hungarian IoU match among all gt boxes is a distractor or mark-0 box."""
    iou = box_iou(tlwh_to_tlbr(frame_gt[:, 2:6]), tlwh_to_tlbr(frame_predicted[:, 2:6]))
    # TrackEval's matching: scores below 0.5 (less a float epsilon) cannot be matched.
    eps = np.finfo(np.float64).eps
    iou[iou < DEFAULT_IOU_THRESHOLD - eps] = 0.0
    gt_rows, predicted_cols = linear_sum_assignment(-iou)
    matched = iou[gt_rows, predicted_cols] > eps
    gt_rows, predicted_cols = gt_rows[matched], predicted_cols[matched]
    ignored_gt = np.isin(frame_gt[:, 7], list(benchmark.distractor_classes)) | (frame_gt[:, 6] == 0)
    removed = np.zeros(len(frame_predicted), dtype=bool)
    removed[predicted_cols[ignored_gt[gt_rows]]] = True
    return removed


def _validated_rows(rows: npt.ArrayLike, name: str, min_columns: int) -> FloatArray:
    table = np.asarray(rows, dtype=np.float64)
    if table.size == 0:
        return np.empty((0, min_columns))
    if table.ndim != 2 or table.shape[1] < min_columns:
        raise ValueError(
            f"{name} must be a 2-D array of MOT rows with >= {min_columns} columns, got shape {table.shape}"
        )
    if not np.isfinite(table[:, :6]).all():
        raise ValueError(f"{name} has NaN or infinite frame/id/box values")
    if (table[:, 4:6] < 0).any():
        raise ValueError(f"{name} has boxes with negative width or height")
    return table


def _split_by_frame(rows: FloatArray) -> dict[int, FloatArray]:
    if len(rows) == 0:
        return {}
    order = np.argsort(rows[:, 0], kind="stable")
    ordered = rows[order]
    frame_numbers, starts = np.unique(ordered[:, 0], return_index=True)
    return {
        int(frame): chunk for frame, chunk in zip(frame_numbers, np.split(ordered, starts[1:]), strict=True)
    }


def _reject_duplicate_ids(rows: FloatArray, name: str) -> None:
    pairs = rows[:, :2]
    unique = np.unique(pairs, axis=0)
    if len(unique) != len(pairs):
        raise ValueError(f"{name} has {len(pairs) - len(unique)} repeated (frame, id) pair(s)")
