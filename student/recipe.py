"""The training recipe (:class:`TrainConfig`): YAML -> typed, frozen sections, paths and resume rules.

A recipe is a YAML file (``configs/*.yaml``) with the sections ``model``
(:class:`student.config.ModelConfig`), ``loss`` (:class:`student.config.LossConfig`),
``augment`` (:class:`student.augment.AugmentConfig`), ``data``, ``optim`` and
``run``. Loading is :mod:`tdt.config`'s: an unknown key anywhere, a value of the
wrong type or a key given twice is an error naming where it is.

Paths in a recipe (shard directories, dataset roots, backbone weights, output
directory) may use ``${VAR}`` and ``${VAR:-fallback}``; they follow
:func:`tdt.config.expand_path` with the project root as the fallback base: a
relative path is relative to the directory the command runs in, like the paths
of the README's ``pipeline.distill --out out/shards-pets``; only a relative
*fallback* that leads a path (``${TDT_SHARED_DATA:-../shared/data}/...``) is
relative to the project root, as in the dataset manifests, so the shared data is
found from any working directory. Paths are resolved when a recipe is loaded,
so a checkpoint records absolute paths.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self, get_args

from pipeline.shards import MANIFEST_NAME
from tdt.config import ConfigError, PlainConfig, expand_path, load_yaml

from .augment import AugmentConfig
from .checkpoint import config_differences
from .config import INFERENCE_SETTINGS, LossConfig, ModelConfig, check_loss_fits_model
from .schedule import CosineWarmup
from .sources import ShardSource

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = PROJECT_ROOT / "configs"
DEFAULT_CONFIG_PATH = CONFIGS_DIR / "pets09.yaml"
RECIPE_NAME = "config.yaml"
OptimizerName = Literal["sgd", "adamw"]
CpuPrecision = Literal["float32", "bfloat16", "auto"]


class MissingInputError(FileNotFoundError):
    """A file or directory the recipe needs does not exist; the message says how to make it."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training and validation shard sources; ``loader_workers`` DataLoader processes (0: in the loop)."""

    train: tuple[ShardSource, ...]
    validation: tuple[ShardSource, ...] = ()
    loader_workers: int = 0

    def __post_init__(self) -> None:
        if not self.train:
            raise ConfigError("data.train needs at least one shard source")
        if self.loader_workers < 0:
            raise ConfigError("data.loader_workers must be >= 0")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule, counted in optimiser steps.

    ``batch_size`` is per process (under torchrun the global batch is
    ``batch_size x WORLD_SIZE``). Weight decay applies to weights of rank >= 2
    only (no decay on biases and normalisation parameters). The warm-up is
    capped at ``max_steps``.

    ``embedding_refit_ridge`` (null: off) solves, after the last step, the layer
    that outputs the detections' embeddings (the box readout with
    ``model.embedding_pooling: box``, otherwise the embedding head's output conv)
    by ridge regression to the teacher over the training images
    (:mod:`student.refit`), with this penalty per object on the standardised
    inputs: the exact minimiser of the L2 loss for that layer. CenterNet with
    ``embedding_loss: l2`` only.
    """

    optimizer: OptimizerName = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    adamw_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    warmup_start_factor: float = 0.001
    final_lr_factor: float = 0.01
    grad_clip_norm: float | None = 10.0
    batch_size: int = 2
    max_steps: int = 1000
    embedding_refit_ridge: float | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in get_args(OptimizerName):
            raise ConfigError(f"optim.optimizer must be one of {get_args(OptimizerName)}")
        if not self.learning_rate > 0:
            raise ConfigError("optim.learning_rate must be positive")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ConfigError("optim.weight_decay must be >= 0 and optim.momentum within [0, 1)")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ConfigError("optim.grad_clip_norm must be positive or null (no clipping)")
        if self.batch_size < 1 or self.max_steps < 1 or self.warmup_steps < 0:
            raise ConfigError("optim.batch_size and optim.max_steps must be >= 1, warmup_steps >= 0")
        ridge = self.embedding_refit_ridge
        if ridge is not None and not (math.isfinite(ridge) and ridge > 0):
            raise ConfigError("optim.embedding_refit_ridge must be a positive number or null (no refit)")

    def schedule(self) -> CosineWarmup:
        """The learning-rate multiplier per step (``LambdaLR`` of it is the scheduler)."""
        return CosineWarmup(
            total_steps=self.max_steps,
            warmup_steps=min(self.warmup_steps, self.max_steps),
            warmup_start_factor=self.warmup_start_factor,
            final_factor=self.final_lr_factor,
        )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where and how a run executes; what is learned depends on it only through ``seed`` and
    the arithmetic (``amp``, ``cpu_precision``).

    ``device`` "auto" is CUDA when available. ``amp`` (float16 autocast) only
    takes effect on CUDA. ``cpu_precision`` ``bfloat16`` trains on the CPU under
    bfloat16 autocast: convolutions run in bfloat16; the losses, the weights and the
    optimiser stay float32. It needs native bfloat16 arithmetic (AVX512-BF16 or AMX)
    and is refused elsewhere, where it would be emulated and slower than float32;
    ``auto`` takes bfloat16 where it is native and float32 otherwise. Like ``amp`` it
    changes the numbers a run computes, not the recipe; evaluation, the embedding
    refit and inference stay float32. ``threads`` 0 uses every core (divided among the
    processes of a torchrun node). ``evaluate_at_end`` evaluates the last
    checkpoint on ``data.validation`` (when there is one) with
    ``eval_batch_size`` images per forward pass. ``verify_shards`` checks every
    shard's sha256 against its manifest when the run first reads it (training and
    the evaluation at the end); it costs one more read of the shard files, far less
    than one training step (see the README); ``--no-verify`` skips it.
    """

    seed: int = 0
    out_dir: str = "out/train"
    device: str = "auto"
    backbone_weights: str | None = None
    checkpoint_every: int = 200
    keep_last_checkpoints: int = 2
    log_every: int = 10
    amp: bool = True
    cpu_precision: CpuPrecision = "float32"
    channels_last: bool = False
    threads: int = 0
    tensorboard: bool = True
    evaluate_at_end: bool = True
    eval_batch_size: int = 4
    verify_shards: bool = True

    def __post_init__(self) -> None:
        if self.seed < 0 or self.threads < 0:
            raise ConfigError("run.seed and run.threads must be >= 0")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.keep_last_checkpoints < 1:
            raise ConfigError(
                "run.checkpoint_every, run.log_every and run.keep_last_checkpoints must be >= 1"
            )
        if self.eval_batch_size < 1:
            raise ConfigError("run.eval_batch_size must be >= 1")


def _check_refit_fits(model: ModelConfig, loss: LossConfig) -> None:
    if model.family != "centernet" or not model.has_embedding_head:
        raise ConfigError(
            "optim.embedding_refit_ridge refits a CenterNet embedding head: it needs model.family "
            f"'centernet' and model.embedding_dim > 0 (got {model.family!r}, {model.embedding_dim})"
        )
    if loss.embedding_loss != "l2":
        raise ConfigError(
            "optim.embedding_refit_ridge fits the head to the teacher alone, which would undo what "
            f"loss.embedding_loss {loss.embedding_loss!r} learnt from identities: use embedding_loss: l2"
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig(PlainConfig):
    """A complete training recipe; ``from_dict`` is strict, ``model`` and ``data`` are required."""

    model: ModelConfig
    data: DataConfig
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check_loss_fits_model(self.loss, self.model)
        if self.optim.embedding_refit_ridge is not None:
            _check_refit_fits(self.model, self.loss)
        elif self.model.embedding_pooling == "box":
            raise ConfigError(
                "model.embedding_pooling 'box' reads embeddings from a readout solved by least squares "
                "after the last step: set optim.embedding_refit_ridge (the demo uses 0.03)"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        if isinstance(values, Mapping) and "model" in values:
            values = {**values, "model": ModelConfig.normalise_plain(values["model"])}
        return super().from_dict(values)

    def with_resolved_paths(self) -> TrainConfig:
        """Every path field expanded (``${VAR}``) and made absolute (see the module docstring)."""

        def source(entry: ShardSource) -> ShardSource:
            root = entry.dataset_root
            return dataclasses.replace(
                entry,
                directory=str(resolve_config_path(entry.directory)),
                dataset_root=str(resolve_config_path(root)) if root is not None else None,
            )

        weights = self.run.backbone_weights
        return dataclasses.replace(
            self,
            data=dataclasses.replace(
                self.data,
                train=tuple(map(source, self.data.train)),
                validation=tuple(map(source, self.data.validation)),
            ),
            run=dataclasses.replace(
                self.run,
                out_dir=str(resolve_config_path(self.run.out_dir)),
                backbone_weights=str(resolve_config_path(weights)) if weights is not None else None,
            ),
        )


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a recipe (strictly, see :mod:`tdt.config`) and resolve its paths."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"config file {path} not found (recipes live in {CONFIGS_DIR})")
    document = load_yaml(path)
    if not isinstance(document, Mapping):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return TrainConfig.from_dict(document).with_resolved_paths()
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def resolve_config_path(text: str, *, project_root: Path = PROJECT_ROOT) -> Path:
    """``text`` expanded and made absolute by :func:`tdt.config.expand_path`, fallbacks against the project."""
    return expand_path(text, fallback_base=project_root)


def write_recipe(path: Path, config: TrainConfig) -> None:
    """The recipe as a run used it (paths resolved), loadable with :func:`load_train_config`."""
    config.to_yaml(path)


def check_inputs_exist(config: TrainConfig, *, need_backbone_weights: bool) -> None:
    """Fail before any work when a shard directory or the backbone weights are missing."""
    sources = list(config.data.train)
    if config.run.evaluate_at_end:
        sources += list(config.data.validation)
    seen: set[str] = set()
    for source in sources:
        if source.directory in seen:
            continue
        seen.add(source.directory)
        if not (Path(source.directory) / MANIFEST_NAME).is_file():
            how = (
                f"Make it with:\n  {source.distill_command}"
                if source.distill_command
                else "Make it with python -m pipeline.distill (see python -m pipeline.distill --help)."
            )
            raise MissingInputError(
                f"shard directory {source.directory} not found (no {MANIFEST_NAME} there).\n{how}\n"
                "Or point the recipe elsewhere with --shards DIR[:weight]."
            )
    weights = config.run.backbone_weights
    if need_backbone_weights and weights is not None and not Path(weights).is_file():
        raise MissingInputError(
            f"backbone weights {weights} not found. Set TDT_SHARED_DATA to the shared data folder "
            "(it holds weights/mobilenet_v2_imagenet_features.pt) or pass --backbone-weights PATH."
        )


# ---- resume rules ----------------------------------------------------------------------------
# Recipe keys a resumed run may change: where and how it runs, not what it learns.
# Changing max_steps re-plans the cosine from the current step on.
RESUME_MAY_CHANGE: frozenset[str] = frozenset(
    {
        "optim.max_steps",
        "data.validation",
        "data.loader_workers",
        *(f"model.{key}" for key in INFERENCE_SETTINGS - {"input_height", "input_width"}),
        *(
            f"run.{key}"
            for key in (
                "out_dir",
                "device",
                "backbone_weights",
                "checkpoint_every",
                "keep_last_checkpoints",
                "log_every",
                "threads",
                "tensorboard",
                "evaluate_at_end",
                "eval_batch_size",
                "verify_shards",
            )
        ),
    }
)
# Per training source: where the images live now and how the shards were made may change.
RESUME_MAY_CHANGE_PER_SOURCE = ("dataset_root", "distill_command")


def _flatten_sections(config: Mapping[str, Any]) -> dict[str, Any]:
    flat = {
        f"{section}.{key}": value
        for section, values in config.items()
        if isinstance(values, Mapping)
        for key, value in values.items()
    }
    if isinstance(flat.get("data.train"), list):
        flat["data.train"] = [
            {key: value for key, value in source.items() if key not in RESUME_MAY_CHANGE_PER_SOURCE}
            for source in flat["data.train"]
            if isinstance(source, Mapping)
        ]
    return flat


def recipe_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Differences between two recipes (as dicts) that a resumed run may not have."""
    return config_differences(_flatten_sections(saved), _flatten_sections(current), RESUME_MAY_CHANGE)


__all__ = [
    "CONFIGS_DIR",
    "DEFAULT_CONFIG_PATH",
    "RECIPE_NAME",
    "RESUME_MAY_CHANGE",
    "DataConfig",
    "MissingInputError",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "check_inputs_exist",
    "load_train_config",
    "recipe_differences",
    "resolve_config_path",
    "write_recipe",
]
