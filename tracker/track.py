"""Track people in a video, an image folder or a MOTChallenge sequence with a student checkpoint.

    python -m tracker.track --input PETS09-S2L1-half1 --checkpoint runs/pets/last.pt --out out/track
    python -m tracker.track --input clip.mp4 --checkpoint det_only.pt --teacher osnet_x0_25 \\
        --teacher-weights osnet_x0_25_msmt17.pth --out out/track --render

A student with an embedding head tracks one-stage; a detection-only checkpoint
needs the re-ID teacher on every detected crop (two-stage). Writes
``<out>/<sequence>.txt`` (MOT rows ``frame,id,x,y,w,h,score,-1,-1,-1``) and,
with ``--render``, ``<out>/<sequence>.mp4``. A MOTChallenge input with
ground truth is also evaluated (printed). Exit status 2 on bad input.

:func:`track_frames` (used by ``tracker.compare``) runs the association over a
frame source and keeps what evaluation and timing need.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import yaml

from tracker.association import FrameTracks, Tracker
from tracker.config import TrackerConfig, TrackerConfigError
from tracker.mot_format import frame_tracks_to_mot_rows, stack_mot_rows, write_mot_results
from tracker.render import DEFAULT_TRAIL_LENGTH, RenderError, TrackVideoWriter
from tracker.sequence import FrameRange, InputSequence, SequenceError, open_sequence
from tracker.sources import (
    DetectionStage,
    FrameDetections,
    OneStageDetection,
    SourceError,
    SourceFrame,
    TwoStageDetection,
    add_detections_per_image_option,
    add_teacher_options,
    load_detector,
    set_torch_threads,
    source_frames,
    teacher_from_args,
)
from tracker.timing import FrameTiming, TimingSummary, limit_numpy_blas_threads

EXIT_USAGE = 2
USER_ERRORS = (SourceError, SequenceError, TrackerConfigError, RenderError)

FrameCallback = Callable[[SourceFrame, FrameTracks], None]


@dataclass(frozen=True)
class TrackingRun:
    """One sequence tracked: MOT rows, every scored detection per frame (AP) and stage times."""

    sequence: str
    frame_numbers: tuple[int, ...]
    mot_rows: npt.NDArray[np.float64]  # (R, 10)
    scored_detections: tuple[FrameDetections, ...]  # one per frame, without embeddings
    timings: tuple[FrameTiming, ...]
    dropped_detections: int

    @property
    def timing(self) -> TimingSummary:
        return TimingSummary.of(self.timings)


def track_frames(
    sequence_name: str,
    frames: Iterable[SourceFrame],
    tracker: Tracker,
    on_frame: FrameCallback | None = None,
) -> TrackingRun:
    """Associate every frame's detections; times ``Tracker.update`` as the association stage."""
    numbers: list[int] = []
    rows: list[npt.NDArray[np.float64]] = []
    scored: list[FrameDetections] = []
    timings: list[FrameTiming] = []
    dropped = 0
    for frame in frames:
        detections = frame.detections
        started = time.perf_counter()
        tracks = tracker.update(detections.tlbr, detections.score, detections.embedding)
        association_seconds = time.perf_counter() - started
        numbers.append(frame.number)
        rows.append(frame_tracks_to_mot_rows(frame.number, tracks))
        scored.append(frame.scored_detections)
        timings.append(
            FrameTiming(
                decode_seconds=frame.timing.decode_seconds,
                model_seconds=frame.timing.model_seconds,
                teacher_seconds=frame.timing.teacher_seconds,
                association_seconds=association_seconds,
            )
        )
        dropped += frame.dropped
        if on_frame is not None:
            on_frame(frame, tracks)
    return TrackingRun(
        sequence=sequence_name,
        frame_numbers=tuple(numbers),
        mot_rows=stack_mot_rows(rows),
        scored_detections=tuple(scored),
        timings=tuple(timings),
        dropped_detections=dropped,
    )


def load_tracker_config(path: Path | None) -> TrackerConfig:
    """TrackerConfig from a YAML mapping (missing keys: FairMOT defaults); None gives the defaults."""
    if path is None:
        return TrackerConfig()
    try:
        values = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise TrackerConfigError(f"{path}: cannot read the tracker config ({error.strerror})") from error
    except yaml.YAMLError as error:
        raise TrackerConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from error
    try:
        return TrackerConfig.from_dict(values or {})
    except TrackerConfigError as error:
        raise TrackerConfigError(f"{path}: {error}") from error


def progress(
    frames: Iterable[SourceFrame], total: int | None, label: str, enabled: bool
) -> Iterable[SourceFrame]:
    """A tqdm progress bar on stderr around ``frames`` (or ``frames`` itself when disabled)."""
    if not enabled:
        return frames
    from tqdm import tqdm

    return tqdm(frames, total=total, desc=label, unit="frame", leave=False, file=sys.stderr)


def add_frame_range_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--frames",
        nargs=2,
        type=int,
        metavar=("FIRST", "LAST"),
        help="only frames FIRST..LAST (inclusive, 1-based as in MOT files); the tracker starts fresh at FIRST",
    )


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for the models (default: torch's choice, one per core). On a machine "
        "other processes keep busy, 1 can be much faster: idle torch threads spin-wait for a core",
    )


def apply_threads_option(args: argparse.Namespace) -> None:
    if args.threads is not None:
        set_torch_threads(args.threads)


def frame_range_from_args(args: argparse.Namespace) -> FrameRange | None:
    return None if args.frames is None else FrameRange(*args.frames)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions keep their line breaks; defaults are shown where there is one (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


TRACK_DESCRIPTION = """\
Track people with a student checkpoint.

A student with an embedding head runs one-stage (detections and embeddings in
one pass); a detection-only checkpoint runs two-stage, with the re-ID teacher
on each detected crop (then --teacher-weights or $TDT_TEACHER_WEIGHTS is
required). Writes <out>/<sequence>.txt in MOT format
(frame,id,x,y,w,h,score,-1,-1,-1) and, with --render, <out>/<sequence>.mp4
(boxes, IDs, trails). Prints per-stage times and FPS (image decoding is shown
but not counted in FPS), and HOTA/MOTA/IDF1 when the input is a MOTChallenge
sequence with gt/gt.txt. Bad input: a one-line error and exit status 2.

examples:
  python -m tracker.track --input ../shared/data/PETS09-S2L1-half1 \\
      --checkpoint runs/pets/last.pt --frames 301 397 --out out/track
  python -m tracker.track --input clip.mp4 --checkpoint runs/det/last.pt \\
      --teacher osnet_x0_25 --teacher-weights osnet_x0_25_msmt17.pth --render --out out/track
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tracker.track", description=TRACK_DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--input",
        type=Path,
        required=True,
        help="a video file, a folder of images, or a MOTChallenge sequence folder (seqinfo.ini, img1/)",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="student checkpoint (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--mode",
        choices=("auto", "one-stage", "two-stage"),
        default="auto",
        help="auto: one-stage if the checkpoint has an embedding head, else two-stage; two-stage with a "
        "student ignores its embeddings and uses the teacher",
    )
    add_frame_range_option(parser)
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help="frame rate of the input (scales how long lost tracks are kept); default: seqinfo.ini or "
        "the video header, 30 for image folders",
    )
    parser.add_argument("--device", default="cpu", help="torch device of the student, e.g. cpu or cuda:0")
    add_detections_per_image_option(parser)
    add_threads_option(parser)
    parser.add_argument(
        "--tracker-config",
        type=Path,
        default=None,
        help="YAML mapping of TrackerConfig fields (thresholds, buffer, lambda); missing keys keep "
        "the FairMOT defaults",
    )
    parser.add_argument("--render", action="store_true", help="also write <out>/<sequence>.mp4 (mp4v)")
    parser.add_argument(
        "--trail-length",
        type=int,
        default=DEFAULT_TRAIL_LENGTH,
        help="frames of trail drawn behind each track",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_teacher_options(parser)
    return parser


def choose_stage(args: argparse.Namespace, tracker_config: TrackerConfig) -> DetectionStage:
    detector = load_detector(args.checkpoint, args.device, args.detections_per_image)
    one_stage = bool(detector.embedding_dim) if args.mode == "auto" else args.mode == "one-stage"
    if one_stage:
        if args.teacher_weights is not None:
            print("note: one-stage tracking: --teacher-weights is not used", file=sys.stderr)
        return OneStageDetection(detector)
    return TwoStageDetection(detector, teacher_from_args(args), min_score=tracker_config.lowest_used_score)


def run(args: argparse.Namespace) -> None:
    if args.trail_length < 0:
        raise SourceError(f"--trail-length must be >= 0, got {args.trail_length}")
    sequence = open_sequence(args.input, args.fps)
    for note in sequence.notes:
        print(f"note: {note}", file=sys.stderr)
    frame_range = frame_range_from_args(args)
    tracker_config = load_tracker_config(args.tracker_config)
    apply_threads_option(args)
    stage = choose_stage(args, tracker_config)
    print(f"{sequence.name}: {stage.description}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    run_result = _track_sequence(sequence, stage, tracker_config, frame_range, args)
    result_path = args.out / f"{sequence.name}.txt"
    write_mot_results(result_path, run_result.mot_rows)
    print(f"wrote {result_path} ({len(run_result.mot_rows)} rows, {len(run_result.frame_numbers)} frames)")
    print(f"speed: {run_result.timing.describe()}")
    if run_result.dropped_detections:
        print(
            f"note: {run_result.dropped_detections} detections had no usable crop or embedding and were skipped"
        )
    _print_evaluation(sequence, run_result, frame_range)


def _track_sequence(
    sequence: InputSequence,
    stage: DetectionStage,
    tracker_config: TrackerConfig,
    frame_range: FrameRange | None,
    args: argparse.Namespace,
) -> TrackingRun:
    numbers = sequence.frame_numbers(frame_range)
    if numbers is not None and not numbers:
        raise SequenceError(f"{sequence.name}: no frames in range {args.frames[0]}..{args.frames[1]}")
    frames = progress(
        source_frames(sequence, stage, frame_range),
        None if numbers is None else len(numbers),
        sequence.name,
        enabled=not args.no_progress,
    )
    tracker = Tracker(tracker_config, frame_rate=sequence.frame_rate)
    if not args.render:
        return track_frames(sequence.name, frames, tracker)
    video_path = args.out / f"{sequence.name}.mp4"
    with TrackVideoWriter(video_path, sequence.frame_rate, args.trail_length) as video:
        result = track_frames(
            sequence.name,
            frames,
            tracker,
            lambda frame, tracks: video.write(frame.image, tracks, frame.number),
        )
    print(f"wrote {video_path} ({video.frames_written} frames)")
    return result


def _print_evaluation(
    sequence: InputSequence, run_result: TrackingRun, frame_range: FrameRange | None
) -> None:
    ground_truth = sequence.read_ground_truth()
    if ground_truth is None:
        return
    from tracker.evaluation import evaluate_sequences, format_summary

    in_range = ground_truth.in_frames(frame_range)
    frame_filter = np.isin(in_range.rows[:, 0], run_result.frame_numbers)
    metrics = evaluate_sequences(
        {sequence.name: (in_range.rows[frame_filter], run_result.mot_rows)},
        ground_truth.benchmark,
        frames={sequence.name: run_result.frame_numbers},
    )
    print(f"evaluation against {sequence.ground_truth_path} ({ground_truth.benchmark} protocol):")
    print(format_summary({sequence.name: metrics[sequence.name]}))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except USER_ERRORS as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def one_line(message: str) -> str:
    return " ".join(message.split())


if __name__ == "__main__":
    limit_numpy_blas_threads()
    sys.exit(main())
