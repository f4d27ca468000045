"""Prediction heads applied to every FPN level (P3-P7).

Each head maps a list of per-level feature maps to one tensor with all levels
concatenated along the anchor axis, in the anchor order of
:class:`student.anchors.AnchorGrid` (level, row, column, anchor-in-cell).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

FOREGROUND_PRIOR = 0.01
EMBEDDING_OUTPUT_INIT_STD = 1e-3


def _flatten_level(output: Tensor, values_per_anchor: int) -> Tensor:
    """(B, A * K, H, W) -> (B, H * W * A, K)."""
    batch, channels, height, width = output.shape
    anchors = channels // values_per_anchor
    output = output.view(batch, anchors, values_per_anchor, height, width)
    return output.permute(0, 3, 4, 1, 2).reshape(batch, -1, values_per_anchor)


class ConvTower(nn.Sequential):
    """``depth`` x (conv3x3 -> ReLU), the shared trunk of a RetinaNet subnet."""

    def __init__(self, in_channels: int, width: int, depth: int) -> None:
        layers: list[nn.Module] = []
        for index in range(depth):
            conv = nn.Conv2d(in_channels if index == 0 else width, width, 3, padding=1)
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
        super().__init__(*layers)
        self.out_channels = width if depth > 0 else in_channels


class AnchorPredictionHead(nn.Module):
    """Tower + conv3x3 predicting ``values_per_anchor`` numbers for each of the A anchors."""

    def __init__(
        self,
        in_channels: int,
        anchors_per_location: int,
        values_per_anchor: int,
        width: int,
        depth: int,
        output_bias: float = 0.0,
    ) -> None:
        super().__init__()
        self.values_per_anchor = values_per_anchor
        self.tower = ConvTower(in_channels, width, depth)
        self.predictor = nn.Conv2d(
            self.tower.out_channels, anchors_per_location * values_per_anchor, 3, padding=1
        )
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.constant_(self.predictor.bias, output_bias)

    def forward(self, features: list[Tensor]) -> Tensor:
        return torch.cat(
            [_flatten_level(self.predictor(self.tower(x)), self.values_per_anchor) for x in features],
            dim=1,
        )


class ClassificationHead(AnchorPredictionHead):
    """Per-anchor class logits; the output bias starts at the focal-loss prior (p = 0.01)."""

    def __init__(
        self, in_channels: int, anchors_per_location: int, num_classes: int, width: int, depth: int
    ) -> None:
        super().__init__(
            in_channels,
            anchors_per_location,
            num_classes,
            width,
            depth,
            output_bias=-math.log((1 - FOREGROUND_PRIOR) / FOREGROUND_PRIOR),
        )


class BoxRegressionHead(AnchorPredictionHead):
    """Per-anchor box deltas (dx, dy, dw, dh) for ``BoxCoder(weights=(1, 1, 1, 1))``."""

    def __init__(self, in_channels: int, anchors_per_location: int, width: int, depth: int) -> None:
        super().__init__(in_channels, anchors_per_location, 4, width, depth)


class _EmbeddingBranch(nn.Module):
    """conv3x3 -> BN (one per level) -> ReLU -> conv3x3 to ``out_channels``; the layers only
    (:class:`EmbeddingHead` applies them densely, :mod:`student.sparse_head` at chosen anchors)."""

    def __init__(self, in_channels: int, width: int, out_channels: int, num_norms: int) -> None:
        super().__init__()
        self.hidden = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.norms = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(num_norms))
        self.output = nn.Conv2d(width, out_channels, 3, padding=1)
        nn.init.normal_(self.hidden.weight, std=0.01)
        # a small last layer keeps the initial L2 loss near |teacher|^2 instead of ~150
        nn.init.normal_(self.output.weight, std=EMBEDDING_OUTPUT_INIT_STD)
        nn.init.zeros_(self.output.bias)


class EmbeddingHead(nn.Module):
    """Re-ID embedding regression head, parallel to the class and box subnets.

    ``per_anchor`` (TDT): A * D outputs per location, output (B, num_anchors, D).
    ``per_location`` (JDE style): D outputs per location shared by its A
    anchors, output (B, num_locations, D); anchor ``i`` reads location
    ``i // A``. With convs shared across levels each level keeps its own BN,
    since the levels' activation statistics differ.
    """

    def __init__(
        self,
        in_channels: int,
        embedding_dim: int,
        anchors_per_location: int,
        width: int,
        num_levels: int,
        per_anchor: bool,
        share_convs_across_levels: bool,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.per_anchor = per_anchor
        self.share_convs_across_levels = share_convs_across_levels
        out_channels = embedding_dim * (anchors_per_location if per_anchor else 1)
        if share_convs_across_levels:
            branches = [_EmbeddingBranch(in_channels, width, out_channels, num_norms=num_levels)]
        else:
            branches = [
                _EmbeddingBranch(in_channels, width, out_channels, num_norms=1) for _ in range(num_levels)
            ]
        self.branches = nn.ModuleList(branches)
        self.num_levels = num_levels

    def level_modules(self, level: int) -> tuple[_EmbeddingBranch, nn.BatchNorm2d]:
        """The branch (convs) and the BN that level ``level`` uses."""
        if self.share_convs_across_levels:
            branch = self.branches[0]
            return branch, branch.norms[level]
        branch = self.branches[level]
        return branch, branch.norms[0]

    def forward(self, features: list[Tensor]) -> Tensor:
        """The whole map of every level (dense); see :mod:`student.sparse_head` for chosen anchors."""
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(features)}")
        outputs = []
        for level, x in enumerate(features):
            branch, norm = self.level_modules(level)
            output = branch.output(torch.relu(norm(branch.hidden(x))))
            outputs.append(_flatten_level(output, self.embedding_dim))
        return torch.cat(outputs, dim=1)
