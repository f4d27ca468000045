"""Track people in a video, an image folder or a MOTChallenge sequence with a student checkpoint.

    python -m tracker.track --input PETS09-S2L1-half1 --checkpoint runs/pets/last.pt --out out/track
    python -m tracker.track --input clip.mp4 --checkpoint det_only.pt --teacher osnet_x0_25 \\
        --teacher-weights osnet_x0_25_msmt17.pth --out out/track --render

A student with an embedding head tracks one-stage; a detection-only checkpoint
needs the re-ID teacher on every detected crop (two-stage). Writes
``<out>/<sequence>.txt`` (MOT rows ``frame,id,x,y,w,h,score,-1,-1,-1``) and,
with ``--render``, ``<out>/<sequence>.mp4``. A MOTChallenge input with
ground truth is also evaluated (printed). Exit status 2 on bad input.

The work is :func:`tracker.tracking.track_input`; this module only turns the
command line into a :class:`tracker.tracking.TrackingJob`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tracker.cli import (
    HelpFormatter,
    add_frame_range_option,
    add_student_inference_options,
    add_teacher_options,
    add_threads_option,
    add_tracker_config_option,
    configure_process,
    frame_range_from_args,
    limit_numpy_blas_threads,
    run_command,
    teacher_config_from_args,
    threads_from_args,
    tracker_config_from_args,
)
from tracker.render import DEFAULT_TRAIL_LENGTH
from tracker.sources import SourceError
from tracker.tracking import TrackingJob, track_input

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
    add_student_inference_options(parser)
    add_threads_option(parser)
    add_tracker_config_option(parser)
    parser.add_argument("--render", action="store_true", help="also write <out>/<sequence>.mp4 (mp4v)")
    parser.add_argument(
        "--trail-length",
        type=int,
        default=DEFAULT_TRAIL_LENGTH,
        help="frames of trail drawn behind each track",
    )
    parser.add_argument(
        "--still-frame",
        type=int,
        metavar="N",
        help="with --render: also save frame N's drawing as <out>/<sequence>-frame<N>.png",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_teacher_options(parser)
    return parser


def job_from_args(args: argparse.Namespace) -> TrackingJob:
    """The tracking job the arguments describe."""
    if args.trail_length < 0:
        raise SourceError(f"--trail-length must be >= 0, got {args.trail_length}")
    if args.still_frame is not None and not args.render:
        raise SourceError("--still-frame needs --render (the still is a frame of the rendered video)")
    return TrackingJob(
        input=args.input,
        checkpoint=args.checkpoint,
        out=args.out,
        teacher=teacher_config_from_args(args),
        mode=args.mode,
        frame_range=frame_range_from_args(args),
        frame_rate=args.fps,
        device=args.device,
        detections_per_image=args.detections_per_image,
        peak_nms_thresh=args.peak_nms,
        tracker_config=tracker_config_from_args(args),
        render=args.render,
        trail_length=args.trail_length,
        still_frame=args.still_frame,
        show_progress=not args.no_progress,
        teacher_weights_given=args.teacher_weights is not None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def track() -> None:
        job = job_from_args(args)
        configure_process(threads_from_args(args))
        track_input(job)

    return run_command(track)


if __name__ == "__main__":
    limit_numpy_blas_threads()
    sys.exit(main())
