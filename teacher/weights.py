"""Teacher weights files: read once, hash, load safely, clean the keys, check them against the model.

Loading policy (see the package docstring): ``torch.load(weights_only=True)`` first. Only when
that refuses the file because it needs arbitrary unpickling, and the file is either a known
weights file (sha256 in ``KNOWN_ZOO_WEIGHTS``) or the user said ``trust_pickle``, is it
loaded with full pickle, and that is logged. Anything else is a TeacherError.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tdt.weights_only import failure_reason, refused_global
from teacher.errors import TeacherError
from teacher.registry import KNOWN_ZOO_WEIGHTS, TRUST_PICKLE_OPTION, KnownZooWeights, weights_hint

log = logging.getLogger(__name__)

_DATA_PARALLEL_PREFIX = "module."
_CLASSIFIER_PREFIX = "classifier."
# BatchNorm's step counter only matters with momentum=None; files saved before PyTorch 0.4.1 lack it.
_OPTIONAL_SUFFIX = ".num_batches_tracked"
_EXAMPLES = 3


@dataclass(frozen=True, eq=False)
class WeightsFile:
    """A weights file's cleaned backbone state dict and where it came from."""

    path: Path
    sha256: str
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    used_full_pickle: bool
    zoo_file: KnownZooWeights | None


def read_weights_file(path: Path, *, architecture: str, trust_pickle: bool) -> WeightsFile:
    """Read, hash and safely load ``path``; return its backbone state dict (no classifier)."""
    data = _read_bytes(path, architecture)
    sha256 = hashlib.sha256(data).hexdigest()
    zoo_file = KNOWN_ZOO_WEIGHTS.get(sha256)
    checkpoint, used_full_pickle = _load_checkpoint(
        data, path, architecture, trusted=trust_pickle or zoo_file is not None
    )
    state_dict = clean_state_dict(checkpoint, path=path, architecture=architecture)
    return WeightsFile(path, sha256, state_dict, used_full_pickle, zoo_file)


def clean_state_dict(checkpoint: object, *, path: Path, architecture: str) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}`` checkpoints, strip ``module.`` prefixes, drop ``classifier.*``."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping):
        raise TeacherError(
            f"teacher weights {path} hold a {type(checkpoint).__name__}, not a state dict. "
            f"{weights_hint(architecture)}"
        )
    cleaned: dict[str, torch.Tensor] = {}
    not_tensors: list[str] = []
    for key, value in checkpoint.items():
        name = str(key)
        while name.startswith(_DATA_PARALLEL_PREFIX):
            name = name[len(_DATA_PARALLEL_PREFIX) :]
        if name.startswith(_CLASSIFIER_PREFIX):
            continue
        if not isinstance(value, torch.Tensor):
            not_tensors.append(name)
            continue
        cleaned[name] = value
    if not_tensors:
        raise TeacherError(
            f"teacher weights {path}: {len(not_tensors)} entries are not tensors "
            f"(e.g. {', '.join(not_tensors[:_EXAMPLES])}). {weights_hint(architecture)}"
        )
    return cleaned


def check_backbone_keys(
    model_state: Mapping[str, torch.Tensor],
    weights: WeightsFile,
    *,
    architecture: str,
) -> None:
    """Refuse weights whose backbone keys or shapes differ from the model's (classifier ignored)."""
    expected = {k: v for k, v in model_state.items() if not k.startswith(_CLASSIFIER_PREFIX)}
    loaded = weights.state_dict
    missing = [k for k in expected if k not in loaded and not k.endswith(_OPTIONAL_SUFFIX)]
    unexpected = [k for k in loaded if k not in expected]
    wrong_shape = [
        f"{k} file {list(loaded[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if k in loaded and loaded[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or wrong_shape):
        return
    problems = [
        f"{len(found)} {what} (e.g. {'; '.join(found[:_EXAMPLES])})"
        for what, found in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("tensors of the wrong shape", wrong_shape),
        )
        if found
    ]
    raise weights_do_not_fit(weights, architecture, ", ".join(problems))


def weights_do_not_fit(weights: WeightsFile, architecture: str, problem: str) -> TeacherError:
    """The error for a file that does not fit ``architecture``; names the right one for a known zoo file."""
    known = ""
    if weights.zoo_file is not None and weights.zoo_file.architecture != architecture:
        known = (
            f" This file is the known weights file {weights.zoo_file.file_name} for "
            f"{weights.zoo_file.architecture}: use --teacher {weights.zoo_file.architecture} with it."
        )
    return TeacherError(
        f"teacher weights {weights.path} do not fit {architecture}: {problem}.{known} {weights_hint(architecture)}"
    )


def _read_bytes(path: Path, architecture: str) -> bytes:
    if not path.exists():
        raise TeacherError(f"teacher weights file not found: {path}. {weights_hint(architecture)}")
    if not path.is_file():
        raise TeacherError(f"teacher weights path is not a file: {path}. {weights_hint(architecture)}")
    try:
        return path.read_bytes()
    except OSError as error:
        raise TeacherError(
            f"cannot read teacher weights {path}: {error.strerror or error}. {weights_hint(architecture)}"
        ) from error


def _load_checkpoint(data: bytes, path: Path, architecture: str, *, trusted: bool) -> tuple[object, bool]:
    """Return (checkpoint, used_full_pickle)."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), False
    # Unpickling arbitrary bytes can fail with almost any exception type; all mean "unreadable".
    except Exception as error:
        safe_load_error = error
    needs = refused_global(safe_load_error)
    if not trusted:
        if needs is not None:
            raise TeacherError(
                f"teacher weights {path} refused: this file needs full unpickling, which can run code "
                f"(it is not a plain state dict: it refers to {needs}, and it is not a known model-zoo "
                f"file); load it only if you trust it (option {TRUST_PICKLE_OPTION}, or "
                f"TeacherConfig.trust_pickle=True). {weights_hint(architecture)}"
            ) from safe_load_error
        raise _unreadable(path, architecture, safe_load_error)
    log.warning("loading teacher weights %s with full pickle (trusted file)", path)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False), True
    # Same reason as above: a trusted but corrupt file fails in arbitrary ways.
    except Exception as error:
        raise _unreadable(path, architecture, error) from error


def _unreadable(path: Path, architecture: str, error: Exception) -> TeacherError:
    return TeacherError(
        f"cannot load teacher weights {path}: not a PyTorch weights file, or corrupt/truncated "
        f"({failure_reason(error)}). {weights_hint(architecture)}"
    )
