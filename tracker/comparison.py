"""Compare trackers on MOTChallenge sequences: the work behind ``python -m tracker.compare``.

Every tracker runs the same association (:class:`tracker.Tracker`) with the same
:class:`TrackerConfig` on the same frames; only the source of detections and embeddings
differs (see :class:`ComparisonConfig`). :func:`run_comparison` runs each tracker on each
sequence (:mod:`tracker.run`), scores it (:mod:`tracker.scoring`) and writes the reports
(:mod:`tracker.report`, :mod:`tracker.chart`) and each tracker's MOT results.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tracker.chart import write_chart
from tracker.config import TrackerConfig
from tracker.mot_format import write_mot_results
from tracker.report import ComparisonSettings, write_reports
from tracker.run import TrackingRun, run_sequence
from tracker.scoring import TrackerResult, score_runs
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
    load_detector,
    load_teacher,
)

if TYPE_CHECKING:
    from teacher import TeacherConfig

StageFactory = Callable[[InputSequence, GroundTruth], DetectionStage]
FIXED_ROW_KEYS = ("one-stage", "ce", "two-stage", "oracle", "oracle-iou", "public")
_ROW_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class LabelledCheckpoint:
    """A one-stage student checkpoint and the row label it gets (also its results folder name)."""

    label: str
    path: Path

    def __post_init__(self) -> None:
        if not _ROW_LABEL.fullmatch(self.label) or self.label in FIXED_ROW_KEYS:
            raise SourceError(
                f"one-stage label {self.label!r}: use letters, digits, '.', '_', '+', '-' "
                f"(starting with a letter or digit), and none of {', '.join(FIXED_ROW_KEYS)}"
            )


@dataclass(frozen=True)
class ComparisonConfig:
    """Which trackers to compare, on which sequences and frames, and where the reports go.

    Rows, in table order: ``one-stage`` (the student checkpoint ``one_stage``: detections and
    embeddings in one pass), ``ce`` (a one-stage student trained with identity cross-entropy),
    ``two-stage`` (the detection checkpoint ``two_stage`` + the teacher on each detected crop),
    ``oracle`` / ``oracle-iou`` (ground-truth boxes, perturbed by ``oracle_perturbation``, with
    teacher embeddings / with none: the association alone) and ``public`` (the sequences'
    ``det/det.txt`` + the teacher). ``teacher`` is needed by the last four.
    ``labelled_one_stage`` adds one one-stage row per labelled checkpoint, of any student
    family, after the ``one-stage`` row.
    """

    sequences: tuple[Path, ...]
    out: Path
    one_stage: Path | None = None
    labelled_one_stage: tuple[LabelledCheckpoint, ...] = ()
    ce: Path | None = None
    two_stage: Path | None = None
    oracle: bool = False
    oracle_perturbation: OraclePerturbation = field(default_factory=OraclePerturbation)
    public: bool = False
    public_min_score: float = 0.0  # raw score a public detection needs when scores are not probabilities
    frame_range: FrameRange | None = None
    tracker_config: TrackerConfig = field(default_factory=TrackerConfig)
    teacher: TeacherConfig | None = None
    device: str = "cpu"  # torch device of the students
    detections_per_image: int | None = None  # overrides the checkpoints' cap (None: their own)
    peak_nms_thresh: float | None = None  # overrides the CenterNet checkpoints' peak NMS (None: their own)
    threads: int | None = None  # torch threads the caller set up; recorded in the report
    show_progress: bool = True

    def __post_init__(self) -> None:
        if not (self.one_stage or self.labelled_one_stage or self.ce or self.needs_teacher):
            raise SourceError(
                "nothing to compare: give --one-stage, --two-stage, --ce, --oracle and/or --public"
            )
        labels = [item.label for item in self.labelled_one_stage]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise SourceError(f"one-stage label(s) given twice: {', '.join(repeated)}")

    @property
    def needs_teacher(self) -> bool:
        return self.two_stage is not None or self.oracle or self.public


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


def run_comparison(config: ComparisonConfig) -> list[TrackerResult]:
    """Run, score and report every requested tracker on every sequence."""
    sequences = open_comparison_sequences(config.sequences, config.frame_range)
    notes = [note for item in sequences for note in item.sequence.notes]
    notes += _student_override_notes(config)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    entries, entry_notes = build_entries(config, sequences)
    notes += entry_notes
    config.out.mkdir(parents=True, exist_ok=True)
    results = [run_tracker(entry, sequences, config) for entry in entries]
    frame_range = config.frame_range
    settings = ComparisonSettings(
        sequences=tuple(str(item.sequence.path) for item in sequences),
        frames=None if frame_range is None else (frame_range.first, frame_range.last),
        benchmarks=", ".join(f"{item.sequence.name}: {item.ground_truth.benchmark}" for item in sequences),
        tracker_config=config.tracker_config,
        device=config.device,
        threads=config.threads,
        notes=tuple(notes),
    )
    report = write_reports(config.out, results, settings)
    synthetic = all(item.sequence.synthetic for item in sequences)
    write_chart(config.out / "results.png", results, synthetic=synthetic)
    print(report)
    print(f"wrote {config.out / 'results.md'}, results.csv, results.json, results.png")
    return results


def run_tracker(
    entry: TrackerEntry, sequences: Sequence[ComparisonSequence], config: ComparisonConfig
) -> TrackerResult:
    """Track every sequence with ``entry``'s stage, write its MOT results and score it."""
    runs: dict[str, TrackingRun] = {}
    descriptions: list[str] = []
    (config.out / entry.key).mkdir(parents=True, exist_ok=True)
    for item in sequences:
        sequence = item.sequence
        stage = entry.make_stage(sequence, item.ground_truth)
        if stage.description not in descriptions:
            descriptions.append(stage.description)
        tracking = run_sequence(
            sequence,
            stage,
            config.tracker_config,
            config.frame_range,
            show_progress=config.show_progress,
            progress_label=f"{entry.key} {sequence.name}",
        )
        write_mot_results(config.out / entry.key / f"{sequence.name}.txt", tracking.mot_rows)
        print(f"{entry.label} on {sequence.name}: {tracking.timing.describe()}", file=sys.stderr)
        runs[sequence.name] = tracking
    ground_truths = {item.sequence.name: item.ground_truth for item in sequences}
    return TrackerResult(entry.key, entry.label, "; ".join(descriptions), score_runs(runs, ground_truths))


def open_comparison_sequences(
    paths: Sequence[Path], frame_range: FrameRange | None
) -> list[ComparisonSequence]:
    """Open every sequence with its ground truth (required) restricted to ``frame_range``."""
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


def build_entries(
    config: ComparisonConfig, sequences: Sequence[ComparisonSequence]
) -> tuple[list[TrackerEntry], list[str]]:
    """The requested trackers, in table order, and notes for the report.

    Every input is checked (public detections, checkpoint files) before anything slow is loaded.
    """
    if config.public:
        missing = [item.sequence.name for item in sequences if item.sequence.public_detections_path is None]
        if missing:
            raise SequenceError(f"--public: no det/det.txt in {', '.join(missing)}")
    labelled = [item.path for item in config.labelled_one_stage]
    for path in (config.one_stage, *labelled, config.ce, config.two_stage):
        if path is not None and not path.is_file():
            raise SourceError(f"{path}: no such checkpoint file")
    teacher = _teacher(config) if config.needs_teacher else None
    entries: list[TrackerEntry] = []
    notes: list[str] = []
    if config.one_stage is not None:
        one_stage = OneStageDetection(_student(config.one_stage, config, "--one-stage"))
        entries.append(TrackerEntry("one-stage", "one-stage (L2)", lambda sequence, truth: one_stage))
    for item in config.labelled_one_stage:
        stage = OneStageDetection(_student(item.path, config, f"--one-stage {item.label}="))
        entries.append(TrackerEntry(item.label, item.label, lambda sequence, truth, stage=stage: stage))
    if config.ce is not None:
        ce = OneStageDetection(_student(config.ce, config, "--ce"))
        entries.append(TrackerEntry("ce", "one-stage (CE)", lambda sequence, truth: ce))
    if teacher is not None:
        entries += _teacher_entries(config, teacher, notes)
    return entries, notes


def _teacher(config: ComparisonConfig) -> TeacherLike:
    if config.teacher is None:
        raise SourceError("the two-stage, oracle and public trackers need a teacher config")
    return load_teacher(config.teacher)


def _student_override_notes(config: ComparisonConfig) -> list[str]:
    overrides = {
        "detections_per_image": config.detections_per_image,
        "peak_nms_thresh": config.peak_nms_thresh,
    }
    given = ", ".join(f"{name} {value}" for name, value in overrides.items() if value is not None)
    return [f"every student detector ran with {given} instead of its checkpoint's"] if given else []


def _student(path: Path, config: ComparisonConfig, option: str) -> DetectorLike:
    detector = load_detector(path, config.device, config.detections_per_image, config.peak_nms_thresh)
    if not detector.embedding_dim:
        raise SourceError(
            f"{option} {path}: detection-only checkpoint (no embedding head); pass it as --two-stage"
        )
    return detector


def _teacher_entries(config: ComparisonConfig, teacher: TeacherLike, notes: list[str]) -> list[TrackerEntry]:
    entries = []
    if config.two_stage is not None:
        detector = load_detector(
            config.two_stage, config.device, config.detections_per_image, config.peak_nms_thresh
        )
        if detector.embedding_dim:
            notes.append(
                f"--two-stage {config.two_stage} has an embedding head: its embeddings are ignored, "
                "but its time counts in the two-stage model ms"
            )
        two_stage = TwoStageDetection(detector, teacher, config.tracker_config.lowest_used_score)
        entries.append(
            TrackerEntry("two-stage", f"two-stage (+{teacher.name})", lambda sequence, truth: two_stage)
        )
    if config.oracle:
        perturbation = config.oracle_perturbation
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
    if config.public:
        min_raw_score = config.public_min_score
        entries.append(
            TrackerEntry(
                "public",
                f"public det (+{teacher.name})",
                lambda sequence, truth: _public_stage(sequence, teacher, min_raw_score),
            )
        )
    return entries


def _public_stage(sequence: InputSequence, teacher: TeacherLike, min_raw_score: float) -> PublicDetection:
    path = sequence.public_detections_path
    if path is None:
        raise SequenceError(f"--public: no det/det.txt in {sequence.name}")
    return PublicDetection.from_file(path, teacher, min_raw_score)
