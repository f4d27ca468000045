"""Training checkpoints: plain tensors and Python types only, written atomically.

Everything saved loads with ``torch.load(weights_only=True)``: checkpoints may
be passed between people, and a weights-only load cannot run code. The
payload is checked before writing, so a value that would not load back
(a numpy array, a dataclass, a Path) is an error at save time, not at resume.

Layout of a run directory kept by :class:`CheckpointKeeper`::

    step_000100.pt  step_000200.pt  step_000300.pt   (the last ``keep_last``)
    last.pt                                          (hard link to / copy of the newest)
"""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tdt.weights_only import failure_reason, refused_global

from .config import INFERENCE_SETTINGS

CHECKPOINT_KIND = "tdt-student-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
LAST_CHECKPOINT_NAME = "last.pt"
STEP_CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.pt$")
# save_checkpoint and CheckpointKeeper write ".<name>.tmp-<pid>" and rename it when complete.
_TEMPORARY_CHECKPOINT_PATTERN = re.compile(r"^\.(?:step_\d+\.pt|last\.pt)\.tmp-(\d+)$")
_PLAIN_SCALARS = (str, int, float, bool, type(None))


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not ours, or for another architecture / teacher."""


@dataclass(frozen=True)
class TrainingCheckpoint:
    """Everything needed to resume training or to rebuild the model for inference.

    ``model_config`` is the architecture (``ModelConfig.to_dict()``);
    ``criterion_state`` the loss's learnable parts (identity classifier,
    log-variances: ``StudentCriterion.state_dict()``); ``grad_scaler_state``
    the mixed-precision loss scale (None without AMP); ``config``
    the whole training recipe as a plain dict; ``shard_sources`` one plain dict
    per shard directory (``StudentDataset.source_summaries()`` as dicts);
    ``rng_state`` from :func:`capture_rng_state`; ``teacher_mean_embedding``
    the training-set mean of the normalised teacher embeddings the student
    regresses (``(D_s,)``; evaluation centres embeddings with it); ``extra``
    anything else plain and informative only (images per step, world size).
    """

    step: int
    model_state: Mapping[str, torch.Tensor]
    model_config: Mapping[str, Any]
    optimizer_state: Mapping[str, Any] | None = None
    scheduler_state: Mapping[str, Any] | None = None
    criterion_state: Mapping[str, torch.Tensor] | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    teacher_fingerprint: Mapping[str, Any] = field(default_factory=dict)
    teacher_id: str = ""
    shard_sources: Sequence[Mapping[str, Any]] = ()
    rng_state: Mapping[str, Any] | None = None
    grad_scaler_state: Mapping[str, Any] | None = None
    teacher_mean_embedding: torch.Tensor | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {
            "kind": CHECKPOINT_KIND,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "torch_version": str(torch.__version__),
            "step": int(self.step),
            # the state dict object itself: it carries _metadata (module versions) for load_state_dict
            "model_state": self.model_state
            if isinstance(self.model_state, dict)
            else OrderedDict(self.model_state),
            "model_config": dict(self.model_config),
            "optimizer_state": self.optimizer_state,
            "scheduler_state": self.scheduler_state,
            "criterion_state": self.criterion_state,
            "config": dict(self.config),
            "teacher_fingerprint": dict(self.teacher_fingerprint),
            "teacher_id": self.teacher_id,
            "shard_sources": [dict(source) for source in self.shard_sources],
            "rng_state": self.rng_state,
            "grad_scaler_state": self.grad_scaler_state,
            "teacher_mean_embedding": self.teacher_mean_embedding,
            "extra": dict(self.extra),
        }


_REQUIRED_KEYS = ("step", "model_state", "model_config")
# Typed fields that checkpoints written before they existed kept in ``extra``.
_FIELDS_ONCE_IN_EXTRA = ("criterion_state", "grad_scaler_state", "teacher_mean_embedding")
# Model-config keys added since the first checkpoints, with the value those checkpoints imply.
_MODEL_CONFIG_KEYS_ADDED = {
    "family": "retinanet",
    "neck_channels": [256, 128, 64],
    "box_encoding": "ltrb",
    "reciprocal_network": False,
    "scale_aware_embedding": False,
    # checkpoints from before the key trained their sparse head with these statistics
    "embedding_norm_statistics": "assigned",
    "embedding_pooling": "centre",
}
# Loss-config keys added since (read by the CenterNet family only), with their defaults.
_LOSS_CONFIG_KEYS_ADDED = {
    "heatmap_alpha": 2.0,
    "heatmap_beta": 4.0,
    "heatmap_min_overlap": 0.7,
    "offset_weight": 1.0,
    "assignment": "centre",
    "positives_per_object": 7,
    "classification_loss": "focal",
    "reid_probability_temperature": 0.1,
    "box_giou_weight": 0.0,
    "box_sample_fraction": 0.0,
}
# Other recipe sections' keys added since, with the value those checkpoints were trained with.
_RECIPE_KEYS_ADDED = {
    "loss": _LOSS_CONFIG_KEYS_ADDED,
    "optim": {"embedding_refit_ridge": None},
    "run": {"cpu_precision": "float32"},
}


# ---- RNG state -------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """torch / numpy (legacy global) / Python RNG states as tensors and lists."""
    numpy_state = np.random.get_state(legacy=False)
    python_version, python_internal, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "cached_gaussian": float(numpy_state["gauss"]),
        },
        "python": {"version": python_version, "internal": list(python_internal), "gauss_next": python_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["bit_generator"],
            numpy_state["key"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- saving ----------------------------------------------------------------------------------
def _check_plain(value: Any, where: str) -> None:
    """Raise CheckpointError for anything ``torch.load(weights_only=True)`` would refuse."""
    # Exact types: subclasses (torch's TorchVersion is a str, IntEnum an int) are
    # pickled as their own class, which the weights-only unpickler refuses.
    if type(value) in _PLAIN_SCALARS or isinstance(value, torch.Tensor | torch.dtype | torch.device):
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in _PLAIN_SCALARS:
                raise CheckpointError(f"{where}: key {key!r} of type {type(key).__name__} is not plain")
            _check_plain(item, f"{where}.{key}")
        return
    if type(value) in (list, tuple, torch.Size):
        for position, item in enumerate(value):
            _check_plain(item, f"{where}[{position}]")
        return
    raise CheckpointError(
        f"{where}: {type(value).__name__} cannot be loaded with weights_only=True; "
        "store tensors, numbers, strings, lists or dicts"
    )


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(path: Path | str, checkpoint: TrainingCheckpoint) -> Path:
    """Write ``checkpoint`` to ``path`` atomically: temporary file, fsync, rename."""
    path = Path(path)
    payload = checkpoint.to_payload()
    _check_plain(payload, "checkpoint")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    _fsync_directory(path.parent)
    return path


# ---- loading ---------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if type(value) in (list, tuple, torch.Size):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def config_differences(
    saved: Mapping[str, Any], expected: Mapping[str, Any], ignore_keys: Collection[str] = ()
) -> list[str]:
    """``key: saved -> expected`` for every key whose values differ (tuples equal lists)."""
    differences = []
    for key in sorted(set(saved) | set(expected), key=str):
        if key in ignore_keys:
            continue
        missing = object()
        saved_value = _plain(saved.get(key, missing))
        expected_value = _plain(expected.get(key, missing))
        if saved_value != expected_value:
            shown_saved = "<absent>" if saved_value is missing else repr(saved_value)
            shown_expected = "<absent>" if expected_value is missing else repr(expected_value)
            differences.append(f"{key}: checkpoint {shown_saved}, expected {shown_expected}")
    return differences


def _as_mapping(config: Any) -> Mapping[str, Any]:
    if isinstance(config, Mapping):
        return config
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"expected a mapping or a config with to_dict(), got {type(config).__name__}")


def _unloadable(path: Path, error: Exception) -> CheckpointError:
    """Why ``path`` did not load, without torch's advice to retry with full unpickling."""
    needs = refused_global(error)
    if needs is not None:
        return CheckpointError(
            f"{path}: refused: this file needs full unpickling, which can run code (it refers to {needs}). "
            "Checkpoints written by student.train hold plain tensors and never need it, so this file is "
            "not one of them or was modified; there is no option to load it"
        )
    return CheckpointError(
        f"{path}: not a readable weights-only checkpoint (truncated, corrupt or not a checkpoint): "
        f"{type(error).__name__}: {failure_reason(error)}"
    )


def _read_payload(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """The checked payload of a student checkpoint file (weights-only load)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    # Arbitrary bytes make the unpickler fail in arbitrary ways (KeyError on text,
    # EOFError on empty files, RuntimeError on truncated zips, UnpicklingError on
    # foreign objects); all mean the same thing here and keep their cause.
    except Exception as error:
        raise _unloadable(path, error) from error
    if not isinstance(payload, dict) or payload.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path}: not a TDT student checkpoint (no kind {CHECKPOINT_KIND!r})")
    if payload.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload.get('format_version')!r}, "
            f"this code reads {CHECKPOINT_FORMAT_VERSION}"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if not isinstance(payload["step"], int) or not isinstance(payload["model_config"], dict):
        raise CheckpointError(f"{path}: malformed checkpoint (step must be an int, model_config a dict)")
    if not isinstance(payload["model_state"], dict) or not all(
        isinstance(tensor, torch.Tensor) for tensor in payload["model_state"].values()
    ):
        raise CheckpointError(f"{path}: malformed checkpoint (model_state must map names to tensors)")
    non_finite = [
        name
        for name, tensor in payload["model_state"].items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if non_finite:
        raise CheckpointError(
            f"{path}: {len(non_finite)} weight tensors hold non-finite values (NaN or inf, e.g. "
            f"{non_finite[0]}): the run that wrote it diverged and the model would detect nothing; "
            "use an earlier checkpoint (or retrain with a lower optim.learning_rate)"
        )
    return payload


def load_checkpoint(
    path: Path | str,
    expected_config: Mapping[str, Any] | Any | None = None,
    *,
    ignore_keys: Collection[str] = INFERENCE_SETTINGS,
    expected_teacher_id: str | None = None,
    map_location: str | torch.device = "cpu",
) -> TrainingCheckpoint:
    """Load with ``weights_only=True`` and check it is a usable student checkpoint.

    ``expected_config`` (a dict or a ``ModelConfig``) is compared with the saved
    model config, ``ignore_keys`` aside; any difference is a CheckpointError
    naming the file and the keys. ``expected_teacher_id`` refuses a checkpoint
    trained against another teacher (its embeddings live in another space).
    """
    path = Path(path)
    payload = _upgrade_payload(_read_payload(path, map_location))
    if expected_config is not None:
        expected = {**_MODEL_CONFIG_KEYS_ADDED, **_as_mapping(expected_config)}
        differences = config_differences(payload["model_config"], expected, ignore_keys)
        if differences:
            raise CheckpointError(
                f"{path}: model config differs from the expected one (another architecture): "
                + "; ".join(differences)
            )
    if expected_teacher_id is not None and payload.get("teacher_id") != expected_teacher_id:
        raise CheckpointError(
            f"{path}: trained against teacher {payload.get('teacher_id')!r}, expected {expected_teacher_id!r}"
        )
    return TrainingCheckpoint(
        step=payload["step"],
        model_state=payload["model_state"],
        model_config=payload["model_config"],
        optimizer_state=payload.get("optimizer_state"),
        scheduler_state=payload.get("scheduler_state"),
        criterion_state=payload.get("criterion_state"),
        config=payload.get("config", {}),
        teacher_fingerprint=payload.get("teacher_fingerprint", {}),
        teacher_id=payload.get("teacher_id", ""),
        shard_sources=tuple(payload.get("shard_sources", ())),
        rng_state=payload.get("rng_state"),
        grad_scaler_state=payload.get("grad_scaler_state"),
        teacher_mean_embedding=payload.get("teacher_mean_embedding"),
        extra=payload.get("extra", {}),
    )


def _upgrade_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """An older payload in today's layout: typed fields out of ``extra``, added config keys filled."""
    payload = dict(payload)
    extra = dict(payload.get("extra") or {})
    for name in _FIELDS_ONCE_IN_EXTRA:
        if payload.get(name) is None and name in extra:
            payload[name] = extra.pop(name)
    payload["extra"] = extra
    payload["model_config"] = {**_MODEL_CONFIG_KEYS_ADDED, **payload["model_config"]}
    recipe = payload.get("config")
    if isinstance(recipe, dict) and isinstance(recipe.get("model"), dict):
        recipe = {**recipe, "model": {**_MODEL_CONFIG_KEYS_ADDED, **recipe["model"]}}
        for section, added in _RECIPE_KEYS_ADDED.items():
            if isinstance(recipe.get(section), dict):
                recipe[section] = {**added, **recipe[section]}
        payload["config"] = recipe
    return payload


# ---- a run directory -------------------------------------------------------------------------
def step_checkpoint_name(step: int) -> str:
    return f"step_{step:06d}.pt"


@dataclass(frozen=True)
class CheckpointKeeper:
    """Saves ``step_NNNNNN.pt`` files in ``directory``, keeps the newest ``keep_last``
    and points ``last.pt`` at the newest (a hard link, or a copy where links fail)."""

    directory: Path
    keep_last: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))
        if self.keep_last < 1:
            raise ValueError("keep_last must be at least 1")

    @property
    def last_path(self) -> Path:
        return self.directory / LAST_CHECKPOINT_NAME

    def step_checkpoints(self) -> list[Path]:
        """Existing step checkpoints, oldest first (by step number, not by name)."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = STEP_CHECKPOINT_PATTERN.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def save(self, checkpoint: TrainingCheckpoint) -> Path:
        self.remove_interrupted_writes()
        path = save_checkpoint(self.directory / step_checkpoint_name(checkpoint.step), checkpoint)
        self._point_last_at(path)
        for old in self.step_checkpoints()[: -self.keep_last]:
            old.unlink()
        return path

    def remove_interrupted_writes(self) -> list[Path]:
        """Delete temporary checkpoint files left by a process killed while writing; warns when any.

        A file of a process that is still running is kept (it may be writing right now).
        """
        removed = []
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                match = _TEMPORARY_CHECKPOINT_PATTERN.match(path.name)
                if match and not _process_is_running(int(match.group(1))):
                    path.unlink()
                    removed.append(path)
        if removed:
            warnings.warn(
                f"removed {len(removed)} temporary checkpoint files in {self.directory} "
                f"({', '.join(sorted(p.name for p in removed))}): left by a checkpoint write that was "
                "interrupted (the process was killed); the complete checkpoints are untouched",
                stacklevel=2,
            )
        return removed

    def _point_last_at(self, path: Path) -> None:
        temporary = self.directory / f".{LAST_CHECKPOINT_NAME}.tmp-{os.getpid()}"
        if temporary.exists():
            temporary.unlink()
        try:
            os.link(path, temporary)
        except OSError:
            # Filesystems without hard links (some network / FAT mounts): copy instead.
            shutil.copyfile(path, temporary)
            with open(temporary, "rb+") as stream:
                os.fsync(stream.fileno())
        os.replace(temporary, self.last_path)
        _fsync_directory(self.directory)


def _process_is_running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes one checkpoint at a time: a file of its own is a leftover
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (or no possible process id)
        return False
    except PermissionError:
        return True  # another user's process: leave its file alone
    return True


def latest_checkpoint(directory: Path | str) -> Path | None:
    """``last.pt`` of a run directory, else its highest step checkpoint, else None."""
    keeper = CheckpointKeeper(Path(directory))
    if keeper.last_path.is_file():
        return keeper.last_path
    steps = keeper.step_checkpoints()
    return steps[-1] if steps else None
