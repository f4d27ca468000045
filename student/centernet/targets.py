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


def cell_positions(cell_index: Tensor, width: int) -> Tensor:
    """(N, 2) int64 column, row of flat cell indices on a map ``width`` cells wide."""
    return torch.stack([cell_index % width, torch.div(cell_index, width, rounding_mode="floor")], dim=1)


def box_corners(centre: Tensor, box: Tensor) -> Tensor:
    """(N, 4) x1, y1, x2, y2 of boxes at ``centre`` (N, 2) encoded as ltrb (N, 4) or wh (N, 2)."""
    if box.shape[1] == 4:
        return torch.cat([centre - box[:, :2], centre + box[:, 2:]], dim=1)
    return torch.cat([centre - box / 2, centre + box / 2], dim=1)


def object_corners(targets: CenterTargets) -> Tensor:
    """(N, 4) x1, y1, x2, y2 of each object in output-cell units, from its centre and encoded box."""
    return box_corners(
        cell_positions(targets.cell_index, targets.map_width).float() + targets.offset, targets.box
    )


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
    map_width: int  # W, to turn ``cell_index`` back into columns and rows


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
        map_width=width,
    )


@dataclasses.dataclass(frozen=True)
class BoxSamples:
    """The cells of one image where the box is regressed, and how much each counts."""

    cell_index: Tensor  # (S,) int64 flat cell
    object_index: Tensor  # (S,) int64 into the image's objects (``CenterTargets`` rows)
    weight: Tensor  # (S,) float32; each object's weights sum to 1


def box_samples(targets: CenterTargets, map_size: tuple[int, int], fraction: float) -> BoxSamples:
    """TTFNet's regression samples: each object's centre cell and every cell whose centre lies in the
    middle ``fraction`` of its box (width and height scaled by ``fraction`` about the centre), weighted
    by an elliptical Gaussian of sigma = fraction x size / 6 and normalised to sum 1 per object.

    CenterNet regresses a box at one cell per object, which makes few samples in a
    short schedule; the cells around the centre see nearly the same person and add
    samples at no cost. A cell inside several objects' areas regresses the smallest
    one (whose area is otherwise easily covered). ``fraction`` 0 gives the centre
    cells alone, each with weight 1.
    """
    height, width = map_size
    device = targets.cell_index.device
    count = len(targets.cell_index)
    if fraction <= 0.0 or count == 0:
        index = torch.arange(count, device=device)
        return BoxSamples(targets.cell_index, index, torch.ones(count, device=device))
    corners = object_corners(targets)
    centre = (corners[:, :2] + corners[:, 2:]) / 2
    size = (corners[:, 2:] - corners[:, :2]).clamp(min=1e-6)
    half = fraction * size / 2
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    dx = xs.view(1, 1, -1) - centre[:, 0].view(-1, 1, 1)  # (N, 1, W)
    dy = ys.view(1, -1, 1) - centre[:, 1].view(-1, 1, 1)  # (N, H, 1)
    inside = (dx.abs() <= half[:, 0].view(-1, 1, 1)) & (dy.abs() <= half[:, 1].view(-1, 1, 1))
    inside = inside.flatten(1).clone()
    inside[torch.arange(count, device=device), targets.cell_index] = True
    # the smallest object claims a shared cell: rank objects by area, keep the lowest rank per cell
    area_rank = torch.empty(count, dtype=torch.long, device=device)
    area_rank[torch.argsort(size.prod(dim=1), stable=True)] = torch.arange(count, device=device)
    ranks = torch.where(inside, area_rank.view(-1, 1), torch.full_like(inside, count, dtype=torch.long))
    owner = ranks.argmin(dim=0)  # (H * W,)
    claimed = inside & (torch.arange(count, device=device).view(-1, 1) == owner.view(1, -1))
    # an object whose every cell went to smaller ones keeps its centre cell
    lost = ~claimed.any(dim=1)
    claimed[lost, targets.cell_index[lost]] = True
    object_index, cell_index = torch.nonzero(claimed, as_tuple=True)
    # the Gaussian only where it is read: a few cells per object, not the whole map
    sigma = (fraction * size / 6).clamp(min=1e-3)[object_index]
    offsets = cell_positions(cell_index, width).float() + 0.5 - centre[object_index]
    weight = torch.exp(-(offsets**2 / (2 * sigma**2)).sum(dim=1)).clamp(min=_GAUSSIAN_FLOOR)
    totals = torch.zeros(count, device=device).index_add_(0, object_index, weight)
    return BoxSamples(cell_index, object_index, weight / totals[object_index])


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


__all__ = [
    "BoxSamples",
    "CenterTargets",
    "box_corners",
    "box_samples",
    "build_center_targets",
    "cell_positions",
    "cells_inside_each_box",
    "gaussian_radius",
    "object_corners",
]
