"""What AdaMOT's one-to-k assignment picks for a trained CenterNet checkpoint on shard frames.

    python -m student.centernet.assignment_report --checkpoint out/train-pets09-centernet/last.pt \\
        --shards out/shards-pets --frames 301 397 --images 40

The checkpoint's network runs in eval mode on validation-letterboxed frames and its
loss (the recipe's, with ``assignment: adamot``) assigns positives as training would
(:meth:`student.centernet.CenterNetCriterion.positives`). Printed: positives per
object and how many objects got each count, how often the identity-aware term
changed an object's positives against the same matching without it, and the mean
re-ID probability of the object's identity at its positives. The re-ID probability
is the recipe's: the identity classifier for a CE checkpoint, the teacher softmax
(``--temperature``) for an L2 one. A CE classifier only knows the identities of
the shards it was trained on, so a CE checkpoint is refused on other datasets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from pipeline.shards import ShardError
from tdt.config import ConfigError
from tdt.process import configure_for_cli

from ..api import load_student
from ..checkpoint import CheckpointError, TrainingCheckpoint
from ..data import DatasetOptions, StudentDataError, StudentDataset, collate
from ..families import build_criterion
from ..recipe import MissingInputError, TrainConfig, resolve_config_path
from ..selection import select_images
from ..sources import ShardSource
from .assignment import AssignmentStatistics
from .losses import CenterNetCriterion

LOSS_TARGET_KEYS = ("boxes", "ignore", "identities", "embeddings")


@dataclasses.dataclass(frozen=True)
class AssignmentReport:
    images: int
    statistics: AssignmentStatistics
    settings: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        stats = self.statistics
        return {
            "images": self.images,
            "objects": stats.objects,
            "positives": stats.positives,
            "positives_per_object": stats.positives_per_object,
            "objects_by_positive_count": dict(enumerate(stats.positives_histogram)),
            "identity_objects": stats.identity_objects,
            "identity_changed_objects": stats.identity_changed_objects,
            "identity_changed_object_fraction": stats.changed_object_fraction,
            "identity_changed_positive_fraction": stats.changed_positive_fraction,
            "mean_reid_probability": stats.mean_reid_probability,
            "settings": self.settings,
        }

    def summary(self) -> str:
        stats = self.statistics
        counts = ", ".join(
            f"{n}: {objects}" for n, objects in enumerate(stats.positives_histogram) if objects
        )
        return "\n".join(
            [
                f"{self.images} images, {stats.objects} objects, {stats.positives} positives "
                f"(k = {self.settings['positives_per_object']}, re-ID probability: {self.settings['reid_source']})",
                f"positives per object: {stats.positives_per_object:.3f} (objects by count {{{counts}}})",
                f"identity term changed the positives of {stats.identity_changed_objects} of "
                f"{stats.identity_objects} objects ({100 * stats.changed_object_fraction:.1f}%), "
                f"{100 * stats.changed_positive_fraction:.1f}% of their positives",
                f"mean re-ID probability of the object's identity at its positives: "
                f"{stats.mean_reid_probability:.3f}",
            ]
        )


def measure_assignment(
    checkpoint_path: str | Path,
    sources: Sequence[ShardSource] | None = None,
    *,
    positives_per_object: int | None = None,
    temperature: float | None = None,
    images: int | None = None,
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    verify_shards: bool = True,
) -> AssignmentReport:
    """Assignment statistics of a CenterNet checkpoint on ``sources`` (default: its validation
    sources); ``images`` evenly spaced frames of the selection (default: all)."""
    model, checkpoint = load_student(checkpoint_path, device=device)
    if model.config.family != "centernet":
        raise ConfigError(
            f"{checkpoint_path}: the one-to-k assignment is CenterNet's, not {model.config.family!r}"
        )
    recipe = TrainConfig.from_dict(checkpoint.config)
    changes: dict[str, Any] = {"assignment": "adamot"}
    if positives_per_object is not None:
        changes["positives_per_object"] = positives_per_object
    if temperature is not None:
        changes["reid_probability_temperature"] = temperature
    loss_config = dataclasses.replace(recipe.loss, **changes)
    criterion = _criterion(checkpoint, loss_config, model.config, device)
    sources = list(sources) if sources is not None else list(recipe.data.validation)
    if not sources:
        raise ConfigError(f"{checkpoint_path}: its recipe names no validation shards; pass --shards")
    for source in sources:
        if not Path(source.directory).is_dir():
            raise MissingInputError(f"shard directory {source.directory} not found")
    options = DatasetOptions(
        input_size=model.config.input_size, mode="validation", verify_checksums=verify_shards
    )
    dataset = StudentDataset(sources, options)
    _check_same_reid_space(checkpoint, dataset, criterion)
    selected = select_images(dataset, sources)[0].all_indices()
    if images is not None and images < len(selected):
        selected = selected[np.linspace(0, len(selected) - 1, images).round().astype(int)]
    statistics = AssignmentStatistics()
    loader = DataLoader(Subset(dataset, selected.tolist()), batch_size=batch_size, collate_fn=collate)
    with torch.no_grad():
        for batch, targets in loader:
            outputs = model(batch.to(device))
            checked = [
                criterion.checked_target({key: target[key] for key in LOSS_TARGET_KEYS}, batch.device)
                for target in targets
            ]
            counted = criterion.positives(outputs, checked).statistics
            if counted is not None:
                statistics = statistics + counted
    settings = {
        "checkpoint": str(Path(checkpoint_path).resolve()),
        "step": checkpoint.step,
        "positives_per_object": loss_config.positives_per_object,
        "reid_source": _reid_source(criterion, loss_config.reid_probability_temperature),
        "sources": [{"directory": s.directory, "selection": s.describe_selection()} for s in sources],
    }
    return AssignmentReport(images=len(selected), statistics=statistics, settings=settings)


def _criterion(checkpoint: TrainingCheckpoint, loss_config, model_config, device) -> CenterNetCriterion:
    state = checkpoint.criterion_state or {}
    classifier = state.get("identity_classifier.weight")
    num_identities = int(classifier.shape[0]) if classifier is not None else 0
    criterion = build_criterion(loss_config, model_config, num_identities)
    criterion.load_state_dict(state)
    return criterion.to(device).eval()


def _check_same_reid_space(
    checkpoint: TrainingCheckpoint, dataset: StudentDataset, criterion: CenterNetCriterion
) -> None:
    if criterion.uses_l2 and dataset.teacher_id != checkpoint.teacher_id:
        raise CheckpointError(
            f"trained against teacher {checkpoint.teacher_id!r}, the shards hold embeddings of "
            f"{dataset.teacher_id!r}: the teacher softmax would compare different spaces"
        )
    if criterion.uses_identity_ce:
        trained = {(s.get("dataset_fingerprint"), s.get("identity_offset")) for s in checkpoint.shard_sources}
        for summary in dataset.source_summaries():
            if (summary.dataset_fingerprint, summary.identity_offset) not in trained:
                raise CheckpointError(
                    f"{summary.directory}: not the identities the checkpoint's classifier was trained on "
                    f"(dataset {summary.dataset_name!r}); a CE checkpoint is measured on its own shards only"
                )


def _reid_source(criterion: CenterNetCriterion, temperature: float) -> str:
    parts = []
    if criterion.uses_identity_ce:
        parts.append("identity classifier")
    if criterion.uses_l2:
        parts.append(f"teacher softmax, T = {temperature:g}")
    return " / ".join(parts) or "none (detection only)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m student.centernet.assignment_report",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="a CenterNet checkpoint")
    parser.add_argument(
        "--shards", nargs="+", metavar="DIR", help="shard directories (default: its validation)"
    )
    parser.add_argument(
        "--frames", nargs=2, type=int, metavar=("FIRST", "LAST"), help="inclusive frame range"
    )
    parser.add_argument("--images", type=int, help="evenly spaced images of the selection (default: all)")
    parser.add_argument("--positives", type=int, help="k, positives per object (default: the recipe's)")
    parser.add_argument(
        "--temperature", type=float, help="teacher softmax temperature (default: the recipe's)"
    )
    parser.add_argument("--batch-size", type=int, default=2, help="images per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_for_cli(torch_threads=args.threads)
    sources = None
    if args.shards is not None:
        frames = tuple(args.frames) if args.frames is not None else None
        sources = [ShardSource(str(resolve_config_path(d)), frames=frames) for d in args.shards]
    elif args.frames is not None:
        print("error: --frames needs --shards", file=sys.stderr)
        return 2
    try:
        report = measure_assignment(
            args.checkpoint,
            sources,
            positives_per_object=args.positives,
            temperature=args.temperature,
            images=args.images,
            batch_size=args.batch_size,
            device=args.device,
        )
    except (CheckpointError, ConfigError, StudentDataError, ShardError, MissingInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    if args.json is not None:
        args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
