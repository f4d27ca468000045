"""Score tracking runs against ground truth: CLEAR-MOT / ID metrics, AP@0.5 and timing.

MOT metrics pool every sequence's events for ``OVERALL`` (motmetrics). AP@0.5 is computed on
each frame's detections before association (every detection the source scored) against the
ground-truth targets, non-target people (MOT15 flag 0; MOT17 mark 0 or distractor class)
ignored; ``OVERALL`` ranks the detections of all sequences together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tdt.detection_ap import ImageDetections, ImageGroundTruth, average_precision
from tracker.evaluation import OVERALL, MotMetrics, prepare_sequence, summarize
from tracker.run import TrackingRun
from tracker.sequence import GroundTruth
from tracker.timing import TimingSummary


@dataclass(frozen=True)
class Scores:
    """Metrics, AP@0.5 and timing of one tracker on one sequence (or OVERALL)."""

    metrics: MotMetrics
    ap50: float
    timing: TimingSummary
    dropped_detections: int

    def to_dict(self) -> dict[str, Any]:
        """Every value by name: the MotMetrics fields, ``ap50``, the timing columns, drops."""
        values: dict[str, Any] = dataclasses.asdict(self.metrics)
        values["ap50"] = self.ap50
        values.update(self.timing.to_dict())
        values["dropped_detections"] = self.dropped_detections
        return values


@dataclass(frozen=True)
class TrackerResult:
    """One tracker (a row of the comparison) scored on every sequence."""

    key: str
    label: str
    description: str
    per_sequence: dict[str, Scores]  # sequence name -> scores, plus OVERALL

    @property
    def overall(self) -> Scores:
        return self.per_sequence[OVERALL]


@dataclass(frozen=True)
class _DetectionsAndTruth:
    """AP input of one run: per frame, the scored detections and the ground-truth boxes."""

    detections: list[ImageDetections]
    ground_truth: list[ImageGroundTruth]


def score_runs(
    runs: Mapping[str, TrackingRun], ground_truths: Mapping[str, GroundTruth]
) -> dict[str, Scores]:
    """Per-sequence and OVERALL scores of one tracker's runs (``ground_truths`` by sequence name)."""
    missing = sorted(set(runs) - set(ground_truths))
    if missing:
        raise ValueError(f"no ground truth for run(s) of {', '.join(missing)}")
    prepared = {}
    ap_inputs: dict[str, _DetectionsAndTruth] = {}
    for name, run in runs.items():
        truth = ground_truths[name]
        evaluated_rows = truth.rows[np.isin(truth.rows[:, 0], run.frame_numbers)]
        prepared[name] = prepare_sequence(
            evaluated_rows, run.mot_rows, truth.benchmark, frames=run.frame_numbers
        )
        ap_inputs[name] = _ap_inputs(run, truth)
    metrics = summarize(prepared)
    scores = {
        name: Scores(
            metrics[name],
            average_precision(ap_inputs[name].detections, ap_inputs[name].ground_truth),
            run.timing,
            run.dropped_detections,
        )
        for name, run in runs.items()
    }
    scores[OVERALL] = Scores(
        metrics[OVERALL],
        average_precision(
            [entry for inputs in ap_inputs.values() for entry in inputs.detections],
            [entry for inputs in ap_inputs.values() for entry in inputs.ground_truth],
        ),
        TimingSummary.combine(score.timing for score in scores.values()),
        sum(score.dropped_detections for score in scores.values()),
    )
    return scores


def _ap_inputs(run: TrackingRun, ground_truth: GroundTruth) -> _DetectionsAndTruth:
    detections = [ImageDetections(frame.tlbr, frame.score) for frame in run.scored_detections]
    truths = []
    for number in run.frame_numbers:
        tlbr, _, ignore = ground_truth.frame_boxes(number)
        truths.append(ImageGroundTruth(tlbr, ignore))
    return _DetectionsAndTruth(detections, truths)
