"""Track one input with a student checkpoint: the work behind ``python -m tracker.track``.

A student with an embedding head tracks one-stage; a detection-only checkpoint needs the
re-ID teacher on every detected crop (two-stage). :func:`track_input` writes
``<out>/<sequence>.txt`` (MOT rows), with ``render`` also ``<out>/<sequence>.mp4``, prints
the stage times and, for a MOTChallenge sequence with ground truth, its MOT metrics.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from tracker.association import FrameTracks
from tracker.config import TrackerConfig
from tracker.evaluation import evaluate_sequences, format_summary
from tracker.mot_format import write_mot_results
from tracker.render import DEFAULT_TRAIL_LENGTH, TrackVideoWriter, write_still
from tracker.run import TrackingRun, run_sequence
from tracker.sequence import FrameRange, InputSequence, open_sequence
from tracker.sources import (
    DetectionStage,
    OneStageDetection,
    SourceError,
    SourceFrame,
    TwoStageDetection,
    load_detector,
    load_teacher,
)

if TYPE_CHECKING:
    from teacher import TeacherConfig

TrackingMode = Literal["auto", "one-stage", "two-stage"]


@dataclass(frozen=True)
class TrackingJob:
    """One input to track and how.

    ``mode`` ``auto`` tracks one-stage when the checkpoint has an embedding head, else
    two-stage with ``teacher``; ``two-stage`` with an embedding student ignores its
    embeddings. ``frame_rate`` overrides the input's own (it scales how long lost tracks
    are kept). ``teacher_weights_given``: the user named teacher weights explicitly (a
    one-stage run says they are unused).
    """

    input: Path
    checkpoint: Path
    out: Path
    teacher: TeacherConfig
    mode: TrackingMode = "auto"
    frame_range: FrameRange | None = None
    frame_rate: float | None = None
    device: str = "cpu"
    detections_per_image: int | None = None  # overrides the checkpoint's cap (None: its own)
    peak_nms_thresh: float | None = None  # CenterNet peak NMS IoU (None: the checkpoint's)
    tracker_config: TrackerConfig = field(default_factory=TrackerConfig)
    render: bool = False
    trail_length: int = DEFAULT_TRAIL_LENGTH
    # With render: also save this frame's drawing as <out>/<sequence>-frame<N>.png.
    still_frame: int | None = None
    show_progress: bool = True
    teacher_weights_given: bool = False


def track_input(job: TrackingJob) -> TrackingRun:
    """Track ``job.input``, write the MOT results (and video), print speed and evaluation."""
    sequence = open_sequence(job.input, job.frame_rate)
    for note in sequence.notes:
        print(f"note: {note}", file=sys.stderr)
    stage = choose_stage(job)
    print(f"{sequence.name}: {stage.description}", file=sys.stderr)
    job.out.mkdir(parents=True, exist_ok=True)
    run = _run(sequence, stage, job)
    result_path = job.out / f"{sequence.name}.txt"
    write_mot_results(result_path, run.mot_rows)
    print(f"wrote {result_path} ({len(run.mot_rows)} rows, {len(run.frame_numbers)} frames)")
    print(f"speed: {run.timing.describe()}")
    if run.dropped_detections:
        print(f"note: {run.dropped_detections} detections had no usable crop or embedding and were skipped")
    print_evaluation(sequence, run, job.frame_range)
    return run


def choose_stage(job: TrackingJob) -> DetectionStage:
    """One-stage or two-stage detection for the job's checkpoint and mode."""
    detector = load_detector(job.checkpoint, job.device, job.detections_per_image, job.peak_nms_thresh)
    one_stage = bool(detector.embedding_dim) if job.mode == "auto" else job.mode == "one-stage"
    if one_stage:
        if job.teacher_weights_given:
            print("note: one-stage tracking: --teacher-weights is not used", file=sys.stderr)
        return OneStageDetection(detector)
    return TwoStageDetection(
        detector, load_teacher(job.teacher), min_score=job.tracker_config.lowest_used_score
    )


def _run(sequence: InputSequence, stage: DetectionStage, job: TrackingJob) -> TrackingRun:
    """Track the sequence; with ``job.render``, draw every frame's tracks into an mp4 as it goes."""
    if not job.render:
        return run_sequence(
            sequence, stage, job.tracker_config, job.frame_range, show_progress=job.show_progress
        )
    video_path = job.out / f"{sequence.name}.mp4"
    still_path = job.out / f"{sequence.name}-frame{job.still_frame}.png"
    stills_written = []

    def draw(frame: SourceFrame, tracks: FrameTracks) -> None:
        drawn = video.write(frame.image, tracks, frame.number)
        if frame.number == job.still_frame:
            write_still(still_path, drawn)
            stills_written.append(still_path)

    banner = "SYNTHETIC" if sequence.synthetic else ""
    with TrackVideoWriter(video_path, sequence.frame_rate, job.trail_length, banner) as video:
        run = run_sequence(
            sequence,
            stage,
            job.tracker_config,
            job.frame_range,
            show_progress=job.show_progress,
            on_frame=draw,
        )
    print(f"wrote {video_path} ({video.frames_written} frames)")
    if job.still_frame is not None:
        if not stills_written:
            raise SourceError(
                f"--still-frame {job.still_frame}: no such frame was tracked in {sequence.name}"
            )
        print(f"wrote {still_path} (frame {job.still_frame})")
    return run


def print_evaluation(sequence: InputSequence, run: TrackingRun, frame_range: FrameRange | None) -> None:
    """Print MOT metrics when the input is a MOTChallenge sequence with ground truth."""
    ground_truth = sequence.read_ground_truth()
    if ground_truth is None:
        return
    in_range = ground_truth.in_frames(frame_range)
    frame_filter = np.isin(in_range.rows[:, 0], run.frame_numbers)
    metrics = evaluate_sequences(
        {sequence.name: (in_range.rows[frame_filter], run.mot_rows)},
        ground_truth.benchmark,
        frames={sequence.name: run.frame_numbers},
    )
    print(f"evaluation against {sequence.ground_truth_path} ({ground_truth.benchmark} protocol):")
    print(format_summary({sequence.name: metrics[sequence.name]}))
