"""``python -m demo.seeds``: the demo's comparison again at other training seeds, and its spread.

One demo run trains each student once, so its one-stage vs two-stage difference mixes what
the method does with the luck of one seed. This trains the finished demo's two recipes again
(each run's own config.yaml: the same data, steps and precision) at every --seeds
value, side by side as the demo trains them, compares one-stage against two-stage on the
demo's sequences (without the oracle rows, which no training seed changes), and reports
every seed with the mean, spread and range of each difference. The demo's own run is the
seed its recipe names. Finished trainings and comparisons are reused, as in the demo.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from demo.plan import (
    SYNTHETIC_TEACHER,
    Artefacts,
    DemoOptions,
    Step,
    comparison_stage,
    paired_trainings,
    synthetic_sequences,
    total_threads,
    training_stage,
)
from demo.stages import EXIT_FAILED, Stage, StageLog, run_chain
from demo.summary import OVERALL, student_ap
from tdt.process import configure_for_cli

EXIT_USAGE = 2
REPORT_NAME = "seeds.md"
RESULTS_NAME = "seeds.json"
# Differences reported as one-stage minus two-stage, in points (x100) except the switches.
DIFFERENCES = (("hota", "HOTA"), ("mota", "MOTA"), ("idf1", "IDF1"))


@dataclass(frozen=True)
class SeedOptions:
    demo_out: Path
    seeds: tuple[int, ...]
    out: Path
    threads: int = 0
    teacher_weights: Path | None = None


@dataclass(frozen=True)
class SeedRun:
    """Where one seed's two trainings and comparison are (the demo's own folders for its seed)."""

    seed: int
    paths: Artefacts


@dataclass(frozen=True)
class SeedResult:
    seed: int
    one_stage_ap: float
    twin_ap: float
    one_stage: dict  # the OVERALL scores of results.json
    two_stage: dict

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def demo_seed(demo: Artefacts) -> int:
    """The training seed the demo's student was trained with (its run's config.yaml)."""
    from student.recipe import RECIPE_NAME, load_train_config

    return load_train_config(demo.one_stage_run / RECIPE_NAME).run.seed


def check_finished_demo(demo: Artefacts, teacher_weights: Path) -> None:
    """ValueError naming what is missing unless ``demo`` is a finished synthetic demo."""
    from student.recipe import RECIPE_NAME

    needed = [
        demo.one_stage_run / RECIPE_NAME,
        demo.detection_run / RECIPE_NAME,
        demo.one_stage_run / "evaluation.json",
        demo.detection_run / "evaluation.json",
        demo.comparison / "results.json",
        teacher_weights,
    ]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        raise ValueError(
            f"{demo.out} is not a finished demo (run make demo first, or pass its --out): "
            f"missing {', '.join(missing)}"
        )
    if not synthetic_sequences(demo.world):
        raise ValueError(
            f"{demo.world} holds no synthetic sequences: demo.seeds runs on the synthetic demo only"
        )


# What a seed's run may change from the demo's: the seed itself, where it went, its threads.
PER_RUN_KEYS = ("run.seed", "run.out_dir", "run.threads")


def check_seed_recipes(options: SeedOptions) -> None:
    """ValueError if a seed's existing run was trained with another recipe than the demo's run
    (e.g. the demo was retrained since): reusing it would mix two recipes in one report."""
    from student.checkpoint import config_differences
    from student.recipe import RECIPE_NAME, load_train_config

    demo = Artefacts(options.demo_out)
    for run in seed_runs(options):
        for demo_run, seed_run in (
            (demo.one_stage_run, run.paths.one_stage_run),
            (demo.detection_run, run.paths.detection_run),
        ):
            if seed_run == demo_run or not (seed_run / RECIPE_NAME).is_file():
                continue
            differences = config_differences(
                _flat(load_train_config(seed_run / RECIPE_NAME).to_dict()),
                _flat(load_train_config(demo_run / RECIPE_NAME).to_dict()),
                ignore_keys=PER_RUN_KEYS,
            )
            if differences:
                raise ValueError(
                    f"{seed_run} was trained with another recipe than the demo's {demo_run} "
                    f"({'; '.join(differences)}): remove it or pass another --out"
                )


def _flat(recipe: dict) -> dict:
    """``{"section.key": value}`` of a recipe's sections."""
    return {f"{section}.{key}": value for section, values in recipe.items() for key, value in values.items()}


def seed_runs(options: SeedOptions) -> list[SeedRun]:
    demo = Artefacts(options.demo_out)
    own = demo_seed(demo)
    return [
        SeedRun(seed, demo if seed == own else Artefacts(options.out / f"seed-{seed}"))
        for seed in dict.fromkeys((own, *options.seeds))
    ]


def plan_seeds(options: SeedOptions, teacher_weights: Path) -> Iterator[Step]:
    """For every seed but the demo's own: both trainings (side by side), then the comparison."""
    demo = Artefacts(options.demo_out)
    teacher = ("--teacher", SYNTHETIC_TEACHER, "--teacher-weights", teacher_weights)
    sequences = synthetic_sequences(demo.world)
    threads = total_threads(DemoOptions(threads=options.threads))
    for run in seed_runs(options):
        if run.paths == demo:
            continue
        yield from paired_trainings(
            lambda threads_each, run=run: _trainings(options, run, threads_each),
            threads,
            log_dir=run.paths.out / "logs",
        )
        comparison = comparison_stage(
            DemoOptions(threads=options.threads), run.paths, sequences, teacher, frames=None, oracle=False
        )
        yield dataclasses.replace(comparison, name=f"seed {run.seed}: {comparison.name}")


def _trainings(options: SeedOptions, run: SeedRun, threads: int) -> tuple[Stage, ...]:
    """The demo's two trainings at ``run.seed``, each from its run's own recipe file."""
    from student.recipe import RECIPE_NAME

    demo = Artefacts(options.demo_out)
    pairs = (
        ("train the one-stage student", demo.one_stage_run, run.paths.one_stage_run),
        ("train its detection-only twin", demo.detection_run, run.paths.detection_run),
    )
    return tuple(
        training_stage(
            DemoOptions(threads=options.threads),
            f"seed {run.seed}: {label}",
            source / RECIPE_NAME,
            target,
            (),
            threads=threads,
            seed=run.seed,
        )
        for label, source, target in pairs
    )


def read_result(run: SeedRun) -> SeedResult:
    results = json.loads((run.paths.comparison / "results.json").read_text())
    rows = {tracker["key"]: tracker["results"][OVERALL] for tracker in results["trackers"]}
    one_stage_ap, twin_ap = student_ap(run.paths.one_stage_run), student_ap(run.paths.detection_run)
    if one_stage_ap is None or twin_ap is None:
        raise ValueError(f"seed {run.seed}: a training under {run.paths.out} has no evaluation.json")
    return SeedResult(run.seed, one_stage_ap, twin_ap, rows["one-stage"], rows["two-stage"])


@dataclass(frozen=True)
class Spread:
    mean: float
    stdev: float | None  # None for one seed
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        stdev = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), stdev, min(values), max(values))

    def shown(self, digits: int, signed: bool = False) -> str:
        sign = "+" if signed else ""
        spread = "" if self.stdev is None else f" ± {self.stdev:.{digits}f}"
        return f"{self.mean:{sign}.{digits}f}{spread} [{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]"


def spreads(results: Sequence[SeedResult]) -> dict[str, Spread]:
    """Mean, sample standard deviation and range over the seeds of every reported quantity."""
    series: dict[str, list[float]] = {
        "one-stage AP@0.5": [result.one_stage_ap for result in results],
        "twin AP@0.5": [result.twin_ap for result in results],
    }
    for key, name in DIFFERENCES:
        series[f"{name} difference"] = [100 * (r.one_stage[key] - r.two_stage[key]) for r in results]
    series["ID switch difference"] = [
        float(r.one_stage["id_switches"] - r.two_stage["id_switches"]) for r in results
    ]
    series["FPS ratio"] = [r.one_stage["fps"] / r.two_stage["fps"] for r in results]
    return {name: Spread.of(values) for name, values in series.items()}


def report(results: Sequence[SeedResult]) -> str:
    lines = [
        "# The demo's comparison at several training seeds",
        "",
        "Same SYNTHETIC world, shards and recipes; only `run.seed` differs. AP@0.5 on the held-out "
        "synthetic images; HOTA, MOTA and IDF1 in % on the demo's sequences, one-stage / two-stage.",
        "",
        "| seed | AP one-stage | AP twin | HOTA | MOTA | IDF1 | ID switches | FPS ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        one, two = result.one_stage, result.two_stage
        pairs = " | ".join(f"{100 * one[key]:.1f} / {100 * two[key]:.1f}" for key, _ in DIFFERENCES)
        lines.append(
            f"| {result.seed} | {result.one_stage_ap:.3f} | {result.twin_ap:.3f} | {pairs} | "
            f"{one['id_switches']} / {two['id_switches']} | {one['fps'] / two['fps']:.2f} |"
        )
    lines += [
        "",
        f"Over {len(results)} seeds, mean ± sample standard deviation [lowest, highest]; "
        "differences are one-stage − two-stage (HOTA, MOTA, IDF1 in points):",
        "",
    ]
    for name, spread in spreads(results).items():
        if name.endswith("AP@0.5"):
            lines.append(f"- {name}: {spread.shown(3)}")
        elif name.endswith("difference"):
            lines.append(f"- {name}: {spread.shown(1, signed=True)}")
        else:
            lines.append(f"- {name}: {spread.shown(2)}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo.seeds",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--demo-out",
        type=Path,
        default=Path("out/demo"),
        help="a finished demo's folder (default: %(default)s)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[1, 2],
        help="training seeds besides the demo's own (default: 1 2; each costs about as long as the "
        "demo's trainings and comparison, ~11 minutes on two cores)",
    )
    parser.add_argument("--out", type=Path, help="where the other seeds go (default: DEMO_OUT/seeds)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (default: 0, one per core); with 2 or more the two trainings run side by side",
    )
    parser.add_argument(
        "--teacher-weights",
        type=Path,
        help="the teacher file the demo used (default: the one it fetched into DEMO_OUT/weights)",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> SeedOptions:
    if any(seed < 0 for seed in args.seeds):
        raise ValueError("--seeds must be non-negative")
    return SeedOptions(
        demo_out=args.demo_out,
        seeds=tuple(args.seeds),
        out=args.out or args.demo_out / "seeds",
        threads=args.threads,
        teacher_weights=args.teacher_weights,
    )


def teacher_weights_of(options: SeedOptions) -> Path:
    from teacher.fetch_weights import MOBILENET_WEIGHTS_FILE

    return options.teacher_weights or Artefacts(options.demo_out).weights_dir / MOBILENET_WEIGHTS_FILE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_for_cli()
    try:
        options = options_from_args(args)
        weights = teacher_weights_of(options)
        check_finished_demo(Artefacts(options.demo_out), weights)
        check_seed_recipes(options)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    log = StageLog()
    started = time.perf_counter()
    status = run_chain(plan_seeds(options, weights), log)
    if status != 0:
        return status
    try:
        results = [read_result(run) for run in seed_runs(options)]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    text = report(results)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / REPORT_NAME).write_text(text)
    payload = {
        "seeds": [result.as_dict() for result in results],
        "spreads": {name: dataclasses.asdict(spread) for name, spread in spreads(results).items()},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    (options.out / RESULTS_NAME).write_text(json.dumps(payload, indent=2) + "\n")
    print("\n" + text)
    print(f"wrote {options.out / REPORT_NAME} and {options.out / RESULTS_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
