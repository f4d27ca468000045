"""RetinaNet anchors on the FPN levels P3-P7.

Aspect ratios here are WIDTH / HEIGHT (0.25: four times taller than wide, a
standing pedestrian). torchvision's ``AnchorGenerator`` takes HEIGHT / WIDTH;
:func:`torchvision_aspect_ratios` converts for anyone who needs it.

We generate anchors ourselves instead of using ``AnchorGenerator`` because it
derives each level's stride as ``image_size // feature_size``: for inputs that
are not multiples of 128 (e.g. 432 x 576) P6/P7 get strides like 108 instead of
128 and their anchors drift off the feature grid. Here strides are the nominal
8, 16, 32, 64, 128. Otherwise the layout is torchvision's: anchor centres at
``(x * stride, y * stride)``, ordered level, row, column, then anchor-in-cell
(aspect ratio major, scale minor), and sizes are sqrt(area) (no rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .config import FPN_STRIDES, ModelConfig


def torchvision_aspect_ratios(width_over_height: Sequence[float]) -> tuple[float, ...]:
    """Convert our width/height ratios to torchvision's height/width convention."""
    return tuple(1.0 / ratio for ratio in width_over_height)


def cell_anchor_shapes(base_size: float, scales: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """(A, 2) widths and heights of one level's anchors, aspect ratio major, scale minor."""
    shapes = []
    for ratio in aspect_ratios:
        for scale in scales:
            size = base_size * scale
            shapes.append((size * math.sqrt(ratio), size / math.sqrt(ratio)))
    return torch.tensor(shapes, dtype=torch.float64)


class AnchorGrid:
    """Anchors (x1, y1, x2, y2 in input pixels) for given FPN feature-map sizes, cached."""

    def __init__(
        self,
        base_sizes: Sequence[float],
        scales: Sequence[float],
        aspect_ratios: Sequence[float],
        strides: Sequence[int] = FPN_STRIDES,
    ) -> None:
        if len(base_sizes) != len(strides):
            raise ValueError(f"need one base size per stride, got {base_sizes} for {strides}")
        self.strides = tuple(int(s) for s in strides)
        self.cell_shapes = [cell_anchor_shapes(b, scales, aspect_ratios) for b in base_sizes]
        self.anchors_per_location = len(scales) * len(aspect_ratios)
        self._cache: dict[tuple, list[Tensor]] = {}

    @classmethod
    def from_config(cls, config: ModelConfig) -> AnchorGrid:
        return cls(config.anchor_base_sizes, config.anchor_scales, config.anchor_aspect_ratios)

    def per_level(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> list[Tensor]:
        """One (H_l * W_l * A, 4) tensor per level for feature maps of (H_l, W_l)."""
        if len(feature_sizes) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} feature maps, got {len(feature_sizes)}")
        sizes = tuple((int(h), int(w)) for h, w in feature_sizes)
        key = (sizes, torch.device(device), dtype)
        if key not in self._cache:
            self._cache[key] = [
                self._level_anchors(size, stride, shapes).to(device=device, dtype=dtype)
                for size, stride, shapes in zip(sizes, self.strides, self.cell_shapes, strict=True)
            ]
        return self._cache[key]

    def __call__(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """All levels concatenated: (sum_l H_l * W_l * A, 4)."""
        return torch.cat(self.per_level(feature_sizes, device, dtype))

    @staticmethod
    def _level_anchors(size: tuple[int, int], stride: int, shapes: Tensor) -> Tensor:
        height, width = size
        centre_y, centre_x = torch.meshgrid(
            torch.arange(height, dtype=torch.float64) * stride,
            torch.arange(width, dtype=torch.float64) * stride,
            indexing="ij",
        )
        centres = torch.stack([centre_x, centre_y, centre_x, centre_y], dim=-1).reshape(-1, 1, 4)
        half = shapes / 2
        offsets = torch.cat([-half, half], dim=1).reshape(1, -1, 4)
        return (centres + offsets).reshape(-1, 4)


def feature_sizes_for_input(height: int, width: int) -> list[tuple[int, int]]:
    """FPN P3-P7 sizes the backbones produce: every stride-2 conv (padding 1) rounds up."""
    sizes = []
    h, w = height, width
    for _ in range(7):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes[2:]
