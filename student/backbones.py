"""Backbones with a P3-P7 feature pyramid, and loading of local ImageNet weights.

All backbones use ``FrozenBatchNorm2d`` (training batches are small) and feed
an FPN whose P6 and P7 come from P5 (``LastLevelP6P7(256, 256)``).

MobileNetV2 taps the last block of the stride-8, -16 and -32 stages
(``features`` 6, 13, 18; 32, 96 and 1280 channels) rather than using
torchvision's ``mobilenet_backbone(fpn=True)``, which returns two stride-32
maps and nothing at stride 8, where small pedestrians live.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

from torch import nn
from torchvision.models import mobilenet_v2, resnet18, resnet34, resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from teacher.state_dicts import (
    StateDictError,
    map_mobilenet_v2_features,
    read_state_dict,
    without_keys,
)

from .config import ModelConfig

# A backbone weights file that does not fit the backbone. The reading and MobileNetV2 layout
# mapping are shared with the MobileNetV2 teacher, so they share its error type.
BackboneWeightsError = StateDictError


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to cut a classification network into an FPN body."""

    build_classifier_network: Callable[[], nn.Module]
    # classification network -> the module whose children IntermediateLayerGetter walks
    feature_module: Callable[[nn.Module], nn.Module]
    return_layers: Mapping[str, str]
    in_channels: tuple[int, int, int]
    # child names per stage, shallowest first; the last N stages are trainable
    stages: tuple[tuple[str, ...], ...]
    # the last child of the stride-4 stage and its channels (the CenterNet family's C2)
    stride4_layer: str
    stride4_channels: int


def _resnet_spec(
    constructor: Callable[..., nn.Module], channels: tuple[int, int, int], stride4_channels: int
) -> BackboneSpec:
    return BackboneSpec(
        build_classifier_network=lambda: constructor(weights=None, norm_layer=FrozenBatchNorm2d),
        feature_module=lambda network: network,
        return_layers={"layer2": "C3", "layer3": "C4", "layer4": "C5"},
        in_channels=channels,
        stages=(("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)),
        stride4_layer="layer1",
        stride4_channels=stride4_channels,
    )


BACKBONE_SPECS: dict[str, BackboneSpec] = {
    "resnet18_fpn": _resnet_spec(resnet18, (128, 256, 512), 64),
    "resnet34_fpn": _resnet_spec(resnet34, (128, 256, 512), 64),
    "resnet50_fpn": _resnet_spec(resnet50, (512, 1024, 2048), 256),
    "mobilenet_v2_fpn": BackboneSpec(
        build_classifier_network=lambda: mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d),
        feature_module=lambda network: network.features,
        return_layers={"6": "C3", "13": "C4", "18": "C5"},
        in_channels=(32, 96, 1280),
        stages=tuple(
            tuple(str(i) for i in range(start, stop))
            for start, stop in ((0, 2), (2, 4), (4, 7), (7, 14), (14, 19))
        ),
        stride4_layer="3",
        stride4_channels=24,
    ),
}


def _features_with_frozen_stages(config: ModelConfig) -> nn.Module:
    """The randomly initialised classification features, all but the last
    ``trainable_backbone_stages`` stages frozen."""
    spec = BACKBONE_SPECS[config.backbone]
    features = spec.feature_module(spec.build_classifier_network())
    frozen_stages = spec.stages[: len(spec.stages) - config.trainable_backbone_stages]
    for stage in frozen_stages:
        for child_name in stage:
            features.get_submodule(child_name).requires_grad_(False)
    return features


def build_backbone(config: ModelConfig) -> BackboneWithFPN:
    """Randomly initialised backbone + FPN returning P3..P7 (keys "C3", "C4", "C5", "p6", "p7")."""
    spec = BACKBONE_SPECS[config.backbone]
    features = _features_with_frozen_stages(config)
    return BackboneWithFPN(
        features,
        return_layers=dict(spec.return_layers),
        in_channels_list=list(spec.in_channels),
        out_channels=config.fpn_channels,
        extra_blocks=LastLevelP6P7(config.fpn_channels, config.fpn_channels),
    )


def build_stride4_body(config: ModelConfig) -> tuple[IntermediateLayerGetter, tuple[int, int, int, int]]:
    """Randomly initialised body returning C2..C5 (strides 4, 8, 16, 32; keys "C2".."C5") and
    their channels, for necks that upsample to stride 4. Its state dict has the same keys as
    the FPN backbone's ``body``, so :func:`load_backbone_weights` fills it the same way."""
    spec = BACKBONE_SPECS[config.backbone]
    return_layers = {spec.stride4_layer: "C2", **spec.return_layers}
    body = IntermediateLayerGetter(_features_with_frozen_stages(config), return_layers=return_layers)
    return body, (spec.stride4_channels, *spec.in_channels)


def load_backbone_weights(backbone: nn.Module, backbone_name: str, path: str | Path) -> None:
    """Load local ImageNet weights into ``backbone.body`` (the FPN or neck stays randomly initialised).

    - ``mobilenet_v2_fpn``: a MobileNetV2 ``features.*`` state dict, old flat or current
      nested layout (``classifier.*`` dropped), mapped by order with shape checks.
    - ``resnet*_fpn``: a torchvision ResNet state dict (``fc.*`` dropped), matched by name.
    """
    source = read_state_dict(path)
    body = backbone.body
    target = body.state_dict()
    if backbone_name == "mobilenet_v2_fpn":
        mapped = map_mobilenet_v2_features(source, target, source_name=str(path))
    elif backbone_name in BACKBONE_SPECS:
        mapped = without_keys(source, ("fc.",))
        missing = sorted(set(target) - set(mapped))
        unexpected = sorted(set(mapped) - set(target))
        if missing or unexpected:
            raise BackboneWeightsError(
                f"{path} does not fit {backbone_name}: missing {missing[:5]} "
                f"({len(missing)} in all), unexpected {unexpected[:5]} ({len(unexpected)} in all)"
            )
        for key, expected in target.items():
            if mapped[key].shape != expected.shape:
                raise BackboneWeightsError(
                    f"{path}: {key!r} has shape {tuple(mapped[key].shape)}, "
                    f"{backbone_name} needs {tuple(expected.shape)}"
                )
    else:
        raise BackboneWeightsError(f"unknown backbone {backbone_name!r}")
    body.load_state_dict(mapped, strict=True)
