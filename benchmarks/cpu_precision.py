"""Training step time on the CPU in float32 against bfloat16 autocast (``run.cpu_precision``).

Each training is a fresh ``python -m student.train`` process on a finished demo's shards
(``--demo-out``) with ``--max-steps STEPS``, ``--threads T`` (default 1, as ``make demo``
trains) and no final evaluation; the recipe (default: the demo's student) is the same
except for ``--set run.cpu_precision=…``. The two precisions alternate for ``--rounds``
rounds; the trainer's own seconds per step (its closing line, start-up excluded) is
compared by median, with the ratio (below 1: bfloat16 is faster). The times come from
the real recipe, data and initial weights, so the targets the losses see are real; the
benchmark says nothing about accuracy, which the README measures with whole trainings.

Refused on a CPU without native bfloat16 (the trainer says so), where it would only
measure emulation.

    python benchmarks/cpu_precision.py                        # the demo's student, 40 steps
    python benchmarks/cpu_precision.py --recipe configs/demo-det.yaml --steps 60 --rounds 3
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.side_by_side_training import (  # noqa: E402
    DEFAULT_RECIPES,
    PROJECT_ROOT,
    backbone_weights,
    training_command,
)

PRECISIONS = ("float32", "bfloat16")
STEP_TIME = re.compile(r"trained steps \d+-\d+ \(([0-9.]+) s/step, ([a-z0-9 ]+)\)")


def seconds_per_step(command: list[str]) -> tuple[float, str]:
    """Run one training; its reported seconds per step and precision."""
    finished = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise SystemExit(f"error: a training failed (exit status {finished.returncode}):\n{finished.stderr}")
    found = STEP_TIME.search(finished.stdout)
    if found is None:
        raise SystemExit(f"error: no 'trained steps' line in the training's output:\n{finished.stdout}")
    return float(found.group(1)), found.group(2)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark that times short demo trainings: where, which recipe, how long."""
    parser.add_argument("--demo-out", type=Path, default=Path("out/demo"), help="a finished demo's folder")
    parser.add_argument(
        "--recipe", type=Path, default=DEFAULT_RECIPES[0], help="the recipe (default: demo.yaml)"
    )
    parser.add_argument("--steps", type=int, default=40, help="steps per training (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")


def demo_inputs(parser: argparse.ArgumentParser, demo_out: Path, weights: Path | None = None) -> Path:
    """The backbone weights of a finished demo (or ``weights``), after checking its shards exist."""
    for split in ("train", "val"):
        if not (demo_out / "shards" / split).is_dir():
            parser.error(f"no shards at {demo_out / 'shards' / split}: run make demo first")
    weights = weights or backbone_weights(demo_out)
    if weights is None or not weights.is_file():
        parser.error(f"no backbone weights in {demo_out / 'weights'}: run make demo first")
    return weights


def median_step_times(
    args: argparse.Namespace, weights: Path, variants: Mapping[str, list[str]], *, scratch_prefix: str
) -> dict[str, float]:
    """Train every variant (extra trainer arguments) once per round, in turn, printing each
    time; the median seconds per step of each. ``args`` carries ``add_training_arguments``."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    width = max(len(name) for name in variants)
    with tempfile.TemporaryDirectory(prefix=scratch_prefix) as scratch:
        for round_index in range(args.rounds):
            for index, (name, extra) in enumerate(variants.items()):
                out = Path(scratch) / f"{round_index}-{index}"
                command = training_command(
                    args.recipe, args.demo_out, weights, out, steps=args.steps, threads=args.threads
                )
                seconds, used = seconds_per_step(command + extra)
                times[name].append(seconds)
                print(f"round {round_index + 1} {name:>{width}}: {seconds:.3f} s/step ({used})", flush=True)
    return {name: statistics.median(values) for name, values in times.items()}


def print_medians(args: argparse.Namespace, medians: Mapping[str, float], ratio: str) -> None:
    """The medians under their names, then the last over the first as ``ratio``."""
    print(f"\nmedian s/step, {args.recipe.name}, {args.steps} steps, {args.threads} thread(s):")
    width = max(len(name) for name in medians) + 1
    for name, seconds in medians.items():
        print(f"  {name + ':':<{width}} {seconds:.3f}")
    first, *_, last = medians.values()
    print(f"  {ratio}: {last / first:.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_training_arguments(parser)
    parser.add_argument(
        "--backbone-weights", type=Path, help="backbone weights (default: the one in DEMO_OUT/weights)"
    )
    args = parser.parse_args(argv)
    weights = demo_inputs(parser, args.demo_out, args.backbone_weights)
    variants = {precision: ["--set", f"run.cpu_precision={precision}"] for precision in PRECISIONS}
    medians = median_step_times(args, weights, variants, scratch_prefix="cpu-precision-")
    print_medians(args, medians, "bfloat16 / float32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
