"""Two trainings one after the other on all threads, against the same two side by side.

``make demo`` trains its one-stage student and the detection-only twin side by side,
each on half the threads. This measures whether that is faster here, in one run:

- *one after the other*: each recipe trains alone with ``--threads T`` (default: one per
  core), the second starting when the first has finished;
- *side by side*: both start together with ``--threads T/2`` each.

Every training is a fresh ``python -m student.train`` process on the same shards, with
``--max-steps STEPS`` and no final evaluation, so the times include each process's
start-up as the demo's do. The two layouts alternate for ``--rounds`` rounds; the median
wall time of each is printed with their ratio (below 1: side by side is faster). The
shards come from a finished ``make demo`` (``--demo-out``): run it first.

    python benchmarks/side_by_side_training.py                       # the demo's recipes, 60 steps
    python benchmarks/side_by_side_training.py --steps 100 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPES = (PROJECT_ROOT / "configs" / "demo.yaml", PROJECT_ROOT / "configs" / "demo-det.yaml")


def training_command(
    recipe: Path, demo_out: Path, weights: Path, out: Path, *, steps: int, threads: int
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "student.train",
        "--config",
        str(recipe),
        "--shards",
        str(demo_out / "shards" / "train"),
        "--val-shards",
        str(demo_out / "shards" / "val"),
        "--backbone-weights",
        str(weights),
        "--max-steps",
        str(steps),
        "--threads",
        str(threads),
        "--no-evaluate",
        "--quiet",
        "--out",
        str(out),
    ]


def backbone_weights(demo_out: Path) -> Path | None:
    """The MobileNetV2 file make demo fetched (it initialises the students' backbone)."""
    found = sorted((demo_out / "weights").glob("*.pt"))
    return found[0] if found else None


def run_all(commands: Sequence[list[str]], *, together: bool) -> float:
    """Wall seconds for the commands, started together or one after the other."""
    started = time.perf_counter()
    if together:
        processes = [subprocess.Popen(command, cwd=PROJECT_ROOT) for command in commands]
        codes = [process.wait() for process in processes]
    else:
        codes = [subprocess.run(command, cwd=PROJECT_ROOT, check=False).returncode for command in commands]
    if any(codes):
        raise SystemExit(f"error: a training failed (exit statuses {codes}); its message is above")
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo-out", type=Path, default=Path("out/demo"), help="a finished demo's folder")
    parser.add_argument("--recipes", type=Path, nargs=2, default=DEFAULT_RECIPES, help="the two recipes")
    parser.add_argument(
        "--backbone-weights", type=Path, help="backbone weights (default: the one in DEMO_OUT/weights)"
    )
    parser.add_argument("--steps", type=int, default=60, help="steps per training (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default: %(default)s)")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads one training gets alone (default: cores)",
    )
    args = parser.parse_args(argv)
    if args.threads < 2:
        parser.error("--threads must be at least 2: side by side, each training gets half")
    for split in ("train", "val"):
        if not (args.demo_out / "shards" / split).is_dir():
            parser.error(f"no shards at {args.demo_out / 'shards' / split}: run make demo first")
    weights = args.backbone_weights or backbone_weights(args.demo_out)
    if weights is None or not weights.is_file():
        parser.error(f"no backbone weights in {args.demo_out / 'weights'}: run make demo first")
    times: dict[str, list[float]] = {"one after the other": [], "side by side": []}
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as scratch:
        for round_index in range(args.rounds):
            for layout, threads in (
                ("one after the other", args.threads),
                ("side by side", args.threads // 2),
            ):
                commands = [
                    training_command(
                        recipe,
                        args.demo_out,
                        weights,
                        Path(scratch) / f"{round_index}-{layout.replace(' ', '-')}-{index}",
                        steps=args.steps,
                        threads=threads,
                    )
                    for index, recipe in enumerate(args.recipes)
                ]
                seconds = run_all(commands, together=layout == "side by side")
                times[layout].append(seconds)
                print(
                    f"round {round_index + 1} {layout:>20}: {seconds:6.1f} s ({threads} threads each)",
                    flush=True,
                )
    sequential = statistics.median(times["one after the other"])
    together = statistics.median(times["side by side"])
    print(
        f"\nmedian wall time, two trainings of {args.steps} steps ({', '.join(r.name for r in args.recipes)}):"
    )
    print(f"  one after the other, {args.threads} threads each: {sequential:6.1f} s")
    print(f"  side by side, {args.threads // 2} thread(s) each:   {together:6.1f} s")
    print(f"  side by side / one after the other: {together / sequential:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
