"""CenterNet training targets of one image: Gaussian centre heatmap, and per object its centre
cell, sub-cell offset and box, all at the output stride.

Boxes that are ``ignore`` or narrower / lower than ``min_box_size`` input
pixels are no objects. Ignore boxes mark their cells as not counted by the
heatmap loss, except where an object's Gaussian reaches (that object's
evidence wins). Two objects with the same centre cell both keep their box and
embedding targets; the heatmap peak there is 1 once.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..config import CenterBoxEncoding

# Gaussian values below this fraction of the peak are zeroed, as CenterNet does (float32 eps)
_GAUSSIAN_FLOOR = float(torch.finfo(torch.float32).eps)


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float = 0.7) -> Tensor:
    """CenterNet's size-adaptive radius (element-wise, output-cell units).

    The smallest of three radii: the shift of a corner pair for which a box of
    this size still overlaps the ground truth by ``min_overlap`` IoU (both corners
    moved in, both out, one in and one out). The published code solves each
    quadratic as ``(b + sqrt(b^2 - 4ac)) / 2`` rather than dividing by ``2a``;
    that formula is kept, since FairMOT's and CenterNet's trained models and
    settings assume its radii.
    """
    height, width = height.double(), width.double()
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3).float()


@dataclasses.dataclass(frozen=True)
class CenterTargets:
    """Targets of one image at the output stride (N objects)."""

    heatmap: Tensor  # (H, W) float32 in [0, 1], exactly 1 at every object's centre cell
    counted: Tensor  # (H, W) bool: cells the heatmap loss counts
    cell_index: Tensor  # (N,) int64, flat centre cell row * W + column
    offset: Tensor  # (N, 2) centre - centre cell, in [0, 1)
    box: Tensor  # (N, 4) l, t, r, b from the centre, or (N, 2) w, h; output-cell units
    box_index: Tensor  # (N,) int64 into the image's boxes
    radius: Tensor  # (N,) int64 Gaussian radius in cells


def build_center_targets(
    boxes: Tensor,
    ignore: Tensor,
    map_size: tuple[int, int],
    stride: int,
    *,
    box_encoding: CenterBoxEncoding = "ltrb",
    min_overlap: float = 0.7,
    min_box_size: float = 1.0,
) -> CenterTargets:
    """Targets for ``boxes`` (N, 4) x1, y1, x2, y2 in input pixels with ``ignore`` (N,) flags."""
    height, width = map_size
    device = boxes.device
    boxes = boxes.float().reshape(-1, 4)
    ignore = ignore.to(device=device, dtype=torch.bool).reshape(-1)
    if ignore.shape[0] != boxes.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {ignore.shape[0]} ignore flags")
    sizes = boxes[:, 2:] - boxes[:, :2]
    cell_boxes = boxes / stride
    centres = (cell_boxes[:, :2] + cell_boxes[:, 2:]) / 2
    inside = (centres[:, 0] >= 0) & (centres[:, 0] < width) & (centres[:, 1] >= 0) & (centres[:, 1] < height)
    is_object = ~ignore & (sizes >= min_box_size).all(dim=1) & inside
    box_index = torch.nonzero(is_object).flatten()
    centre = centres[box_index]
    centre_cell = centre.floor().long()
    cell_box = cell_boxes[box_index]
    cell_size = cell_box[:, 2:] - cell_box[:, :2]
    radius = gaussian_radius(torch.ceil(cell_size[:, 1]), torch.ceil(cell_size[:, 0]), min_overlap)
    radius = radius.floor().clamp(min=0).long()
    heatmap = _gaussian_heatmap(centre_cell, radius, map_size)
    if box_encoding == "ltrb":
        box = torch.cat([centre - cell_box[:, :2], cell_box[:, 2:] - centre], dim=1)
    else:
        box = cell_size
    return CenterTargets(
        heatmap=heatmap,
        counted=~_inside_boxes(boxes[ignore], map_size, stride) | (heatmap > 0),
        cell_index=centre_cell[:, 1] * width + centre_cell[:, 0],
        offset=centre - centre_cell.float(),
        box=box,
        box_index=box_index,
        radius=radius,
    )


def _gaussian_heatmap(centre_cell: Tensor, radius: Tensor, map_size: tuple[int, int]) -> Tensor:
    """Max over objects of exp(-d^2 / (2 sigma^2)), sigma = (2r + 1) / 6, within r cells of the centre."""
    height, width = map_size
    device = centre_cell.device
    if centre_cell.shape[0] == 0:
        return torch.zeros(map_size, device=device)
    rows = torch.arange(height, device=device).view(1, height, 1)
    columns = torch.arange(width, device=device).view(1, 1, width)
    dy = (rows - centre_cell[:, 1].view(-1, 1, 1)).float()
    dx = (columns - centre_cell[:, 0].view(-1, 1, 1)).float()
    sigma = ((2 * radius + 1).float() / 6).view(-1, 1, 1)
    gaussians = torch.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))
    r = radius.view(-1, 1, 1)
    within = (dx.abs() <= r) & (dy.abs() <= r) & (gaussians >= _GAUSSIAN_FLOOR)
    return torch.where(within, gaussians, torch.zeros_like(gaussians)).amax(dim=0)


def _inside_boxes(boxes: Tensor, map_size: tuple[int, int], stride: int) -> Tensor:
    """(H, W) bool: cells whose centre (in input pixels) lies inside any of ``boxes``."""
    return cells_inside_each_box(boxes, map_size, stride).any(dim=0)


def cells_inside_each_box(boxes: Tensor, map_size: tuple[int, int], stride: int) -> Tensor:
    """(M, H, W) bool: per box (x1, y1, x2, y2 in input pixels), the cells whose centre lies inside it."""
    height, width = map_size
    device = boxes.device
    if boxes.shape[0] == 0:
        return torch.zeros((0, height, width), dtype=torch.bool, device=device)
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
    in_rows = (ys.view(1, -1) >= boxes[:, 1:2]) & (ys.view(1, -1) <= boxes[:, 3:4])  # (M, H)
    in_columns = (xs.view(1, -1) >= boxes[:, 0:1]) & (xs.view(1, -1) <= boxes[:, 2:3])  # (M, W)
    return in_rows[:, :, None] & in_columns[:, None, :]


__all__ = ["CenterTargets", "build_center_targets", "cells_inside_each_box", "gaussian_radius"]
