"""The teacher options every CLI shares, so they are spelled and documented the same everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path

from teacher.config import TeacherConfig
from teacher.registry import (
    DEFAULT_TEACHER,
    FETCH_WEIGHTS_COMMAND,
    MOBILENET_TEACHER,
    MODEL_ZOO_URL,
    TEACHER_NAMES,
    TRUST_PICKLE_OPTION,
    WEIGHTS_ENV_VAR,
    WEIGHTS_OPTION,
)


def add_teacher_arguments(
    parser: argparse.ArgumentParser, *, default_name: str = DEFAULT_TEACHER, short_aliases: bool = False
) -> None:
    """Add ``--teacher``, ``--teacher-weights``, ``--trust-teacher-pickle``, ``--teacher-device``,
    ``--teacher-batch-size`` to ``parser``; read them back with :func:`teacher_config_from_args`.

    ``short_aliases`` also accepts ``--device`` and ``--batch-size`` for the last two, for a
    command whose only model is the teacher (``pipeline.distill``).
    """
    group = parser.add_argument_group("re-ID teacher")
    group.add_argument(
        "--teacher",
        default=default_name,
        choices=TEACHER_NAMES,
        help=f"teacher architecture (default %(default)s); {MOBILENET_TEACHER} is ImageNet MobileNetV2, "
        "not re-ID trained, but its weights need no model-zoo download",
    )
    group.add_argument(
        WEIGHTS_OPTION,
        type=Path,
        default=None,
        help=f"local weights file (default: ${WEIGHTS_ENV_VAR}): from the torchreid model zoo "
        f"({MODEL_ZOO_URL}), or for {MOBILENET_TEACHER} the file `{FETCH_WEIGHTS_COMMAND}` writes",
    )
    group.add_argument(
        TRUST_PICKLE_OPTION,
        action="store_true",
        help="allow unpickling a weights file that is not a plain state dict and not a known "
        "model-zoo file (unpickling can run code: only for files you trust)",
    )
    aliases = {"device": ("--device",), "batch_size": ("--batch-size",)} if short_aliases else {}
    group.add_argument(
        "--teacher-device",
        *aliases.get("device", ()),
        default="cpu",
        help="torch device, e.g. cpu or cuda:0 (default %(default)s)",
    )
    group.add_argument(
        "--teacher-batch-size",
        *aliases.get("batch_size", ()),
        type=int,
        default=64,
        help="crops per forward pass (default %(default)s)",
    )


def teacher_config_from_args(args: argparse.Namespace) -> TeacherConfig:
    """The TeacherConfig for options added by :func:`add_teacher_arguments` (weights fall back to the env)."""
    return TeacherConfig.from_env_and_args(
        name=args.teacher,
        weights=args.teacher_weights,
        device=args.teacher_device,
        batch_size=args.teacher_batch_size,
        trust_pickle=args.trust_teacher_pickle,
    )
