"""Train the student detector (+ embedding head) on teacher-embedding shards.

    python -m student.train                                  # configs/pets09.yaml on out/shards-pets
    python -m student.train --config configs/pets09-det.yaml # its detection-only twin
    python -m student.train --resume out/train-pets09        # continue from the last checkpoint there
    python -m student.train --set model.embedding_dim=512 --out out/train-pets09-512  # one key changed
    torchrun --nproc-per-node 4 -m student.train --config configs/paper.yaml

Command-line options override the recipe (a YAML file in configs/, see
student/recipe.py for every key). Checkpoints (every run.checkpoint_every
steps and at the end), train_log.csv, TensorBoard scalars, the resolved
recipe (config.yaml) and, at the end, evaluation.json (AP@0.5 and
distillation fidelity on the validation selection) go to the output
directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.shards import ShardError
from tdt.config import ConfigError, apply_overrides
from tdt.process import configure_for_cli

from .backbones import BackboneWeightsError
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from .data import StudentDataError
from .engine import EVALUATION_NAME, TrainingDivergedError, train
from .recipe import (
    DEFAULT_CONFIG_PATH,
    MissingInputError,
    TrainConfig,
    load_train_config,
    resolve_config_path,
)
from .refit import RefitError
from .sources import ShardSource

EXIT_DIVERGED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m student.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Paths: relative paths in a recipe and on the command line are relative to the current\n"
            "directory, except a leading ${VAR:-fallback} whose fallback is used: that one is relative\n"
            "to the project root, so ${TDT_SHARED_DATA:-../shared/data} finds the shared data from anywhere.\n"
            "Exit status: 0 done; 1 the loss diverged; 2 a missing input or an invalid recipe or\n"
            "checkpoint (the message says what and how to fix it); 130 interrupted (resume with --resume)."
        ),
    )
    _add_recipe_options(parser.add_argument_group("recipe"))
    _add_data_options(parser.add_argument_group("data (override the recipe)"))
    _add_run_options(parser.add_argument_group("run (override the recipe)"))
    return parser


def _add_recipe_options(recipe: argparse._ArgumentGroup) -> None:
    recipe.add_argument(
        "--config",
        type=Path,
        help=f"training recipe YAML (default: {DEFAULT_CONFIG_PATH.relative_to(DEFAULT_CONFIG_PATH.parents[1])}, "
        "or with --resume the checkpoint's own recipe)",
    )
    recipe.add_argument(
        "--resume",
        type=Path,
        metavar="CHECKPOINT_OR_DIR",
        help="continue from a checkpoint (a .pt file, or a run directory: its last.pt); the recipe must match "
        "the checkpoint's apart from where/how it runs and --max-steps",
    )
    recipe.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one recipe key, VALUE read as YAML (repeatable), e.g. --set model.embedding_dim=512 "
        "--set model.embedding_head=per_anchor; applied before the options below",
    )
    recipe.add_argument(
        "--print-config", action="store_true", help="print the resolved recipe as YAML and exit"
    )


def _add_data_options(data: argparse._ArgumentGroup) -> None:
    data.add_argument(
        "--shards",
        nargs="+",
        metavar="DIR[:WEIGHT]",
        help="training shard directories, each with an optional mixing weight (share of draws); replaces the "
        "recipe's training sources and their frame / sequence selection",
    )
    data.add_argument("--val-shards", nargs="+", metavar="DIR", help="validation shard directories")
    data.add_argument(
        "--train-frames",
        nargs=2,
        type=int,
        metavar=("FIRST", "LAST"),
        help="inclusive frame range for training",
    )
    data.add_argument(
        "--val-frames",
        nargs=2,
        type=int,
        metavar=("FIRST", "LAST"),
        help="inclusive frame range for validation",
    )
    data.add_argument(
        "--dataset-root",
        metavar="DIR",
        help="image root for every shard source (default: recorded in the manifests)",
    )
    data.add_argument(
        "--workers", type=int, help="DataLoader worker processes (0: load in the training loop)"
    )


def _add_run_options(run: argparse._ArgumentGroup) -> None:
    run.add_argument("--out", type=Path, help="output directory (checkpoints, logs, evaluation)")
    run.add_argument("--max-steps", type=int, help="optimiser steps in all (the cosine schedule ends there)")
    run.add_argument("--backbone-weights", help="local ImageNet backbone weights file (.pt state dict)")
    run.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--seed", type=int, help="seed of initialisation, sampling and augmentation")
    run.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (0: all cores; on cores shared with other jobs 1 can be much faster)",
    )
    run.add_argument("--no-evaluate", action="store_true", help="skip the evaluation at the end")
    run.add_argument(
        "--no-verify",
        action="store_true",
        help="do not check the shards' sha256 against their manifests (run.verify_shards: false); "
        "their content is still checked",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_shard_argument(text: str) -> ShardSource:
    """``DIR`` or ``DIR:WEIGHT`` (the part after the last colon is a weight only if it is a number)."""
    directory, separator, weight_text = text.rpartition(":")
    try:
        weight = float(weight_text) if separator else 1.0
    except ValueError:
        directory, weight = text, 1.0
    return ShardSource(directory=str(resolve_config_path(directory or text)), weight=weight)


def _resolve_checkpoint(path: Path) -> Path:
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise MissingInputError(f"no checkpoint in {path} (expected last.pt or step_*.pt)")
        return found
    if not path.is_file():
        raise MissingInputError(f"checkpoint {path} not found")
    return path


def recipe_from_arguments(args: argparse.Namespace) -> tuple[TrainConfig, Path | None]:
    """The recipe after command-line overrides, and the checkpoint to resume from."""
    resume = _resolve_checkpoint(args.resume) if args.resume is not None else None
    if args.config is not None:
        config = load_train_config(args.config)
    elif resume is not None:
        config = TrainConfig.from_dict(load_checkpoint(resume).config)
    else:
        config = load_train_config(DEFAULT_CONFIG_PATH)
    if args.set:
        try:
            config = TrainConfig.from_dict(apply_overrides(config.to_dict(), args.set)).with_resolved_paths()
        except ConfigError as error:
            raise ConfigError(f"--set {' '.join(args.set)}: {error}") from error
    data, run, optim = config.data, config.run, config.optim
    if args.shards is not None:
        data = dataclasses.replace(data, train=tuple(parse_shard_argument(text) for text in args.shards))
    if args.val_shards is not None:
        data = dataclasses.replace(
            data,
            validation=tuple(
                ShardSource(directory=str(resolve_config_path(text))) for text in args.val_shards
            ),
        )
    if args.train_frames is not None:
        data = dataclasses.replace(
            data, train=tuple(dataclasses.replace(s, frames=tuple(args.train_frames)) for s in data.train)
        )
    if args.val_frames is not None:
        data = dataclasses.replace(
            data,
            validation=tuple(dataclasses.replace(s, frames=tuple(args.val_frames)) for s in data.validation),
        )
    if args.dataset_root is not None:
        root = str(resolve_config_path(args.dataset_root))
        data = dataclasses.replace(
            data,
            train=tuple(dataclasses.replace(s, dataset_root=root) for s in data.train),
            validation=tuple(dataclasses.replace(s, dataset_root=root) for s in data.validation),
        )
    if args.workers is not None:
        data = dataclasses.replace(data, loader_workers=args.workers)
    if args.max_steps is not None:
        optim = dataclasses.replace(optim, max_steps=args.max_steps)
    run_changes: dict[str, object] = {}
    if args.out is not None:
        run_changes["out_dir"] = str(resolve_config_path(str(args.out)))
    elif resume is not None:
        run_changes["out_dir"] = str(resume.resolve().parent)
    if args.backbone_weights is not None:
        run_changes["backbone_weights"] = str(resolve_config_path(args.backbone_weights))
    for name in ("device", "seed", "threads"):
        if getattr(args, name) is not None:
            run_changes[name] = getattr(args, name)
    if args.no_evaluate:
        run_changes["evaluate_at_end"] = False
    if args.no_verify:
        run_changes["verify_shards"] = False
    run = dataclasses.replace(run, **run_changes)
    return dataclasses.replace(config, data=data, run=run, optim=optim), resume


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_for_cli()
    out_dir = None
    try:
        config, resume = recipe_from_arguments(args)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
            return 0
        out_dir = Path(config.run.out_dir)
        outcome = train(config, resume=resume, progress=not args.quiet)
        if not outcome.is_main_process:
            return 0
        print(
            f"trained steps {outcome.start_step + 1}-{outcome.final_step} "
            f"({outcome.seconds_per_step:.2f} s/step, {outcome.precision}); "
            f"last checkpoint {outcome.last_checkpoint}"
        )
        if outcome.refit is not None:
            print(outcome.refit.summary())
        if outcome.evaluation is not None:
            print(outcome.evaluation.summary())
            print(f"evaluation written to {outcome.out_dir / EVALUATION_NAME}")
    except (
        MissingInputError,
        ConfigError,
        CheckpointError,
        StudentDataError,
        ShardError,
        BackboneWeightsError,
        RefitError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDivergedError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        where = f" --resume {out_dir}" if out_dir is not None else ""
        print(
            f"\ninterrupted; continue from the last checkpoint with python -m student.train{where}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
