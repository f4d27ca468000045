"""Compare trackers on MOTChallenge sequences: one-stage vs two-stage vs CE (TDT Table 1).

    python -m tracker.compare --sequences ../shared/data/PETS09-S2L1-half1 \\
        --one-stage runs/l2/last.pt --two-stage runs/det/last.pt --ce runs/ce/last.pt \\
        --teacher osnet_x0_25 --teacher-weights osnet_x0_25_msmt17.pth --oracle --out out/compare

Every tracker runs the same association (``tracker.Tracker``) with the same
TrackerConfig (``--tracker-config``) on the same frames; only the source of
detections and embeddings differs:

- ``one-stage``: the student checkpoint (``--one-stage``), detections and embeddings in one pass;
- ``ce``: a one-stage student trained with identity cross-entropy (``--ce``);
- ``two-stage``: a detection-only checkpoint (``--two-stage``) + the teacher on each detected crop;
- ``oracle`` / ``oracle-iou`` (``--oracle``): ground-truth boxes (optionally jittered and
  thinned) with teacher embeddings / with none: the association alone;
- ``public`` (``--public``): the sequences' ``det/det.txt`` + the teacher.

Outputs in ``--out``: ``results.md`` (the table: HOTA, MOTA, IDF1, DetA, AssA, IDs,
FP, FN, AP@0.5, FPS and ms per stage; per-sequence tables), ``results.csv`` (one row per tracker
and sequence, plus OVERALL), ``results.json`` (everything, with the settings),
``results.png`` (chart, drawn with cv2) and ``<tracker>/<sequence>.txt`` (MOT results).

Evaluation (:mod:`tracker.evaluation`): MOT15 protocol for 10-column ground truth
(e.g. PETS09), MOT17 for 9-column (MOT20 by name); every metric by TrackEval's
HOTA / CLEAR / Identity classes; OVERALL pools all sequences.
AP@0.5 is computed on each frame's detections before association (every
detection the source scored) against the ground-truth targets, non-target
people (MOT15 flag 0; MOT17 distractor classes and mark-0 pedestrians) ignored. FPS counts the
model, teacher and association stages, not image decoding; each run's first
frame is not timed (warm-up).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tracker.association import Tracker
from tracker.config import TrackerConfig
from tracker.evaluation import OVERALL, MotMetrics, prepare_sequence, summarize
from tracker.metrics import average_precision
from tracker.mot_format import write_mot_results
from tracker.sequence import FrameRange, GroundTruth, InputSequence, SequenceError, open_sequence
from tracker.sources import (
    DetectionStage,
    DetectorLike,
    OneStageDetection,
    OracleDetection,
    OraclePerturbation,
    PublicDetection,
    SourceError,
    TeacherLike,
    TwoStageDetection,
    add_detections_per_image_option,
    add_teacher_options,
    load_detector,
    source_frames,
    teacher_from_args,
)
from tracker.timing import STAGES, TimingSummary, limit_numpy_blas_threads
from tracker.track import (
    EXIT_USAGE,
    USER_ERRORS,
    HelpFormatter,
    TrackingRun,
    add_frame_range_option,
    add_threads_option,
    apply_threads_option,
    frame_range_from_args,
    load_tracker_config,
    one_line,
    progress,
    track_frames,
)

StageFactory = Callable[[InputSequence, GroundTruth], DetectionStage]


@dataclass(frozen=True)
class TrackerEntry:
    """One row of the comparison: a name and how to build its detection stage for a sequence."""

    key: str  # file-safe: one-stage, ce, two-stage, oracle, oracle-iou, public
    label: str
    make_stage: StageFactory


@dataclass(frozen=True)
class ComparisonSequence:
    sequence: InputSequence
    ground_truth: GroundTruth  # restricted to the frame range


@dataclass(frozen=True)
class Scores:
    """Metrics, AP@0.5 and timing of one tracker on one sequence (or OVERALL)."""

    metrics: MotMetrics
    ap50: float
    timing: TimingSummary
    dropped_detections: int

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = dataclasses.asdict(self.metrics)
        values["ap50"] = self.ap50
        values.update(self.timing.to_dict())
        values["dropped_detections"] = self.dropped_detections
        return values


@dataclass(frozen=True)
class TrackerResult:
    key: str
    label: str
    description: str
    per_sequence: dict[str, Scores]  # sequence name -> scores, plus OVERALL

    @property
    def overall(self) -> Scores:
        return self.per_sequence[OVERALL]


# ---- running ------------------------------------------------------------------------------------


def run_tracker(
    entry: TrackerEntry,
    sequences: Sequence[ComparisonSequence],
    tracker_config: TrackerConfig,
    frame_range: FrameRange | None,
    results_dir: Path,
    show_progress: bool,
) -> TrackerResult:
    runs: dict[str, TrackingRun] = {}
    descriptions: list[str] = []
    (results_dir / entry.key).mkdir(parents=True, exist_ok=True)
    for item in sequences:
        sequence = item.sequence
        stage = entry.make_stage(sequence, item.ground_truth)
        if stage.description not in descriptions:
            descriptions.append(stage.description)
        numbers = sequence.frame_numbers(frame_range)
        frames = progress(
            source_frames(sequence, stage, frame_range),
            None if numbers is None else len(numbers),
            f"{entry.key} {sequence.name}",
            enabled=show_progress,
        )
        tracking = track_frames(
            sequence.name, frames, Tracker(tracker_config, frame_rate=sequence.frame_rate)
        )
        write_mot_results(results_dir / entry.key / f"{sequence.name}.txt", tracking.mot_rows)
        print(f"{entry.label} on {sequence.name}: {tracking.timing.describe()}", file=sys.stderr)
        runs[sequence.name] = tracking
    return TrackerResult(entry.key, entry.label, "; ".join(descriptions), score_runs(runs, sequences))


def score_runs(runs: dict[str, TrackingRun], sequences: Sequence[ComparisonSequence]) -> dict[str, Scores]:
    """Per-sequence and OVERALL scores of one tracker's runs."""
    prepared = {}
    ap_inputs: dict[str, tuple[list[Any], list[Any]]] = {}
    for item in sequences:
        name = item.sequence.name
        tracking = runs[name]
        ground_truth = item.ground_truth
        evaluated_rows = ground_truth.rows[np.isin(ground_truth.rows[:, 0], tracking.frame_numbers)]
        prepared[name] = prepare_sequence(
            evaluated_rows, tracking.mot_rows, ground_truth.benchmark, frames=tracking.frame_numbers
        )
        detections = [(d.tlbr, d.score) for d in tracking.scored_detections]
        truths = []
        for number in tracking.frame_numbers:
            tlbr, _, ignore = ground_truth.frame_boxes(number)
            truths.append((tlbr, ignore))
        ap_inputs[name] = (detections, truths)
    metrics = summarize(prepared)
    scores = {
        name: Scores(
            metrics[name],
            average_precision(*ap_inputs[name]),
            runs[name].timing,
            runs[name].dropped_detections,
        )
        for name in runs
    }
    all_detections = [entry for detections, _ in ap_inputs.values() for entry in detections]
    all_truths = [entry for _, truths in ap_inputs.values() for entry in truths]
    scores[OVERALL] = Scores(
        metrics[OVERALL],
        average_precision(all_detections, all_truths),
        TimingSummary.combine(score.timing for score in scores.values()),
        sum(score.dropped_detections for score in scores.values()),
    )
    return scores


# ---- reports ------------------------------------------------------------------------------------

TABLE_COLUMNS = (
    "Tracker",
    "HOTA",
    "MOTA",
    "IDF1",
    "DetA",
    "AssA",
    "IDs",
    "FP",
    "FN",
    "AP@0.5",
    "FPS",
    "model ms",
    "teacher ms",
    "assoc. ms",
    "decode ms",
)


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def _number(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _table_row(label: str, scores: Scores) -> list[str]:
    metrics, timing = scores.metrics, scores.timing
    return [
        label,
        _percent(metrics.hota),
        _percent(metrics.mota),
        _percent(metrics.idf1),
        _percent(metrics.deta),
        _percent(metrics.assa),
        str(metrics.id_switches),
        str(metrics.false_positives),
        str(metrics.false_negatives),
        _percent(scores.ap50),
        _number(timing.fps, 2),
        _number(timing.mean_ms("model")),
        _number(timing.mean_ms("teacher")),
        _number(timing.mean_ms("association"), 2),
        _number(timing.mean_ms("decode")),
    ]


def _markdown_table(rows: list[list[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(TABLE_COLUMNS) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown_report(results: Sequence[TrackerResult], settings: dict[str, Any]) -> str:
    sequence_names = [name for name in results[0].per_sequence if name != OVERALL]
    lines = [
        "# Tracker comparison",
        "",
        f"Sequences: {', '.join(sequence_names)}; frames: {settings['frames_description']}.",
        "HOTA, MOTA, IDF1, DetA, AssA and AP@0.5 in %; FPS counts model + teacher + association (ms per frame), "
        "not image decoding; the first frame of each run is not timed.",
        "",
        "## All sequences",
        "",
        *_markdown_table([_table_row(result.label, result.overall) for result in results]),
    ]
    if len(sequence_names) > 1:
        for name in sequence_names:
            lines += ["", f"## {name}", ""]
            lines += _markdown_table(
                [_table_row(result.label, result.per_sequence[name]) for result in results]
            )
    lines += ["", "## Trackers", ""]
    for result in results:
        dropped = result.overall.dropped_detections
        extra = f" ({dropped} detections without a usable crop/embedding skipped)" if dropped else ""
        lines.append(f"- **{result.label}** (`{result.key}`): {result.description}{extra}")
    lines += [
        "",
        "## Settings",
        "",
        f"- protocol: {settings['benchmarks']}",
        f"- tracker config: `{json.dumps(settings['tracker_config'])}`",
    ]
    for note in settings["notes"]:
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"


CSV_METRICS = (
    "hota",
    "deta",
    "assa",
    "loca",
    "det_re",
    "det_pr",
    "ass_re",
    "ass_pr",
    "mota",
    "idf1",
    "id_switches",
    "false_positives",
    "false_negatives",
    "precision",
    "recall",
)


def write_csv(path: Path, results: Sequence[TrackerResult]) -> None:
    timing_columns = ["fps", *(f"{stage}_ms" for stage in STAGES), "frames"]
    header = [
        "tracker",
        "label",
        "sequence",
        *CSV_METRICS,
        "mostly_tracked",
        "mostly_lost",
        "ap50",
        *timing_columns,
    ]
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        for result in results:
            for sequence_name, scores in result.per_sequence.items():
                values = scores.to_dict()
                writer.writerow(
                    [result.key, result.label, sequence_name, *(values[name] for name in header[3:])]
                )


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def write_json(path: Path, results: Sequence[TrackerResult], settings: dict[str, Any]) -> None:
    payload = {
        "settings": settings,
        "trackers": [
            {
                "key": result.key,
                "label": result.label,
                "description": result.description,
                "results": {name: scores.to_dict() for name, scores in result.per_sequence.items()},
            }
            for result in results
        ],
    }
    path.write_text(json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n")


# ---- chart (cv2: matplotlib is not a dependency) -------------------------------------------------

_CHART_SIZE = (1200, 560)  # width, height
_METRIC_COLOURS = {  # BGR
    "HOTA": (189, 103, 148),
    "MOTA": (180, 119, 31),
    "IDF1": (14, 127, 255),
    "AP@0.5": (44, 160, 44),
}
_FPS_COLOUR = (40, 39, 214)
_INK = (30, 30, 30)
_GRID = (215, 215, 215)


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.45, colour=_INK) -> None:
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _centred_text(canvas: np.ndarray, text: str, centre_x: int, y: int, scale: float = 0.45) -> None:
    (width, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    _text(canvas, text, (centre_x - width // 2, y), scale)


def draw_chart(results: Sequence[TrackerResult]) -> np.ndarray:
    """Left: HOTA, MOTA, IDF1, AP@0.5 (%) per tracker; right: FPS per tracker on a log scale."""
    width, height = _CHART_SIZE
    canvas = np.full((height, width, 3), 255, np.uint8)
    top, bottom = 60, height - 70
    _draw_accuracy_panel(canvas, results, left=60, right=width // 2 - 20, top=top, bottom=bottom)
    _draw_fps_panel(canvas, results, left=width // 2 + 130, right=width - 40, top=top, bottom=bottom)
    return canvas


def _draw_accuracy_panel(
    canvas: np.ndarray, results: Sequence[TrackerResult], *, left: int, right: int, top: int, bottom: int
) -> None:
    _text(canvas, "accuracy (%), all sequences", (left, top - 30), 0.6)
    for tick in range(0, 101, 20):
        y = bottom - round((bottom - top) * tick / 100)
        cv2.line(canvas, (left, y), (right, y), _GRID, 1)
        _text(canvas, str(tick), (left - 35, y + 5))
    group_width = (right - left) / max(len(results), 1)
    bar_width = max(int(group_width / (len(_METRIC_COLOURS) + 1)), 2)
    for index, result in enumerate(results):
        overall = result.overall
        values = {
            "HOTA": overall.metrics.hota,
            "MOTA": overall.metrics.mota,
            "IDF1": overall.metrics.idf1,
            "AP@0.5": overall.ap50,
        }
        group_left = left + round(index * group_width + bar_width / 2)
        for slot, (name, colour) in enumerate(_METRIC_COLOURS.items()):
            value = values[name]
            x = group_left + slot * bar_width
            shown = 0.0 if math.isnan(value) else min(max(value, 0.0), 1.0)
            y = bottom - round((bottom - top) * shown)
            cv2.rectangle(canvas, (x, y), (x + bar_width - 3, bottom), colour, cv2.FILLED)
            _centred_text(canvas, _percent(value), x + bar_width // 2, y - 5, 0.35)
        _centred_text(canvas, result.key, round(left + (index + 0.5) * group_width), bottom + 20)
    for slot, (name, colour) in enumerate(_METRIC_COLOURS.items()):
        x = left + slot * 110
        cv2.rectangle(canvas, (x, bottom + 35), (x + 14, bottom + 49), colour, cv2.FILLED)
        _text(canvas, name, (x + 20, bottom + 48))


def _draw_fps_panel(
    canvas: np.ndarray, results: Sequence[TrackerResult], *, left: int, right: int, top: int, bottom: int
) -> None:
    _text(canvas, "frames per second (log scale), all sequences", (left - 110, top - 30), 0.6)
    rates = [result.overall.timing.fps for result in results]
    finite = [rate for rate in rates if math.isfinite(rate) and rate > 0]
    low = math.floor(math.log10(min(finite))) if finite else -1
    high = max(math.ceil(math.log10(max(finite))), low + 1) if finite else 1
    row_height = (bottom - top) / max(len(results), 1)
    for exponent in range(low, high + 1):
        x = left + round((right - left) * (exponent - low) / (high - low))
        cv2.line(canvas, (x, top), (x, bottom), _GRID, 1)
        _centred_text(canvas, f"{10.0**exponent:g}", x, bottom + 20)
    for index, (result, rate) in enumerate(zip(results, rates, strict=True)):
        y = top + round(index * row_height + row_height * 0.2)
        bar_height = max(round(row_height * 0.6), 2)
        (label_width, _), _ = cv2.getTextSize(result.key, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        _text(canvas, result.key, (left - 8 - label_width, y + bar_height // 2 + 5))
        if not (math.isfinite(rate) and rate > 0):
            _text(canvas, "n/a", (left + 5, y + bar_height // 2 + 5))
            continue
        fraction = (math.log10(rate) - low) / (high - low)
        x = left + max(round((right - left) * fraction), 2)
        cv2.rectangle(canvas, (left, y), (x, y + bar_height), _FPS_COLOUR, cv2.FILLED)
        _text(canvas, f"{rate:.2f}", (min(x + 5, right - 50), y + bar_height // 2 + 5))


# ---- command line -------------------------------------------------------------------------------


COMPARE_DESCRIPTION = """\
Compare trackers on MOTChallenge sequences with ground truth (TDT Table 1).

Rows: one-stage student (--one-stage), CE-trained student (--ce), two-stage
detector + re-ID teacher on each crop (--two-stage), ground-truth oracle with
and without teacher embeddings (--oracle), public detections + teacher
(--public). All run the same association with the same TrackerConfig on the
same frames. Evaluation: MOT15 protocol for 10-column gt (PETS09), MOT17 for
9-column gt (every metric by TrackEval's metric classes); AP@0.5
on the detections before association. FPS counts model + teacher +
association, not image decoding.

Writes results.md (table: HOTA, MOTA, IDF1, DetA, AssA, IDs, FP, FN, AP@0.5,
FPS, ms per stage),
results.csv, results.json, results.png and <tracker>/<sequence>.txt to --out.
Bad input (missing checkpoint or teacher weights, a sequence without
gt/gt.txt): a one-line error and exit status 2.

example:
  python -m tracker.compare --sequences ../shared/data/PETS09-S2L1-half1 \\
      --one-stage runs/l2/last.pt --two-stage runs/det/last.pt --ce runs/ce/last.pt \\
      --teacher osnet_x0_25 --teacher-weights osnet_x0_25_msmt17.pth --oracle \\
      --frames 301 397 --out out/compare
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tracker.compare", description=COMPARE_DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--sequences",
        type=Path,
        nargs="+",
        required=True,
        help="MOTChallenge sequence folders (seqinfo.ini, img1/, gt/gt.txt)",
    )
    parser.add_argument(
        "--one-stage", type=Path, help="student checkpoint with an embedding head (L2 to teacher)"
    )
    parser.add_argument(
        "--two-stage", type=Path, help="detection-only checkpoint; the teacher embeds its crops"
    )
    parser.add_argument("--ce", type=Path, help="student checkpoint trained with identity cross-entropy")
    parser.add_argument(
        "--oracle",
        action="store_true",
        help="add ground-truth boxes + teacher embeddings (oracle) and ground-truth boxes alone (oracle-iou)",
    )
    parser.add_argument(
        "--oracle-jitter", type=float, default=0.0, help="oracle box noise, std as a fraction of size"
    )
    parser.add_argument(
        "--oracle-drop", type=float, default=0.0, help="probability an oracle box is left out"
    )
    parser.add_argument("--oracle-seed", type=int, default=0, help="seed of the oracle's jitter and drops")
    parser.add_argument(
        "--oracle-visibility-scores",
        action="store_true",
        help="score each oracle box by its share not hidden by people nearer the camera (default: 1), "
        "so that occluded people get the low scores BYTE association is made for",
    )
    parser.add_argument("--public", action="store_true", help="add det/det.txt public detections + teacher")
    parser.add_argument(
        "--public-min-score",
        type=float,
        default=0.0,
        help="raw score a public detection needs when the file's scores are not probabilities (ACF/DPM)",
    )
    add_frame_range_option(parser)
    parser.add_argument(
        "--tracker-config",
        type=Path,
        default=None,
        help="YAML mapping of TrackerConfig fields, the same for every tracker (missing keys: FairMOT defaults)",
    )
    parser.add_argument("--device", default="cpu", help="torch device of the students")
    add_detections_per_image_option(parser)
    add_threads_option(parser)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_teacher_options(parser)
    return parser


def open_comparison_sequences(
    paths: Sequence[Path], frame_range: FrameRange | None
) -> list[ComparisonSequence]:
    opened = []
    for path in paths:
        if not path.is_dir():
            raise SequenceError(f"{path}: not a MOTChallenge sequence folder")
        sequence = open_sequence(path)
        ground_truth = sequence.read_ground_truth()
        if ground_truth is None:
            raise SequenceError(f"{path}: no gt/gt.txt; compare needs ground truth for every sequence")
        numbers = sequence.frame_numbers(frame_range)
        if not numbers:
            raise SequenceError(f"{sequence.name}: no frames in the requested range")
        opened.append(ComparisonSequence(sequence, ground_truth.in_frames(frame_range)))
    names = [item.sequence.name for item in opened]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SequenceError(f"sequence name(s) given twice: {', '.join(duplicates)}")
    return opened


def _student(path: Path, device: str, option: str, detections_per_image: int | None) -> DetectorLike:
    detector = load_detector(path, device, detections_per_image)
    if not detector.embedding_dim:
        raise SourceError(
            f"{option} {path}: detection-only checkpoint (no embedding head); pass it as --two-stage"
        )
    return detector


def build_entries(
    args: argparse.Namespace, sequences: Sequence[ComparisonSequence], tracker_config: TrackerConfig
) -> tuple[list[TrackerEntry], list[str]]:
    """The requested trackers, in table order, and notes for the report."""
    wanted_teacher = args.two_stage is not None or args.oracle or args.public
    if not (args.one_stage or args.ce or wanted_teacher):
        raise SourceError("nothing to compare: give --one-stage, --two-stage, --ce, --oracle and/or --public")
    if args.public:
        missing = [item.sequence.name for item in sequences if item.sequence.public_detections_path is None]
        if missing:
            raise SequenceError(f"--public: no det/det.txt in {', '.join(missing)}")
    # Bad oracle settings fail here, before anything slow is loaded.
    oracle_perturbation(args)
    checkpoints = [path for path in (args.one_stage, args.ce, args.two_stage) if path is not None]
    for path in checkpoints:  # every missing file is reported before anything slow is loaded
        if not path.is_file():
            raise SourceError(f"{path}: no such checkpoint file")
    teacher: TeacherLike | None = teacher_from_args(args) if wanted_teacher else None
    entries: list[TrackerEntry] = []
    notes: list[str] = []
    if args.one_stage is not None:
        one_stage = OneStageDetection(
            _student(args.one_stage, args.device, "--one-stage", args.detections_per_image)
        )
        entries.append(TrackerEntry("one-stage", "one-stage (L2)", lambda sequence, truth: one_stage))
    if args.ce is not None:
        ce = OneStageDetection(_student(args.ce, args.device, "--ce", args.detections_per_image))
        entries.append(TrackerEntry("ce", "one-stage (CE)", lambda sequence, truth: ce))
    if teacher is not None:
        entries += _teacher_entries(args, teacher, tracker_config, notes)
    return entries, notes


def _teacher_entries(
    args: argparse.Namespace, teacher: TeacherLike, tracker_config: TrackerConfig, notes: list[str]
) -> list[TrackerEntry]:
    entries = []
    if args.two_stage is not None:
        detector = load_detector(args.two_stage, args.device, args.detections_per_image)
        if detector.embedding_dim:
            notes.append(
                f"--two-stage {args.two_stage} has an embedding head: its embeddings are ignored, "
                "but its time counts in the two-stage model ms"
            )
        two_stage = TwoStageDetection(detector, teacher, tracker_config.lowest_used_score)
        entries.append(
            TrackerEntry("two-stage", f"two-stage (+{teacher.name})", lambda sequence, truth: two_stage)
        )
    if args.oracle:
        perturbation = oracle_perturbation(args)
        entries.append(
            TrackerEntry(
                "oracle",
                f"oracle gt (+{teacher.name})",
                lambda sequence, truth: OracleDetection(truth, teacher, perturbation),
            )
        )
        entries.append(
            TrackerEntry(
                "oracle-iou",
                "oracle gt (IoU only)",
                lambda sequence, truth: OracleDetection(truth, None, perturbation),
            )
        )
    if args.public:
        entries.append(
            TrackerEntry(
                "public",
                f"public det (+{teacher.name})",
                lambda sequence, truth: _public_stage(sequence, teacher, args.public_min_score),
            )
        )
    return entries


def oracle_perturbation(args: argparse.Namespace) -> OraclePerturbation:
    return OraclePerturbation(
        args.oracle_jitter, args.oracle_drop, args.oracle_seed, args.oracle_visibility_scores
    )


def _public_stage(sequence: InputSequence, teacher: TeacherLike, min_raw_score: float) -> PublicDetection:
    path = sequence.public_detections_path
    if path is None:
        raise SequenceError(f"--public: no det/det.txt in {sequence.name}")
    return PublicDetection.from_file(path, teacher, min_raw_score)


def run(args: argparse.Namespace) -> list[TrackerResult]:
    frame_range = frame_range_from_args(args)
    sequences = open_comparison_sequences(args.sequences, frame_range)
    notes = [note for item in sequences for note in item.sequence.notes]
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    tracker_config = load_tracker_config(args.tracker_config)
    apply_threads_option(args)
    entries, entry_notes = build_entries(args, sequences, tracker_config)
    notes += entry_notes
    args.out.mkdir(parents=True, exist_ok=True)
    results = [
        run_tracker(entry, sequences, tracker_config, frame_range, args.out, not args.no_progress)
        for entry in entries
    ]
    settings = {
        "sequences": [str(item.sequence.path) for item in sequences],
        "frames": None if frame_range is None else [frame_range.first, frame_range.last],
        "frames_description": "all" if frame_range is None else f"{frame_range.first}..{frame_range.last}",
        "benchmarks": ", ".join(f"{item.sequence.name}: {item.ground_truth.benchmark}" for item in sequences),
        "tracker_config": tracker_config.to_dict(),
        "device": args.device,
        "threads": args.threads,
        "notes": notes,
    }
    write_reports(args.out, results, settings)
    return results


def write_reports(out: Path, results: Sequence[TrackerResult], settings: dict[str, Any]) -> None:
    report = markdown_report(results, settings)
    (out / "results.md").write_text(report)
    write_csv(out / "results.csv", results)
    write_json(out / "results.json", results, settings)
    chart_path = out / "results.png"
    if not cv2.imwrite(str(chart_path), draw_chart(results)):
        raise SourceError(f"{chart_path}: cv2 could not write the chart")
    print(report)
    print(f"wrote {out / 'results.md'}, results.csv, results.json, results.png")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except USER_ERRORS as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    limit_numpy_blas_threads()
    sys.exit(main())
