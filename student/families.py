"""Model families: ``ModelConfig.family`` -> how to build that detector and its training loss.

Training (:mod:`student.engine`), ``student.load`` and the benchmarks build
students only through :func:`build_student` and :func:`build_criterion`, so a
new family is one :class:`ModelFamily` entry in
:data:`FAMILIES` plus its name in :data:`student.config.ModelFamilyName` (the
config validates names without importing the models; a test keeps the two
lists equal). A checkpoint records its model config, family included, and
loading it against a config of another family is refused like any other
architecture difference.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from tdt.config import ConfigError

from .anchor_decoding import decode_anchor_outputs
from .backbones import load_backbone_weights
from .centernet import CenterNetCriterion, CenterNetDetector, decode_center_outputs
from .config import LossConfig, ModelConfig
from .detections import InputDetections
from .losses import StudentCriterion
from .model import StudentDetector


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """How one detector design is built.

    ``build_detector(model_config)`` returns the network, whose ``backbone``
    attribute takes ImageNet weights; ``build_criterion(loss_config,
    model_config, num_identities)`` returns the loss module (its parameters,
    if any, are trained and checkpointed with the model); ``postprocess(outputs,
    model_config)`` turns the detector's outputs into per-image
    :class:`student.detections.InputDetections`.
    """

    name: str
    build_detector: Callable[[ModelConfig], nn.Module]
    build_criterion: Callable[[LossConfig, ModelConfig, int], nn.Module]
    postprocess: Callable[[Any, ModelConfig], list[InputDetections]]


FAMILIES: Mapping[str, ModelFamily] = {
    "retinanet": ModelFamily("retinanet", StudentDetector, StudentCriterion, decode_anchor_outputs),
    "centernet": ModelFamily("centernet", CenterNetDetector, CenterNetCriterion, decode_center_outputs),
}


def model_family(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"model family {name!r} is not one of {sorted(FAMILIES)}") from None


def build_student(
    config: ModelConfig,
    backbone_weights: str | Path | None = None,
    *,
    warn_if_random_backbone: bool = True,
) -> nn.Module:
    """Build the student of ``config.family``; ``backbone_weights`` is a local ImageNet state
    dict (see :func:`student.backbones.load_backbone_weights`). Without it the backbone is
    randomly initialised and, unless ``warn_if_random_backbone`` is False (e.g. weights come
    next from a checkpoint), a warning says so.
    """
    model = model_family(config.family).build_detector(config)
    if backbone_weights is not None:
        load_backbone_weights(model.backbone, config.backbone, backbone_weights)
    elif warn_if_random_backbone:
        warnings.warn(
            f"{config.backbone}: no --backbone-weights given, backbone randomly initialised "
            "(fine for tests, not for reported numbers)",
            stacklevel=2,
        )
    return model


def build_criterion(loss_config: LossConfig, model_config: ModelConfig, num_identities: int = 0) -> nn.Module:
    """The training loss of ``model_config.family`` (``num_identities`` for identity losses)."""
    return model_family(model_config.family).build_criterion(loss_config, model_config, num_identities)


__all__ = ["FAMILIES", "ModelFamily", "build_criterion", "build_student", "model_family"]
