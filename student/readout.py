"""Give a trained L2 CenterNet student a box readout solved by least squares, as a new checkpoint.

    python -m student.readout --checkpoint out/train-pets09-centernet/last.pt \\
        --out out/train-pets09-centernet/box-readout.pt
    python -m student.evaluate --checkpoint out/train-pets09-centernet/box-readout.pt

Training with ``model.embedding_pooling: box`` and ``optim.embedding_refit_ridge`` solves the
readout after the last step; SGD never trains it. So solving it afterwards, for a student
trained without it, gives the same readout that training with the option would have: this
command does that on the checkpoint's own training selection (its recipe's ``data.train``,
frames and sequences filters included), letterboxed as inference sees it. Only the readout
is new; every trained weight is kept, so detection is unchanged. The new checkpoint's recipe
records the two options, and it resumes or evaluates like any other.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Subset

from pipeline.shards import ShardError
from tdt.config import ConfigError
from tdt.process import configure_for_cli

from .checkpoint import CheckpointError, TrainingCheckpoint, load_checkpoint, save_checkpoint
from .data import DatasetOptions, StudentDataError, StudentDataset
from .families import build_student
from .recipe import MissingInputError, TrainConfig
from .refit import RefitError, RefitReport, refit_embedding_head
from .selection import select_images

DEFAULT_RIDGE = 0.03  # the demo recipe's, chosen there on held-out images (README)
DEFAULT_NECK_MAPS = 3  # the demo recipe's model.box_readout_neck_maps, chosen the same way
READOUT_PREFIX = "box_readout."


def add_box_readout(
    source: str | Path,
    out: str | Path,
    *,
    ridge: float = DEFAULT_RIDGE,
    neck_maps: int = DEFAULT_NECK_MAPS,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    verify_shards: bool = True,
    progress: bool = False,
) -> RefitReport:
    """Write to ``out`` the checkpoint ``source`` with a box readout solved on its training
    images, pooling ``neck_maps`` of the neck's maps (``model.box_readout_neck_maps``); ``out``
    must not exist yet. A readout the checkpoint already holds is replaced, whatever maps it read."""
    source, out = Path(source), Path(out)
    if out.exists():
        raise CheckpointError(f"{out} already exists: choose another --out (nothing was overwritten)")
    checkpoint = load_checkpoint(source)
    if not checkpoint.config:
        raise CheckpointError(f"{source}: holds no training recipe, so its training images are unknown")
    recipe = TrainConfig.from_dict(checkpoint.config)
    try:
        config = dataclasses.replace(
            recipe,
            model=dataclasses.replace(recipe.model, embedding_pooling="box", box_readout_neck_maps=neck_maps),
            optim=dataclasses.replace(recipe.optim, embedding_refit_ridge=ridge),
        )
    except ConfigError as error:
        raise ConfigError(f"{source}: cannot take a box readout: {error}") from error
    model = build_student(config.model, warn_if_random_backbone=False)
    # an earlier readout may have read other maps (another shape): it is solved again anyway
    trained = {
        key: value for key, value in checkpoint.model_state.items() if not key.startswith(READOUT_PREFIX)
    }
    missing, unexpected = model.load_state_dict(trained, strict=False)
    foreign = [key for key in missing if not key.startswith(READOUT_PREFIX)] + list(unexpected)
    if foreign:
        raise CheckpointError(f"{source}: its weights do not fit its own recipe's model: {foreign[:5]}")
    dataset = _training_images(config, checkpoint, source, verify_shards)
    model.to(device)
    report = refit_embedding_head(
        model, dataset, ridge, device=torch.device(device), batch_size=batch_size, progress=progress
    )
    state = {key: tensor.detach().cpu() for key, tensor in model.state_dict().items()}
    save_checkpoint(
        out,
        dataclasses.replace(
            checkpoint, model_state=state, model_config=config.model.to_dict(), config=config.to_dict()
        ),
    )
    return report


def _training_images(
    config: TrainConfig, checkpoint: TrainingCheckpoint, source: Path, verify_shards: bool
) -> Subset:
    for shard_source in config.data.train:
        if not Path(shard_source.directory).is_dir():
            raise MissingInputError(
                f"{source}: its training shards {shard_source.directory} are not here; the readout is "
                "solved on them"
            )
    options = DatasetOptions(
        input_size=config.model.input_size, mode="validation", verify_checksums=verify_shards
    )
    dataset = StudentDataset(list(config.data.train), options)
    if dataset.teacher_id != checkpoint.teacher_id:
        raise CheckpointError(
            f"{source}: trained against teacher {checkpoint.teacher_id!r}, its training shards now hold "
            f"embeddings of {dataset.teacher_id!r}"
        )
    selection, _ = select_images(dataset, config.data.train)
    return Subset(dataset, selection.all_indices().tolist())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m student.readout",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Needs a CenterNet student with an embedding head trained with embedding_loss l2, and its "
            "training shards where its recipe names them. The summary line gives the readout's L2 "
            "to the teacher on those images before (its untrained initialisation) and after."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="a checkpoint written by student.train"
    )
    parser.add_argument("--out", required=True, type=Path, help="the new checkpoint (must not exist)")
    parser.add_argument(
        "--ridge",
        type=float,
        default=DEFAULT_RIDGE,
        help="ridge penalty per object on standardised inputs (optim.embedding_refit_ridge)",
    )
    parser.add_argument(
        "--neck-maps",
        type=int,
        choices=(1, 2, 3),
        default=DEFAULT_NECK_MAPS,
        help="how many of the neck's maps the readout pools (model.box_readout_neck_maps): 1 the "
        "stride-4 map, 2 also stride 8, 3 also stride 16",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="do not check the shards' sha256 against their manifests (their content is still checked)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_for_cli(torch_threads=args.threads)
    try:
        report = add_box_readout(
            args.checkpoint,
            args.out,
            ridge=args.ridge,
            neck_maps=args.neck_maps,
            device=args.device,
            batch_size=args.batch_size,
            verify_shards=not args.no_verify,
            progress=not args.quiet,
        )
    except (
        CheckpointError,
        ConfigError,
        StudentDataError,
        ShardError,
        MissingInputError,
        RefitError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"checkpoint with the box readout written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
