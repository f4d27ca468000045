"""CLEAR-MOT, Identity and HOTA metrics of tracker output against MOTChallenge ground truth.

The MOTChallenge preprocessing below is ours (TrackEval's dataset classes only
read files in its folder layout) and yields, per frame, the target ids, the kept
prediction ids and their IoU (:class:`ScoredFrame`). TrackEval's ``HOTA``,
``CLEAR`` and ``Identity`` classes compute every metric from those frames
(:mod:`tracker.trackeval_metrics`); a test checks the whole chain against
TrackEval's own file-based pipeline.

Protocol (MOTChallenge, as TrackEval's ``MotChallenge2DBox`` applies it):

- MOT16/17/20: ground-truth rows of class 1 (pedestrian) with mark 1 are the
  targets. Per frame, predictions are matched (Hungarian on IoU ≥ 0.5) against
  *all* ground-truth boxes of the frame; only a prediction matched to a
  distractor (class 2 person on vehicle, 7 static person, 8 distractor, 12
  reflection; for MOT20 also 6 non-mot vehicle) is removed before scoring.
  A prediction on any other non-target box (a car, an occluder, a mark-0
  pedestrian) stays and is a false positive.
- MOT15: no class column; rows whose flag (column 7) is 0 are dropped from the
  ground truth, everything else is a target, no prediction is removed.
- Every frame that has ground-truth rows, predictions, or is listed in
  ``frames`` is scored, so a frame where the tracker output nothing counts
  its targets as misses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from tdt.boxes import box_iou, tlwh_to_tlbr
from tracker.trackeval_metrics import TrackEvalScores, combine_sequences, score_sequence

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

PEDESTRIAN_CLASS = 1
DISTRACTOR_CLASSES = frozenset({2, 7, 8, 12})
NON_MOT_VEHICLE_CLASS = 6
OVERALL = "OVERALL"

# CLEAR and Identity match a target and a prediction only at IoU >= this (and the
# protocol's distractor matching always uses 0.5).
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

    @classmethod
    def from_protocol(cls, name: str) -> MotBenchmark:
        """``mot15``, ``MOT17``, ... (any case) as a benchmark; a clear error otherwise."""
        try:
            return cls(name.upper())
        except ValueError:
            known = ", ".join(member.value.lower() for member in cls)
            raise ValueError(f"unknown MOT protocol {name!r}; known: {known}") from None


@dataclass(frozen=True)
class ScoredFrame:
    """One frame after the protocol's preprocessing: what the metrics score.

    ``gt_ids`` are the frame's targets, ``predicted_ids`` the predictions left
    after distractor removal, ``iou`` their pairwise IoU ``(targets, predictions)``.
    """

    number: int
    gt_ids: IntArray
    predicted_ids: IntArray
    iou: FloatArray


@dataclass(frozen=True)
class MotMetrics:
    """One sequence's (or the overall) metrics, all computed by TrackEval's metric classes.

    ``motp`` is the mean distance (1 − IoU) over matches, as motmetrics reports
    it; MOTChallenge and TrackEval print ``motchallenge_motp`` = 1 − motp (as a
    percentage). ``num_matches`` counts matches that are not ID switches (TP =
    num_matches + id_switches). The HOTA fields are each the mean over TrackEval's
    19 localisation thresholds α = 0.05, 0.10, ..., 0.95.
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
    hota: float
    deta: float
    assa: float
    loca: float
    det_re: float
    det_pr: float
    ass_re: float
    ass_pr: float

    @property
    def motchallenge_motp(self) -> float:
        return 1.0 - self.motp

    @classmethod
    def from_trackeval(cls, scores: TrackEvalScores, num_frames: int) -> MotMetrics:
        clear, identity = scores.clear, scores.identity
        hota = {name: float(np.mean(scores.hota[key])) for name, key in _HOTA_FIELDS.items()}
        return cls(
            num_frames=num_frames,
            num_objects=int(clear["MT"] + clear["PT"] + clear["ML"]),
            num_matches=int(clear["CLR_TP"] - clear["IDSW"]),
            mota=float(clear["MOTA"]),
            motp=1.0 - float(clear["MOTP"]),
            idf1=float(identity["IDF1"]),
            idp=float(identity["IDP"]),
            idr=float(identity["IDR"]),
            precision=float(clear["CLR_Pr"]),
            recall=float(clear["CLR_Re"]),
            id_switches=int(clear["IDSW"]),
            false_positives=int(clear["CLR_FP"]),
            false_negatives=int(clear["CLR_FN"]),
            fragmentations=int(clear["Frag"]),
            mostly_tracked=int(clear["MT"]),
            partially_tracked=int(clear["PT"]),
            mostly_lost=int(clear["ML"]),
            **hota,
        )


# TrackEval's HOTA field for each MotMetrics field.
_HOTA_FIELDS = {
    "hota": "HOTA",
    "deta": "DetA",
    "assa": "AssA",
    "loca": "LocA",
    "det_re": "DetRe",
    "det_pr": "DetPr",
    "ass_re": "AssRe",
    "ass_pr": "AssPr",
}


def prepare_sequence(
    ground_truth: npt.ArrayLike,
    predictions: npt.ArrayLike,
    benchmark: MotBenchmark | str = MotBenchmark.MOT17,
    *,
    frames: Iterable[int] | None = None,
) -> tuple[ScoredFrame, ...]:
    """Apply the benchmark's protocol to one sequence: its scored frames, in frame order.

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

    _reject_duplicate_ids(gt[_target_mask(gt, benchmark)], "ground_truth targets")
    empty_gt = np.empty((0, gt.shape[1]))
    empty_predicted = np.empty((0, predicted.shape[1]))
    scored = []
    for frame in sorted(all_frames):
        frame_gt = gt_frames.get(frame, empty_gt)
        frame_predicted = predicted_frames.get(frame, empty_predicted)
        if benchmark.has_classes and len(frame_predicted) and len(frame_gt):
            frame_predicted = frame_predicted[~_matched_to_distractor(frame_gt, frame_predicted, benchmark)]
        frame_targets = frame_gt[_target_mask(frame_gt, benchmark)]
        scored.append(
            ScoredFrame(
                number=frame,
                gt_ids=frame_targets[:, 1].astype(np.int64),
                predicted_ids=frame_predicted[:, 1].astype(np.int64),
                iou=box_iou(tlwh_to_tlbr(frame_targets[:, 2:6]), tlwh_to_tlbr(frame_predicted[:, 2:6])),
            )
        )
    return tuple(scored)


def summarize(
    sequences: Mapping[str, Sequence[ScoredFrame]], iou_threshold: float = DEFAULT_IOU_THRESHOLD
) -> dict[str, MotMetrics]:
    """Metrics per prepared sequence plus ``OVERALL`` (all sequences' counts pooled, as TrackEval does).

    CLEAR and Identity match pairs with IoU ≥ ``iou_threshold``; HOTA sweeps its own thresholds.
    """
    if not sequences:
        raise ValueError("summarize needs at least one sequence")
    if OVERALL in sequences:
        raise ValueError(f"{OVERALL!r} is reserved for the combined row; rename that sequence")
    scores = {name: score_sequence(frames, iou_threshold) for name, frames in sequences.items()}
    results = {name: MotMetrics.from_trackeval(scores[name], len(sequences[name])) for name in sequences}
    total_frames = sum(len(frames) for frames in sequences.values())
    combined = combine_sequences(scores.values(), iou_threshold)
    results[OVERALL] = MotMetrics.from_trackeval(combined, total_frames)
    return results


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
    prepared = {
        name: prepare_sequence(ground_truth, predictions, benchmark, frames=frames.get(name))
        for name, (ground_truth, predictions) in sequences.items()
    }
    return summarize(prepared, iou_threshold)


def format_summary(results: Mapping[str, MotMetrics]) -> str:
    """A MOTChallenge-style text table (percentages; MOTP as 1 − distance)."""
    header = (
        f"{'':<16}{'HOTA':>7}{'DetA':>7}{'AssA':>7}{'MOTA':>7}{'IDF1':>7}{'MOTP':>7}{'IDs':>6}{'FP':>7}"
        f"{'FN':>7}{'Rcll':>7}{'Prcn':>7}{'GT':>5}{'MT':>5}{'PT':>5}{'ML':>5}{'FM':>6}"
    )
    lines = [header]
    for name, metrics in results.items():
        lines.append(
            f"{name[:15]:<16}{_percent(metrics.hota):>7}{_percent(metrics.deta):>7}"
            f"{_percent(metrics.assa):>7}{_percent(metrics.mota):>7}{_percent(metrics.idf1):>7}"
            f"{_percent(metrics.motchallenge_motp):>7}{metrics.id_switches:>6}"
            f"{metrics.false_positives:>7}{metrics.false_negatives:>7}"
            f"{_percent(metrics.recall):>7}{_percent(metrics.precision):>7}"
            f"{metrics.num_objects:>5}{metrics.mostly_tracked:>5}{metrics.partially_tracked:>5}"
            f"{metrics.mostly_lost:>5}{metrics.fragmentations:>6}"
        )
    return "\n".join(lines)


def _percent(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.1f}"


def _target_mask(gt: FloatArray, benchmark: MotBenchmark) -> npt.NDArray[np.bool_]:
    considered = gt[:, 6] != 0
    if benchmark.has_classes:
        return considered & (gt[:, 7] == PEDESTRIAN_CLASS)
    return considered


def _matched_to_distractor(
    frame_gt: FloatArray, frame_predicted: FloatArray, benchmark: MotBenchmark
) -> npt.NDArray[np.bool_]:
    """Predictions whose Hungarian IoU match among all gt boxes is of a distractor class."""
    iou = box_iou(tlwh_to_tlbr(frame_gt[:, 2:6]), tlwh_to_tlbr(frame_predicted[:, 2:6]))
    # TrackEval's matching: scores below 0.5 (less a float epsilon) cannot be matched.
    eps = np.finfo(np.float64).eps
    iou[iou < DEFAULT_IOU_THRESHOLD - eps] = 0.0
    gt_rows, predicted_cols = linear_sum_assignment(-iou)
    matched = iou[gt_rows, predicted_cols] > eps
    gt_rows, predicted_cols = gt_rows[matched], predicted_cols[matched]
    distractor = np.isin(frame_gt[gt_rows, 7], list(benchmark.distractor_classes))
    removed = np.zeros(len(frame_predicted), dtype=bool)
    removed[predicted_cols[distractor]] = True
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
