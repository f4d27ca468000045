"""What the tracker's command-line entry points share: options, help layout, one-line errors.

``tracker.track`` and ``tracker.compare`` define their options with these helpers, turn the
parsed arguments into typed configs with the ``*_from_args`` functions and stop there:
nothing below a CLI sees an argparse namespace. Bad input of any kind (options, files,
checkpoints, configs) ends the command with one line on stderr and exit status
:data:`EXIT_USAGE`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tdt.config import ConfigError
from tdt.process import configure_for_cli
from tdt.text import one_line
from tracker.config import TrackerConfig
from tracker.render import RenderError
from tracker.sequence import FrameRange, SequenceError
from tracker.sources import SourceError

if TYPE_CHECKING:
    from teacher import TeacherConfig

EXIT_USAGE = 2
USER_ERRORS = (SourceError, SequenceError, ConfigError, RenderError)
BLAS_THREADS_VARIABLE = "OPENBLAS_NUM_THREADS"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions keep their line breaks; defaults are shown where there is one (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def run_command(command: Callable[[], object]) -> int:
    """Run a CLI's work; a user error becomes ``error: <one line>`` on stderr and exit status 2."""
    try:
        command()
    except USER_ERRORS as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def configure_process(threads: int | None) -> None:
    """The process set-up a tracker command opts in to (allocator; torch threads if given)."""
    configure_for_cli(torch_threads=threads)


def limit_numpy_blas_threads() -> None:
    """Run numpy's OpenBLAS single-threaded, unless ``OPENBLAS_NUM_THREADS`` says otherwise.

    The association's matrix products are a few tracks by a few detections: splitting them
    over threads costs more than it saves, and an extra thread that has to wait for a busy
    core stalls every frame (``benchmarks/association.py`` measures it). Only numpy's bundled
    OpenBLAS is limited (torch's OpenMP pool is the models', set by ``--threads``), and a value
    the user set is kept.
    """
    if os.environ.get(BLAS_THREADS_VARIABLE) is not None:
        return
    from threadpoolctl import ThreadpoolController

    ThreadpoolController().select(internal_api="openblas").limit(limits=1)


# ---- options ------------------------------------------------------------------------------------


def add_frame_range_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--frames",
        nargs=2,
        type=int,
        metavar=("FIRST", "LAST"),
        help="only frames FIRST..LAST (inclusive, 1-based as in MOT files); the tracker starts fresh at FIRST",
    )


def add_student_inference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detections-per-image",
        type=int,
        default=None,
        help="keep at most this many detections per image after NMS (default: the checkpoint's "
        "detections_per_image; students trained since the default was raised keep 500)",
    )
    parser.add_argument(
        "--peak-nms",
        type=float,
        default=None,
        metavar="IOU",
        help="CenterNet students: also suppress heatmap peaks whose boxes overlap a better one at "
        "IoU > this (default: the checkpoint's peak_nms_thresh; usually none, the 3x3 max-pool alone). "
        "For students trained with several positives per object (AdaMOT's assignment)",
    )


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for the models (default: torch's choice, one per core). On a machine "
        "other processes keep busy, 1 can be much faster: idle torch threads spin-wait for a core",
    )


def add_tracker_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracker-config",
        type=Path,
        default=None,
        help="YAML mapping of TrackerConfig fields (thresholds, buffer, lambda); missing keys keep "
        "the FairMOT defaults",
    )


def add_teacher_options(parser: argparse.ArgumentParser, default_name: str | None = None) -> None:
    """The teacher package's shared options (``--teacher``, ``--teacher-weights``, ...)."""
    from teacher import DEFAULT_TEACHER, add_teacher_arguments

    add_teacher_arguments(parser, default_name=default_name or DEFAULT_TEACHER)


# ---- arguments -> configs -----------------------------------------------------------------------


def frame_range_from_args(args: argparse.Namespace) -> FrameRange | None:
    return None if args.frames is None else FrameRange(*args.frames)


def tracker_config_from_args(args: argparse.Namespace) -> TrackerConfig:
    """``--tracker-config`` read strictly (missing keys: FairMOT defaults); no option: the defaults."""
    return TrackerConfig() if args.tracker_config is None else TrackerConfig.from_yaml(args.tracker_config)


def threads_from_args(args: argparse.Namespace) -> int | None:
    if args.threads is not None and args.threads < 1:
        raise SourceError(f"torch threads must be >= 1, got {args.threads}")
    return args.threads


def teacher_config_from_args(args: argparse.Namespace) -> TeacherConfig:
    """The teacher options as a :class:`teacher.TeacherConfig` (weights fall back to the env)."""
    from teacher import TeacherError
    from teacher import teacher_config_from_args as shared_teacher_config

    try:
        return shared_teacher_config(args)
    except TeacherError as error:
        raise SourceError(one_line(str(error))) from error
