"""CSTrack's reciprocal network (REN): one shared feature map -> a detection map and a re-ID map.

Liang et al., "Rethinking the Competition Between Detection and ReID in
Multiobject Tracking" (CSTrack): detection and re-ID read the same features but
want different things of them (the class of a location vs. what tells two
people apart), so the network learns, per image, how each task mixes the
channels. For a map x (C x H x W):

1. average-pool x to a fixed N' = 6 x 10 grid (the image's global layout, the
   same N' whatever the level's size);
2. two convolutions (conv3x3 -> InstanceNorm -> LeakyReLU, one per task) give
   channel descriptors M_det and M_reid (C x N'); the instance norm makes each
   channel's row zero-mean and unit-variance over the grid, so the products
   below compare channels by the pattern of their responses, not their scale;
3. self-relation  W^T_k = row-softmax(M_k M_k^T) (C x C), cross-relation
   W^S_k = row-softmax(M_k M_h^T) (h the other task), fused
   W_k = lambda_k W^T_k + (1 - lambda_k) W^S_k; lambda_k = sigmoid(a learned
   logit, 0 at start: 0.5 as CSTrack), so every row of W_k stays a convex mix
   (rows sum to 1, entries in [0, 1]);
4. task map_k = x + W_k (P_k x), P_k a 1x1 convolution, computed as
   (W_k P_k) x + W_k b_k: the C x C product is formed once per image, so a
   location costs one C x C matrix-vector product per task.

P_k starts at zero, so at initialisation both maps equal x exactly: a model
with REN starts as the model without it (the class / box prior and the small
embedding output keep their meaning) and the relations take effect as P_k
learns. Until then only P_k receives gradients (the relations' are zero).

The same module is applied to every FPN level: the class, box and embedding
subnets that read its outputs are shared across levels too, so what they read
must be the same function of every level's features; the relation matrices
are still computed from each level's own pooled descriptors, per image. The
CenterNet family applies it once, to the neck's stride-4 map.

Both maps are computed densely: the detection map is read everywhere by the
class and box subnets, and the re-ID map costs the same per location (a
sparse embedding head on top of it still runs only where it is read).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# CSTrack's pooled grid (rows x columns): N' = 60 cells
RELATION_GRID = (6, 10)
DESCRIPTOR_NEGATIVE_SLOPE = 0.1


def _channel_descriptor(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.InstanceNorm2d(channels),
        nn.LeakyReLU(DESCRIPTOR_NEGATIVE_SLOPE),
    )


def _zero_projection(channels: int) -> nn.Conv2d:
    projection = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(projection.weight)
    nn.init.zeros_(projection.bias)
    return projection


class ReciprocalNetwork(nn.Module):
    """REN on (B, C, H, W) maps: ``forward(x)`` -> (detection map, re-ID map), each (B, C, H, W)."""

    def __init__(self, channels: int, relation_grid: tuple[int, int] = RELATION_GRID) -> None:
        super().__init__()
        self.channels = channels
        self.pool = nn.AdaptiveAvgPool2d(relation_grid)
        self.detection_descriptor = _channel_descriptor(channels)
        self.reid_descriptor = _channel_descriptor(channels)
        self.detection_projection = _zero_projection(channels)
        self.reid_projection = _zero_projection(channels)
        # logits of lambda_det and lambda_reid, the self-relation's share of each task's W
        self.self_relation_logits = nn.Parameter(torch.zeros(2))

    @property
    def self_relation_weights(self) -> Tensor:
        """(lambda_det, lambda_reid), each in (0, 1)."""
        return torch.sigmoid(self.self_relation_logits)

    def relations(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """W_det and W_reid, each (B, C, C) with rows summing to 1."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected (B, {self.channels}, H, W) features, got {tuple(x.shape)}")
        pooled = self.pool(x)
        detection = self.detection_descriptor(pooled).flatten(2)  # (B, C, N')
        reid = self.reid_descriptor(pooled).flatten(2)
        lambda_detection, lambda_reid = self.self_relation_weights.unbind()
        detection_relation = _fused_relation(detection, reid, lambda_detection)
        reid_relation = _fused_relation(reid, detection, lambda_reid)
        return detection_relation, reid_relation

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        detection_relation, reid_relation = self.relations(x)
        return (
            x + _mixed(detection_relation, self.detection_projection, x),
            x + _mixed(reid_relation, self.reid_projection, x),
        )


def _fused_relation(own: Tensor, other: Tensor, self_weight: Tensor) -> Tensor:
    """lambda row-softmax(own own^T) + (1 - lambda) row-softmax(own other^T), (B, C, C)."""
    self_relation = F.softmax(torch.bmm(own, own.transpose(1, 2)), dim=-1)
    cross_relation = F.softmax(torch.bmm(own, other.transpose(1, 2)), dim=-1)
    return self_weight * self_relation + (1 - self_weight) * cross_relation


def _mixed(relation: Tensor, projection: nn.Conv2d, x: Tensor) -> Tensor:
    """relation @ projection(x) per image, as (relation @ P) x + relation @ b."""
    batch, channels, height, width = x.shape
    mixing = torch.matmul(relation, projection.weight.view(channels, channels))  # (B, C, C)
    offset = torch.matmul(relation, projection.bias)  # (B, C)
    flat = x.reshape(batch, channels, height * width)
    return torch.baddbmm(offset[:, :, None], mixing, flat).view(batch, channels, height, width)
