"""Training of the student: the recipe (:class:`TrainConfig`), shard-record selection and the loop.

A recipe is a YAML file (``configs/*.yaml``) with the sections ``model``
(:class:`student.config.ModelConfig`), ``loss`` (:class:`student.config.LossConfig`),
``augment`` (:class:`student.augment.AugmentConfig`), ``data``, ``optim`` and
``run``. Loading is strict: an unknown key anywhere is an error.

Paths in a recipe (shard directories, dataset roots, backbone weights, output
directory) may use ``${VAR}`` and ``${VAR:-fallback}``. A relative path is
relative to the directory the command runs in, like the paths of the README's
``pipeline.distill --out out/shards-pets``; only a relative *fallback* that
leads a path (``${TDT_SHARED_DATA:-../shared/data}/...``) is relative to the
project root, as in the dataset manifests, so the shared data is found from
any working directory. Paths are resolved when a recipe is loaded, so a
checkpoint records absolute paths.

Determinism: every training image is identified by a :class:`student.data.SampleKey`
(epoch, draw number, image) derived from the step alone, and its augmentation
is seeded by that key, so a run resumed from a checkpoint sees exactly the
batches (and, with the restored model, optimiser, schedule and RNG state,
computes exactly the losses) of an uninterrupted run on the same device.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import math
import os
import re
import time
import types
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from malloc_tuning import keep_freed_memory
from pipeline.shards import MANIFEST_NAME, open_shards

from .augment import AugmentConfig
from .checkpoint import (
    NON_ARCHITECTURE_MODEL_KEYS,
    CheckpointError,
    CheckpointKeeper,
    TrainingCheckpoint,
    capture_rng_state,
    config_differences,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
)
from .config import ConfigError, LossConfig, ModelConfig
from .data import (
    DatasetOptions,
    SampleKey,
    ShardSource,
    StudentDataError,
    StudentDataset,
    collate,
    loader_worker_init,
)
from .losses import LossTerms, StudentCriterion
from .model import StudentDetector, build_student
from .schedule import CosineWarmup

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = PROJECT_ROOT / "configs"
DEFAULT_CONFIG_PATH = CONFIGS_DIR / "pets09.yaml"
TRAIN_LOG_NAME = "train_log.csv"
TENSORBOARD_DIR_NAME = "tensorboard"
RECIPE_NAME = "config.yaml"
LOSS_TARGET_KEYS = ("boxes", "ignore", "identities", "embeddings")
OptimizerName = Literal["sgd", "adamw"]
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class MissingInputError(FileNotFoundError):
    """A file or directory the recipe needs does not exist; the message says how to make it."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


# ---- recipe ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ShardSourceConfig:
    """One shard directory and which of its records to use.

    ``frames`` is an inclusive frame-number range and ``sequences`` a list of
    sequence names (shell-style patterns allowed); empty means all. ``weight``
    is the source's share of training draws (see :mod:`student.data`).
    ``dataset_root`` overrides the image root recorded in the shard manifest.
    ``distill_command`` is printed when the directory is missing.
    """

    directory: str
    weight: float = 1.0
    dataset_root: str | None = None
    frames: tuple[int, int] | None = None
    sequences: tuple[str, ...] = ()
    distill_command: str = ""

    def __post_init__(self) -> None:
        if not self.directory:
            raise ConfigError("a shard source needs a directory")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ConfigError(f"{self.directory}: weight must be a positive number, got {self.weight}")
        if self.frames is not None and not 0 <= self.frames[0] <= self.frames[1]:
            raise ConfigError(f"{self.directory}: frames must be [first, last] with 0 <= first <= last")

    def describe_selection(self) -> str:
        parts = []
        if self.frames is not None:
            parts.append(f"frames {self.frames[0]}-{self.frames[1]}")
        if self.sequences:
            parts.append(f"sequences {', '.join(self.sequences)}")
        return " and ".join(parts) if parts else "all records"

    def selection_mask(self, frames: np.ndarray, sequences: Sequence[str]) -> np.ndarray:
        """Which records (given their frame numbers and sequence names) this source selects."""
        mask = np.ones(len(frames), dtype=bool)
        if self.frames is not None:
            if np.any(frames < 0):
                raise ConfigError(
                    f"{self.directory}: records without frame numbers cannot be selected by frames "
                    f"{list(self.frames)}"
                )
            mask &= (frames >= self.frames[0]) & (frames <= self.frames[1])
        if self.sequences:
            mask &= np.array(
                [any(fnmatch.fnmatchcase(name, pattern) for pattern in self.sequences) for name in sequences],
                dtype=bool,
            )
        return mask

    def to_shard_source(self) -> ShardSource:
        root = Path(self.dataset_root) if self.dataset_root is not None else None
        return ShardSource(Path(self.directory), self.weight, root)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training and validation shard sources; ``loader_workers`` DataLoader processes (0: in the loop)."""

    train: tuple[ShardSourceConfig, ...]
    validation: tuple[ShardSourceConfig, ...] = ()
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
    """Where and how a run executes; none of it changes what is learned except ``seed``.

    ``device`` "auto" is CUDA when available. ``amp`` (float16 autocast) only
    takes effect on CUDA. ``threads`` 0 uses every core (divided among the
    processes of a torchrun node).
    """

    seed: int = 0
    out_dir: str = "out/train"
    device: str = "auto"
    backbone_weights: str | None = None
    checkpoint_every: int = 200
    keep_last_checkpoints: int = 2
    log_every: int = 10
    amp: bool = True
    channels_last: bool = False
    threads: int = 0
    tensorboard: bool = True
    evaluate_at_end: bool = True
    eval_batch_size: int = 4

    def __post_init__(self) -> None:
        if self.seed < 0 or self.threads < 0:
            raise ConfigError("run.seed and run.threads must be >= 0")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.keep_last_checkpoints < 1:
            raise ConfigError(
                "run.checkpoint_every, run.log_every and run.keep_last_checkpoints must be >= 1"
            )
        if self.eval_batch_size < 1:
            raise ConfigError("run.eval_batch_size must be >= 1")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A complete training recipe."""

    model: ModelConfig
    data: DataConfig
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Strict: unknown keys are errors; missing sections take defaults (``model`` and ``data`` are required)."""
        return _from_plain(cls, values, "config")

    def with_resolved_paths(self) -> TrainConfig:
        """Every path field expanded (``${VAR}``) and made absolute (see the module docstring)."""

        def source(entry: ShardSourceConfig) -> ShardSourceConfig:
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
    """Read a recipe with ``yaml.safe_load`` and resolve its paths."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"config file {path} not found (recipes live in {CONFIGS_DIR})")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return TrainConfig.from_dict(loaded).with_resolved_paths()
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def resolve_config_path(text: str, *, project_root: Path = PROJECT_ROOT) -> Path:
    """Expand ``${VAR}`` / ``${VAR:-fallback}`` and make the path absolute (see the module docstring)."""
    base = Path.cwd()

    def substitute(match: re.Match[str]) -> str:
        nonlocal base
        variable, fallback = match.group(1), match.group(2)
        value = os.environ.get(variable)
        if value:
            return value
        if fallback is None:
            raise ConfigError(f"path {text!r} needs ${{{variable}}}, which is not set")
        if match.start() == 0:
            base = project_root
        return fallback

    expanded = Path(_ENV_REFERENCE.sub(substitute, text)).expanduser()
    return Path(os.path.normpath(expanded if expanded.is_absolute() else base / expanded))


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _to_plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_to_plain(item) for item in value]
    return value


def _from_plain(hint: Any, value: Any, where: str) -> Any:
    """YAML value -> ``hint`` (nested dataclasses, tuples, literals, optionals, scalars), strictly."""
    if isinstance(hint, type) and issubclass(hint, ModelConfig | LossConfig):
        try:
            return hint.from_dict(value)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from error
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        fields = {field.name: field for field in dataclasses.fields(hint)}
        unknown = sorted(set(map(str, value)) - set(fields))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(fields)}"
            )
        hints = typing.get_type_hints(hint)
        converted = {name: _from_plain(hints[name], item, f"{where}.{name}") for name, item in value.items()}
        try:
            return hint(**converted)
        # TypeError: a required key is missing; ValueError: a value check failed
        # (ConfigError is one; AugmentConfig raises plain ValueError)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}: {error}") from error
    origin = get_origin(hint)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not one of {get_args(hint)}")
        return value
    if origin in (types.UnionType, typing.Union):
        options = get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{where}: must not be null")
        (option,) = [candidate for candidate in options if candidate is not type(None)]
        return _from_plain(option, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_types = get_args(hint)
        if len(item_types) == 2 and item_types[1] is Ellipsis:
            return tuple(_from_plain(item_types[0], item, f"{where}[{i}]") for i, item in enumerate(value))
        if len(item_types) != len(value):
            raise ConfigError(f"{where}: expected {len(item_types)} values, got {len(value)}")
        return tuple(
            _from_plain(item_type, item, f"{where}[{i}]")
            for i, (item_type, item) in enumerate(zip(item_types, value, strict=True))
        )
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {hint!r}")


# Recipe keys a resumed run may change: where and how it runs, not what it learns.
# Changing max_steps re-plans the cosine from the current step on.
RESUME_MAY_CHANGE: frozenset[str] = frozenset(
    {
        "optim.max_steps",
        "data.validation",
        "data.loader_workers",
        *(f"model.{key}" for key in NON_ARCHITECTURE_MODEL_KEYS - {"input_height", "input_width"}),
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


# ---- inputs and record selection -------------------------------------------------------------
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


@dataclasses.dataclass(frozen=True)
class SelectedImages:
    """Global dataset indices chosen from each source, and the sources' mixing weights."""

    per_source: tuple[np.ndarray, ...]
    weights: tuple[float, ...]

    @property
    def count(self) -> int:
        return int(sum(len(indices) for indices in self.per_source))

    def all_indices(self) -> np.ndarray:
        return np.concatenate(self.per_source) if self.per_source else np.zeros(0, np.int64)


@dataclasses.dataclass(frozen=True)
class SourceScan:
    """What one pass over a source's shard tables gives: its selected rows and embedding sums."""

    selected: np.ndarray  # bool per record, manifest order
    embedding_sum: np.ndarray | None  # sum of L2-normalised first-D teacher dims over selected boxes
    embedding_count: int


def scan_source(source: ShardSourceConfig, embedding_dim: int = 0) -> SourceScan:
    """Select the source's records; with ``embedding_dim`` > 0 also sum, over the selected
    boxes that have an embedding, their teacher embeddings' first ``embedding_dim`` dims,
    each re-normalised to unit length (for the training-set mean used by evaluation)."""
    shards = open_shards(source.directory)
    masks = []
    total = np.zeros(embedding_dim, dtype=np.float64) if embedding_dim > 0 else None
    count = 0
    for shard_index in range(len(shards.manifest.shards)):
        table = shards.shard_table(shard_index)
        mask = source.selection_mask(np.asarray(table.frames), table.sequences)
        masks.append(mask)
        if total is not None and table.num_boxes:
            box_selected = np.repeat(mask, np.diff(table.offsets))
            prefix = np.asarray(table.embeddings[box_selected, :embedding_dim], dtype=np.float64)
            prefix = prefix[np.isfinite(prefix).all(axis=1)]
            norms = np.linalg.norm(prefix, axis=1, keepdims=True)
            prefix = prefix[norms[:, 0] > 0] / norms[norms[:, 0] > 0]
            total += prefix.sum(axis=0)
            count += len(prefix)
    selected = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
    return SourceScan(selected, total, count)


def select_images(
    dataset: StudentDataset, sources: Sequence[ShardSourceConfig], embedding_dim: int = 0
) -> tuple[SelectedImages, np.ndarray | None]:
    """The dataset's images selected by each source's frames / sequences, and (with
    ``embedding_dim``) the mean of their normalised teacher embedding prefixes."""
    if len(sources) != len(dataset.source_sizes):
        raise ValueError(
            f"{len(sources)} source configs for a dataset of {len(dataset.source_sizes)} sources"
        )
    starts = np.concatenate([[0], np.cumsum(dataset.source_sizes)])
    per_source = []
    total = np.zeros(embedding_dim) if embedding_dim > 0 else None
    count = 0
    for number, source in enumerate(sources):
        scan = scan_source(source, embedding_dim)
        if len(scan.selected) != dataset.source_sizes[number]:
            raise StudentDataError(
                f"{source.directory}: {len(scan.selected)} records scanned but the dataset holds "
                f"{dataset.source_sizes[number]}"
            )
        indices = starts[number] + np.flatnonzero(scan.selected)
        if len(indices) == 0:
            raise ConfigError(f"{source.directory}: {source.describe_selection()} select no images")
        per_source.append(indices.astype(np.int64))
        if total is not None and scan.embedding_sum is not None:
            total += scan.embedding_sum
            count += scan.embedding_count
    mean = None
    if total is not None and count > 0:
        mean = (total / count).astype(np.float32)
    selection = SelectedImages(tuple(per_source), tuple(source.weight for source in sources))
    return selection, mean


def overlapping_images(train: Sequence[ShardSourceConfig], validation: Sequence[ShardSourceConfig]) -> int:
    """How many validation records are also training records (same shard directory)."""
    overlap = 0
    for validation_source in validation:
        validation_scan = None
        for train_source in train:
            if Path(train_source.directory) != Path(validation_source.directory):
                continue
            if validation_scan is None:
                validation_scan = scan_source(validation_source).selected
            overlap += int((validation_scan & scan_source(train_source).selected).sum())
    return overlap


class DrawStream(Sampler[SampleKey]):
    """An endless, deterministic stream of :class:`SampleKey` s over selected images.

    An epoch is as many draws as there are selected images; each draw picks a
    source by mixing weight, and within a source the images come in a fresh
    random order (each once before any repeats). Epoch ``e`` is seeded by
    (seed, e). Process ``rank`` of ``world_size`` takes global draws
    ``rank, rank + world_size, ...`` (DistributedSampler-style sharding), and
    ``start`` is this process's position in its share, so a run resumed at step
    ``s`` starts at ``s * batch_size``.
    """

    def __init__(
        self, selection: SelectedImages, seed: int, *, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if selection.count == 0:
            raise StudentDataError("no images selected for training")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.selection = selection
        self.seed = seed
        self.start = start
        self.rank = rank
        self.world_size = world_size
        weights = np.asarray(selection.weights, dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self._cached_epoch: tuple[int, np.ndarray] | None = None

    @property
    def epoch_length(self) -> int:
        return self.selection.count

    def epoch_draws(self, epoch: int) -> np.ndarray:
        """Global image indices of one epoch, in draw order."""
        if self._cached_epoch is not None and self._cached_epoch[0] == epoch:
            return self._cached_epoch[1]
        rng = np.random.default_rng([self.seed, epoch])
        length = self.epoch_length
        sources = rng.choice(len(self.probabilities), size=length, p=self.probabilities)
        draws = np.empty(length, dtype=np.int64)
        for number, pool in enumerate(self.selection.per_source):
            positions = np.flatnonzero(sources == number)
            if len(positions) == 0:
                continue
            rounds = math.ceil(len(positions) / len(pool))
            draws[positions] = np.concatenate([rng.permutation(pool) for _ in range(rounds)])[
                : len(positions)
            ]
        self._cached_epoch = (epoch, draws)
        return draws

    def key_at(self, position: int) -> SampleKey:
        epoch, draw = divmod(position * self.world_size + self.rank, self.epoch_length)
        return SampleKey(int(self.epoch_draws(epoch)[draw]), epoch, draw)

    def __iter__(self) -> Iterator[SampleKey]:
        position = self.start
        while True:
            yield self.key_at(position)
            position += 1


# ---- distributed -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Process placement under ``torchrun`` (WORLD_SIZE, RANK, LOCAL_RANK); one process otherwise.

    Only the single-process path is exercised by the tests here; the
    multi-process path is the standard torch recipe (process group, DDP
    wrapper, sharded draws, rank 0 writes) and has not been run on this machine.
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_environment(cls) -> DistributedContext:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        return cls(
            world_size=world_size,
            rank=int(os.environ["RANK"]),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
        )

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(requested: str, context: DistributedContext) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise ConfigError(f"device {requested!r}: {error}") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {requested!r} requested but CUDA is not available")
        if context.is_distributed:
            device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    return device


# ---- model, optimiser ------------------------------------------------------------------------
class TrainingStep(nn.Module):
    """Model and criterion as one module, so DDP also synchronises the criterion's parameters
    (the identity classifier, uncertainty weights)."""

    def __init__(self, model: StudentDetector, criterion: StudentCriterion) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, images: Tensor, targets: Sequence[Mapping[str, Tensor]]) -> LossTerms:
        return self.criterion(self.model(images), targets)


def build_optimizer(
    parameters: Sequence[tuple[str, nn.Parameter]], config: OptimConfig
) -> torch.optim.Optimizer:
    trainable = [(name, parameter) for name, parameter in parameters if parameter.requires_grad]
    decayed = [parameter for _, parameter in trainable if parameter.ndim >= 2]
    not_decayed = [parameter for _, parameter in trainable if parameter.ndim < 2]
    groups = [
        {"params": decayed, "weight_decay": config.weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.adamw_betas)
    return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum)


# ---- logging ---------------------------------------------------------------------------------
LOG_COLUMNS = (
    "step",
    "epoch",
    "learning_rate",
    "loss",
    "classification",
    "box_regression",
    "embedding_l2",
    "identity_ce",
    "grad_norm",
    "positive_anchors",
    "seconds_per_step",
    "images_per_second",
)


class TrainingLog:
    """CSV (``train_log.csv``) and, optionally, TensorBoard scalars in the output directory.

    Each row is the mean over the steps since the previous row. A resumed run
    first drops rows past its starting step (logged after the last checkpoint).
    """

    def __init__(self, out_dir: Path, start_step: int, tensorboard: bool) -> None:
        self.path = out_dir / TRAIN_LOG_NAME
        kept_rows: list[dict[str, str]] = []
        if start_step > 0 and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as stream:
                kept_rows = [row for row in csv.DictReader(stream) if int(row["step"]) <= start_step]
        self._stream = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._writer = csv.DictWriter(self._stream, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        self._writer.writeheader()
        self._writer.writerows(kept_rows)
        self._stream.flush()
        self._tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(out_dir / TENSORBOARD_DIR_NAME), purge_step=start_step + 1)

    def write(self, step: int, values: Mapping[str, float]) -> None:
        self._writer.writerow({"step": step, **{key: f"{value:.6g}" for key, value in values.items()}})
        self._stream.flush()
        if self._tensorboard is not None:
            for key, value in values.items():
                if key != "epoch":
                    self._tensorboard.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        self._stream.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


class _IntervalMeans:
    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        means = {key: self.sums[key] / self.counts[key] for key in self.sums}
        self.sums, self.counts = {}, {}
        return means


# ---- the run ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainingOutcome:
    """What a finished :func:`train` call did. ``step_losses`` are the total losses of the
    steps this call ran (its first is step ``start_step + 1``)."""

    out_dir: Path
    start_step: int
    final_step: int
    last_checkpoint: Path | None
    step_losses: tuple[float, ...]
    seconds_per_step: float
    is_main_process: bool


def train(config: TrainConfig, *, resume: Path | None = None, progress: bool = True) -> TrainingOutcome:
    """Train (or, with ``resume``, continue) according to ``config``; see :class:`TrainConfig`.

    The torch thread count is set for the run (``config.run.threads``) and restored afterwards.
    """
    keep_freed_memory()
    previous_threads = torch.get_num_threads()
    try:
        return _TrainingRun(config, resume=resume, progress=progress).run()
    finally:
        torch.set_num_threads(previous_threads)


class _TrainingRun:
    def __init__(self, config: TrainConfig, *, resume: Path | None, progress: bool) -> None:
        self.context = DistributedContext.from_environment()
        checkpoint = load_checkpoint(resume, expected_config=config.model) if resume is not None else None
        if checkpoint is not None:
            differences = recipe_differences(checkpoint.config, config.to_dict())
            if differences:
                raise CheckpointError(
                    f"{resume}: the recipe differs from the one the checkpoint was trained with: "
                    + "; ".join(differences)
                )
        check_inputs_exist(config, need_backbone_weights=checkpoint is None)
        existing = latest_checkpoint(config.run.out_dir) if Path(config.run.out_dir).is_dir() else None
        if checkpoint is None and existing is not None:
            raise ConfigError(
                f"{config.run.out_dir} already holds checkpoints of a run ({existing.name}); continue it with "
                f"--resume {config.run.out_dir} or choose another --out"
            )
        if self.context.is_distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        self.config = config
        self.progress = progress
        self.out_dir = Path(config.run.out_dir)
        self.device = resolve_device(config.run.device, self.context)
        threads = config.run.threads or max(1, (os.cpu_count() or 1) // self.context.local_world_size)
        torch.set_num_threads(threads)
        self.use_amp = config.run.amp and self.device.type == "cuda"
        _seed_everything(config.run.seed)

        model_config = config.model
        self.dataset = StudentDataset(
            [source.to_shard_source() for source in config.data.train],
            DatasetOptions(
                input_size=model_config.input_size,
                mode="train",
                augment=config.augment,
                seed=config.run.seed,
            ),
        )
        if (
            model_config.has_embedding_head
            and config.loss.uses_l2
            and (self.dataset.embedding_dim < model_config.embedding_dim)
        ):
            raise ConfigError(
                f"the student regresses {model_config.embedding_dim} teacher dims but the shards hold "
                f"{self.dataset.embedding_dim}-d embeddings"
            )
        if checkpoint is not None and checkpoint.teacher_id != self.dataset.teacher_id:
            raise CheckpointError(
                f"{resume}: trained against teacher {checkpoint.teacher_id!r}, the shards are from "
                f"{self.dataset.teacher_id!r}"
            )
        self.selection, self.teacher_mean = select_images(
            self.dataset, config.data.train, model_config.embedding_dim
        )
        shared = overlapping_images(config.data.train, config.data.validation)
        if shared and self.context.is_main:
            warnings.warn(f"{shared} validation images are also training images", stacklevel=3)

        backbone_weights = None if checkpoint is not None else config.run.backbone_weights
        model = build_student(model_config, backbone_weights, warn_if_random_backbone=checkpoint is None)
        criterion = StudentCriterion(config.loss, model_config, num_identities=self.dataset.num_identities)
        self.step_module = TrainingStep(model, criterion).to(self.device)
        if config.run.channels_last:
            self.step_module.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(list(self.step_module.named_parameters()), config.optim)
        self.scheduler = LambdaLR(self.optimizer, lr_lambda=config.optim.schedule())
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.start_step = 0
        if checkpoint is not None:
            self._restore(checkpoint)
        self.trainable_parameters = [p for p in self.step_module.parameters() if p.requires_grad]
        self.forward_module: nn.Module = self.step_module
        if self.context.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_module = nn.parallel.DistributedDataParallel(self.step_module, device_ids=device_ids)
        self.keeper = CheckpointKeeper(self.out_dir, keep_last=config.run.keep_last_checkpoints)

    @property
    def model(self) -> StudentDetector:
        return self.step_module.model

    def _restore(self, checkpoint: TrainingCheckpoint) -> None:
        step = checkpoint.step
        self.model.load_state_dict(checkpoint.model_state)
        extra = checkpoint.extra
        self.step_module.criterion.load_state_dict(extra.get("criterion_state", {}))
        if checkpoint.optimizer_state is None or checkpoint.scheduler_state is None:
            raise CheckpointError(
                f"checkpoint of step {step} lacks optimiser or scheduler state: cannot resume"
            )
        self.optimizer.load_state_dict(checkpoint.optimizer_state)
        self.scheduler.load_state_dict(checkpoint.scheduler_state)
        saved_max_steps = checkpoint.config.get("optim", {}).get("max_steps")
        if saved_max_steps != self.config.optim.max_steps:
            # The loaded state brought back the old schedule length: re-plan the cosine
            # for the new one from the current step on.
            schedule = self.config.optim.schedule()
            self.scheduler.lr_lambdas = [schedule] * len(self.optimizer.param_groups)
            for group, initial_lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
                group["lr"] = initial_lr * schedule(step)
        if self.use_amp and extra.get("grad_scaler_state"):
            self.scaler.load_state_dict(extra["grad_scaler_state"])
        if checkpoint.rng_state is not None:
            restore_rng_state(checkpoint.rng_state)
        self.start_step = step

    def _save(self, step: int) -> Path:
        extra: dict[str, Any] = {
            "criterion_state": dict(self.step_module.criterion.state_dict()),
            "images_per_step": self.config.optim.batch_size * self.context.world_size,
            "world_size": self.context.world_size,
            "grad_scaler_state": self.scaler.state_dict() if self.use_amp else None,
            "train_images": self.selection.count,
        }
        if self.teacher_mean is not None:
            # evaluation centres embeddings with this training-set mean (see student.evaluate)
            extra["teacher_mean_embedding"] = torch.from_numpy(self.teacher_mean)
        return self.keeper.save(
            TrainingCheckpoint(
                step=step,
                model_state=_cpu_state(self.model.state_dict()),
                model_config=self.config.model.to_dict(),
                optimizer_state=self.optimizer.state_dict(),
                scheduler_state=self.scheduler.state_dict(),
                config=self.config.to_dict(),
                teacher_fingerprint=self.dataset.teacher_fingerprint,
                teacher_id=self.dataset.teacher_id,
                shard_sources=[summary.as_dict() for summary in self.dataset.source_summaries()],
                rng_state=capture_rng_state(),
                extra=extra,
            )
        )

    def _loader(self) -> Iterator[tuple[Tensor, list[dict[str, Any]]]]:
        batch_size = self.config.optim.batch_size
        stream = DrawStream(
            self.selection,
            self.config.run.seed,
            start=self.start_step * batch_size,
            rank=self.context.rank,
            world_size=self.context.world_size,
        )
        workers = self.config.data.loader_workers
        loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            sampler=stream,
            collate_fn=collate,
            num_workers=workers,
            worker_init_fn=loader_worker_init if workers > 0 else None,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        return iter(loader)

    def _loss_targets(self, targets: Sequence[Mapping[str, Any]]) -> list[dict[str, Tensor]]:
        return [
            {key: target[key].to(self.device, non_blocking=True) for key in LOSS_TARGET_KEYS}
            for target in targets
        ]

    def _train_step(
        self, images: Tensor, targets: list[dict[str, Tensor]], step: int
    ) -> tuple[LossTerms, float]:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            terms: LossTerms = self.forward_module(images, targets)
        if not torch.isfinite(terms.total.detach()) and not self.use_amp:
            raise TrainingDivergedError(
                f"loss is {float(terms.total)} at step {step} ({terms.as_floats()}); "
                "lower optim.learning_rate or optim.grad_clip_norm"
            )
        self.scaler.scale(terms.total).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = (
            self.config.optim.grad_clip_norm if self.config.optim.grad_clip_norm is not None else math.inf
        )
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable_parameters, max_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return terms, grad_norm

    def run(self) -> TrainingOutcome:
        config = self.config
        is_main = self.context.is_main
        max_steps = config.optim.max_steps
        if self.start_step >= max_steps:
            raise ConfigError(
                f"the checkpoint is at step {self.start_step}, max_steps is {max_steps}: nothing to do "
                "(raise --max-steps to train longer)"
            )
        log = None
        if is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _write_recipe(self.out_dir / RECIPE_NAME, config)
            log = TrainingLog(self.out_dir, self.start_step, config.run.tensorboard)
        self.step_module.train()
        batches = self._loader()
        bar = tqdm(
            total=max_steps,
            initial=self.start_step,
            desc="train",
            unit="step",
            disable=not (self.progress and is_main),
            dynamic_ncols=True,
        )
        interval = _IntervalMeans()
        step_losses: list[float] = []
        last_checkpoint = None
        batch_images = config.optim.batch_size * self.context.world_size
        run_start = interval_start = time.perf_counter()
        try:
            for step in range(self.start_step + 1, max_steps + 1):
                images, targets = next(batches)
                images = images.to(self.device, non_blocking=True)
                if config.run.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                learning_rate = self.optimizer.param_groups[0]["lr"]
                terms, grad_norm = self._train_step(images, self._loss_targets(targets), step)
                values = terms.as_floats()
                step_losses.append(values["loss"])
                # logged values are this process's (not averaged across torchrun processes)
                interval.add({**values, "grad_norm": grad_norm, "learning_rate": learning_rate})
                bar.update(1)
                if step % config.run.log_every == 0 or step == max_steps:
                    seconds = (time.perf_counter() - interval_start) / interval.counts["loss"]
                    interval_start = time.perf_counter()
                    means = interval.means()
                    means.update(
                        epoch=(step * batch_images) / self.selection.count,
                        seconds_per_step=seconds,
                        images_per_second=batch_images / seconds,
                    )
                    bar.set_postfix(_short_postfix(means), refresh=False)
                    if log is not None:
                        log.write(step, means)
                if is_main and (step % config.run.checkpoint_every == 0 or step == max_steps):
                    last_checkpoint = self._save(step)
        finally:
            bar.close()
            if log is not None:
                log.close()
        steps_run = max_steps - self.start_step
        seconds_per_step = (time.perf_counter() - run_start) / max(1, steps_run)
        if self.context.is_distributed:
            dist.barrier()
            dist.destroy_process_group()
        self.model.eval()
        return TrainingOutcome(
            out_dir=self.out_dir,
            start_step=self.start_step,
            final_step=max_steps,
            last_checkpoint=last_checkpoint,
            step_losses=tuple(step_losses),
            seconds_per_step=seconds_per_step,
            is_main_process=is_main,
        )


def _short_postfix(means: Mapping[str, float]) -> dict[str, str]:
    names = {
        "loss": "loss",
        "classification": "cls",
        "box_regression": "box",
        "embedding_l2": "l2",
        "identity_ce": "ce",
        "learning_rate": "lr",
    }
    return {short: f"{means[key]:.3g}" for key, short in names.items() if key in means}


def _cpu_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {key: tensor.detach().cpu() for key, tensor in state.items()}


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _write_recipe(path: Path, config: TrainConfig) -> None:
    import yaml

    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")


__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DataConfig",
    "DistributedContext",
    "DrawStream",
    "MissingInputError",
    "OptimConfig",
    "RunConfig",
    "SelectedImages",
    "ShardSourceConfig",
    "TrainConfig",
    "TrainingDivergedError",
    "TrainingOutcome",
    "load_train_config",
    "recipe_differences",
    "resolve_config_path",
    "select_images",
    "train",
]
