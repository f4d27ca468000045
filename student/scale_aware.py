"""CSTrack's scale-aware attention network (SAAN): one stride-8 embedding map fused from P3, P4 and P5.

Liang et al. (CSTrack) argue that a per-level embedding head gives people of
different sizes embeddings from different semantic levels (a small person's
from P3, a tall one's from P5), which then have to be compared; SAAN instead
builds one embedding map from the three levels for every person:

1. P3 (stride 8), P4 (16) and P5 (32) are each encoded by conv3x3 -> BN -> ReLU
   (``width`` channels) and brought to P3's size (bilinear). Encoding before
   upsampling, as CSTrack does, runs the convolution on 4x and 16x fewer
   locations for P4 and P5 than encoding the upsampled maps would.
2. Each is weighted by a spatial attention map: channel-wise mean and max ->
   conv7x7 -> sigmoid, applied as x * (1 + a) (residual: where a is 0 the
   features pass unchanged).
3. The three are concatenated (3 x ``width`` channels) and weighted by channel
   attention: global average and max pool -> one shared small network (1x1
   conv to 1/16 of the channels -> ReLU -> 1x1 conv back) applied to each ->
   sum -> sigmoid, again x * (1 + a).
4. A conv3x3 to D_s gives the embedding map. Its weights start small, as the
   other embedding heads' last convs, so that the first L2 loss is about
   |teacher|^2; std 1e-4 rather than their 1e-3, since it reads three times as
   many channels, amplified up to four times by the two attentions (with 1e-3
   the initial embeddings' squared norm was ~1.8 on a PETS frame against ~0.15
   for the per-location head).

Sparse evaluation. Steps 1-3 are dense: the channel attention pools the whole
map and the spatial attention's 7x7 window reads far around each location, so
the attended map (B, 3 x width, H/8, W/8) is always computed in full. Only the
last conv3x3 is evaluated at the points read (:meth:`ScaleAwareEmbeddings.at_points`):
an output cell depends on the 3x3 window of the attended map around it (zero
outside the map), so gathering those windows and applying the conv as one
matrix product is exact (tested against the dense map). It is the widest layer
(3 x width x 9 inputs per output), so on a map of thousands of cells and a
handful of people this saves most of its cost; ``dense_embeddings`` computes it
everywhere instead.

Where the map is read: a point (x, y) in input pixels reads the cell nearest to
it on the stride-8 grid (cell (r, c) sits at pixel (8c, 8r), like the anchor
centres of P3), clamped to the map.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SCALE_AWARE_LEVELS = 3  # P3, P4, P5
CHANNEL_REDUCTION = 16
SPATIAL_KERNEL = 7
EMBEDDING_OUTPUT_INIT_STD = 1e-4


class SpatialAttention(nn.Module):
    """x * (1 + a), a = sigmoid(conv7x7([mean over channels, max over channels])), (B, 1, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, SPATIAL_KERNEL, padding=SPATIAL_KERNEL // 2)

    def attention(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, x: Tensor) -> Tensor:
        return x * (1 + self.attention(x))


class ChannelAttention(nn.Module):
    """x * (1 + a), a = sigmoid(mlp(avg pool x) + mlp(max pool x)), (B, C, 1, 1), one shared mlp."""

    def __init__(self, channels: int, reduction: int = CHANNEL_REDUCTION) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))

    def attention(self, x: Tensor) -> Tensor:
        average = x.mean(dim=(2, 3), keepdim=True)
        maximum = x.amax(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(average) + self.mlp(maximum))

    def forward(self, x: Tensor) -> Tensor:
        return x * (1 + self.attention(x))


def _encoder(in_channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
    )


class ScaleAwareEmbedding(nn.Module):
    """SAAN: ``attended(levels)`` is the dense (B, 3 x width, H3, W3) map of steps 1-3,
    ``forward(levels)`` the dense (B, D_s, H3, W3) embedding map; ``levels`` starts with P3, P4, P5."""

    def __init__(self, in_channels: int, width: int, embedding_dim: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.encoders = nn.ModuleList(_encoder(in_channels, width) for _ in range(SCALE_AWARE_LEVELS))
        self.spatial_attention = nn.ModuleList(SpatialAttention() for _ in range(SCALE_AWARE_LEVELS))
        self.channel_attention = ChannelAttention(SCALE_AWARE_LEVELS * width)
        self.output = nn.Conv2d(SCALE_AWARE_LEVELS * width, embedding_dim, 3, padding=1)
        nn.init.normal_(self.output.weight, std=EMBEDDING_OUTPUT_INIT_STD)
        nn.init.zeros_(self.output.bias)

    def attended(self, levels: Sequence[Tensor]) -> Tensor:
        if len(levels) < SCALE_AWARE_LEVELS:
            raise ValueError(f"expected at least {SCALE_AWARE_LEVELS} maps (P3, P4, P5), got {len(levels)}")
        size = levels[0].shape[-2:]
        branches = []
        encoders = zip(levels[:SCALE_AWARE_LEVELS], self.encoders, self.spatial_attention, strict=True)
        for level, encoder, spatial in encoders:
            encoded = encoder(level)
            if encoded.shape[-2:] != size:
                encoded = F.interpolate(encoded, size=size, mode="bilinear", align_corners=False)
            branches.append(spatial(encoded))
        return self.channel_attention(torch.cat(branches, dim=1))

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        return self.output(self.attended(levels))


@dataclasses.dataclass(frozen=True)
class ScaleAwareEmbeddings:
    """A batch's attended SAAN map and the module's output conv, read at points on demand;
    ``dense`` holds the whole (B, D_s, H3, W3) map when the model ran with dense embeddings."""

    module: ScaleAwareEmbedding
    attended: Tensor  # (B, 3 x width, H3, W3)
    stride: int  # P3's, in input pixels
    dense: Tensor | None = None

    @property
    def map_size(self) -> tuple[int, int]:
        return (int(self.attended.shape[-2]), int(self.attended.shape[-1]))

    def cells_at(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Row and column of the stride-8 cell nearest to each (x, y) of ``points`` (K, 2), clamped."""
        height, width = self.map_size
        grid = torch.floor(points.float() / self.stride + 0.5).long()
        return grid[:, 1].clamp(0, height - 1), grid[:, 0].clamp(0, width - 1)

    def at_points(self, image_index: Tensor, points: Tensor) -> Tensor:
        """(K, D_s) raw embeddings at ``points`` (K, 2) x, y in input pixels of images ``image_index`` (K,)."""
        if points.ndim != 2 or points.shape[1] != 2 or image_index.shape != points.shape[:1]:
            raise ValueError(
                f"points {tuple(points.shape)} and image_index {tuple(image_index.shape)} "
                "must be (K, 2) and (K,)"
            )
        rows, columns = self.cells_at(points)
        if self.dense is not None:
            return self.dense[image_index, :, rows, columns]
        return conv3x3_at_cells(self.module.output, self.attended, image_index, rows, columns)


def conv3x3_at_cells(
    conv: nn.Conv2d, features: Tensor, image_index: Tensor, rows: Tensor, columns: Tensor
) -> Tensor:
    """(K, out): ``conv`` (3x3, stride 1, zero padding 1) of ``features`` (B, C, H, W) at the given cells,
    from the 3x3 windows around them as one matrix product."""
    padded = F.pad(features, (1, 1, 1, 1))
    offsets = torch.arange(3, device=features.device)
    window_rows = (rows[:, None] + offsets[None, :])[:, :, None]  # (K, 3, 1) in padded coordinates
    window_columns = (columns[:, None] + offsets[None, :])[:, None, :]  # (K, 1, 3)
    windows = padded[image_index[:, None, None], :, window_rows, window_columns]  # (K, 3, 3, C)
    windows = windows.permute(0, 3, 1, 2).flatten(1)  # (K, C * 9), the conv weight's order
    return F.linear(windows, conv.weight.flatten(1), conv.bias)
