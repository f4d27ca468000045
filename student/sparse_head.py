"""The embedding head evaluated only at chosen anchors, exactly as the dense head computes them.

The head is conv3x3 -> BN -> ReLU -> conv3x3 on one FPN level, so its output
at a location depends on the 3x3 hidden activations around it, each computed
from the 3x3 features around that position: a 5x5 window of the level's
features. Both convs pad with zeros, so a hidden position outside the map
contributes zero (it is not computed from the padded features), and an input
position outside the map is zero.

:func:`embeddings_at_anchors` takes (image, anchor) pairs, finds the distinct
centre locations and the distinct in-map hidden positions around them, gathers
each hidden position's 3x3 feature window, applies the hidden conv as one
matrix product, BN and ReLU, then the output conv as a matrix product over the
3x3 hidden neighbourhood of each centre (per-anchor head: only the rows of the
anchor's own D outputs). Only gather / matmul ops run, on the features' device
and dtype (autocast applies); the host learns a few counts per level, never a
per-anchor value.

Batch statistics in training. The dense head normalises with the statistics of
every position of the map, which is mostly background, while the loss reads a
few anchors on people. Here BN sees each in-map hidden position that the
gathered outputs read, once: the activations the loss actually depends on.
Inference reads the head only at detections, so running statistics gathered
over the same kind of locations describe what the head sees at test time (the
dense statistics describe background instead). When every location is
gathered this is exactly the dense head's BN (tested). A level whose gathered
windows hold a single hidden position (a 1x1 map) has no batch variance: it
is normalised with the running statistics and leaves them unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads import EmbeddingHead

# 3x3 neighbourhood offsets in the conv kernel's (row, column) order
_ROW_OFFSETS = (-1, -1, -1, 0, 0, 0, 1, 1, 1)
_COLUMN_OFFSETS = (-1, 0, 1, -1, 0, 1, -1, 0, 1)


@dataclasses.dataclass(frozen=True)
class SparseEmbeddings:
    """An embedding head and the pyramid it reads, evaluated on demand.

    ``at_anchors`` gives the raw embeddings of chosen anchors (what
    ``StudentOutputs.anchor_embeddings`` returns); ``dense`` the whole map, as
    :meth:`student.heads.EmbeddingHead.forward`.
    """

    head: EmbeddingHead
    features: tuple[Tensor, ...]
    anchors_per_location: int

    def at_anchors(self, image_index: int | Tensor, anchor_indices: Tensor) -> Tensor:
        if isinstance(image_index, int):
            image_index = torch.full_like(anchor_indices, image_index)
        return embeddings_at_anchors(
            self.head, self.features, image_index, anchor_indices, self.anchors_per_location
        )

    def dense(self) -> Tensor:
        return self.head(list(self.features))


def embeddings_at_anchors(
    head: EmbeddingHead,
    features: Sequence[Tensor],
    image_index: Tensor,
    anchor_indices: Tensor,
    anchors_per_location: int,
) -> Tensor:
    """(K, D) raw embeddings of anchors ``anchor_indices`` (K,) of images ``image_index`` (K,).

    Anchors are numbered as in :class:`student.anchors.AnchorGrid` (level, row,
    column, anchor-in-cell) over the maps ``features`` (P3..P7, each (B, C, H, W)).
    Equal, up to float rounding, to indexing the dense head's output.
    """
    if len(features) != head.num_levels:
        raise ValueError(f"expected {head.num_levels} feature maps, got {len(features)}")
    if image_index.shape != anchor_indices.shape or anchor_indices.ndim != 1:
        raise ValueError(
            f"image_index {tuple(image_index.shape)} and anchor_indices {tuple(anchor_indices.shape)} "
            "must be two (K,) tensors"
        )
    level_shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
    _check_ranges(image_index, anchor_indices, int(features[0].shape[0]), level_shapes, anchors_per_location)
    level, row, column, cell = _locate(anchor_indices, level_shapes, anchors_per_location)
    order = torch.argsort(level, stable=True)
    counts = torch.bincount(level, minlength=len(features)).tolist()
    parts = []
    used_levels = []
    for level_index, queries in enumerate(order.split(counts)):
        if len(queries) == 0:
            continue
        used_levels.append(level_index)
        branch, norm = head.level_modules(level_index)
        parts.append(
            _level_embeddings(
                branch,
                norm,
                features[level_index],
                _Queries(image_index[queries], row[queries], column[queries], cell[queries]),
                head.embedding_dim if head.per_anchor else None,
            )
        )
    if parts:
        result = torch.cat(parts)[torch.argsort(order)]
    else:
        result = features[0].new_zeros((0, head.embedding_dim))
    return _with_unused_parameters(result, head, used_levels)


@dataclasses.dataclass(frozen=True)
class _Queries:
    image: Tensor
    row: Tensor
    column: Tensor
    cell: Tensor  # anchor-in-cell


def _check_ranges(
    image_index: Tensor,
    anchor_indices: Tensor,
    batch_size: int,
    level_shapes: Sequence[tuple[int, int]],
    anchors_per_location: int,
) -> None:
    if anchor_indices.numel() == 0:
        return
    num_anchors = sum(h * w for h, w in level_shapes) * anchors_per_location
    bounds = torch.stack([anchor_indices.min(), anchor_indices.max(), image_index.min(), image_index.max()])
    lowest_anchor, highest_anchor, lowest_image, highest_image = bounds.tolist()
    if lowest_anchor < 0 or highest_anchor >= num_anchors:
        raise IndexError(
            f"anchor indices {lowest_anchor}..{highest_anchor} outside 0..{num_anchors - 1} "
            f"(feature maps {list(level_shapes)}, {anchors_per_location} anchors per location)"
        )
    if lowest_image < 0 or highest_image >= batch_size:
        raise IndexError(f"image indices {lowest_image}..{highest_image} outside a batch of {batch_size}")


def _locate(
    anchor_indices: Tensor, level_shapes: Sequence[tuple[int, int]], anchors_per_location: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Level, row, column and anchor-in-cell of every anchor index."""
    device = anchor_indices.device
    sizes = torch.tensor([h * w * anchors_per_location for h, w in level_shapes], device=device)
    ends = torch.cumsum(sizes, 0)
    level = torch.searchsorted(ends, anchor_indices, right=True)
    local = anchor_indices - (ends - sizes)[level]
    location = torch.div(local, anchors_per_location, rounding_mode="floor")
    widths = torch.tensor([w for _, w in level_shapes], device=device)[level]
    row = torch.div(location, widths, rounding_mode="floor")
    return level, row, location - row * widths, local - location * anchors_per_location


def _neighbours(row: Tensor, column: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """(N, 9) rows and columns of each position's 3x3 neighbourhood, and which lie in the map."""
    row_offsets = torch.tensor(_ROW_OFFSETS, device=row.device)
    column_offsets = torch.tensor(_COLUMN_OFFSETS, device=row.device)
    rows = row[:, None] + row_offsets
    columns = column[:, None] + column_offsets
    inside = (rows >= 0) & (rows < height) & (columns >= 0) & (columns < width)
    return rows, columns, inside


def _conv_as_matrix(conv: nn.Conv2d) -> Tensor:
    """(out, 9 * in) weight matching windows laid out (kernel row, kernel column, channel)."""
    return conv.weight.permute(0, 2, 3, 1).flatten(1)


def _level_embeddings(
    branch: nn.Module, norm: nn.BatchNorm2d, features: Tensor, queries: _Queries, per_anchor_dim: int | None
) -> Tensor:
    """(K, D) head outputs at one level's queries; ``per_anchor_dim`` None for the per-location head."""
    _, _, height, width = features.shape
    centres, centre_of_query = torch.unique(
        (queries.image * height + queries.row) * width + queries.column, return_inverse=True
    )
    centre_image = torch.div(centres, height * width, rounding_mode="floor")
    centre_row = torch.div(centres, width, rounding_mode="floor") % height
    rows, columns, inside = _neighbours(centre_row, centres % width, height, width)
    neighbour_keys = (centre_image[:, None] * height + rows) * width + columns
    hidden_keys, slot_of_inside = torch.unique(neighbour_keys[inside], return_inverse=True)
    # out-of-map neighbours read an appended zero row: the output conv's zero padding
    slots = torch.full_like(neighbour_keys, len(hidden_keys))
    slots[inside] = slot_of_inside
    hidden = _hidden_activations(branch.hidden, norm, features, hidden_keys)
    hidden = torch.cat([hidden, hidden.new_zeros((1, hidden.shape[1]))])
    windows = hidden[slots].flatten(1)  # (centres, 9 * hidden width)
    weight = _conv_as_matrix(branch.output)
    bias = branch.output.bias
    if per_anchor_dim is None:
        return F.linear(windows, weight, bias)[centre_of_query]
    return _per_anchor_outputs(windows[centre_of_query], queries.cell, weight, bias, per_anchor_dim)


def _hidden_activations(conv: nn.Conv2d, norm: nn.BatchNorm2d, features: Tensor, keys: Tensor) -> Tensor:
    """ReLU(BN(conv(features))) at flat positions ``keys`` (image * H * W + row * W + column)."""
    _, _, height, width = features.shape
    image = torch.div(keys, height * width, rounding_mode="floor")
    row = torch.div(keys, width, rounding_mode="floor") % height
    rows, columns, inside = _neighbours(row, keys % width, height, width)
    windows = features[image[:, None], :, rows.clamp(0, height - 1), columns.clamp(0, width - 1)]
    windows = torch.where(inside[..., None], windows, windows.new_zeros(()))  # (N, 9, C)
    hidden = F.linear(windows.flatten(1), _conv_as_matrix(conv), conv.bias)
    if norm.training and hidden.shape[0] < 2:
        normalised = F.batch_norm(
            hidden, norm.running_mean, norm.running_var, norm.weight, norm.bias, training=False, eps=norm.eps
        )
    else:
        normalised = norm(hidden[:, :, None, None]).flatten(1)
    return torch.relu(normalised)


def _per_anchor_outputs(
    windows: Tensor, cell: Tensor, weight: Tensor, bias: Tensor | None, embedding_dim: int
) -> Tensor:
    """Each query's own anchor slice of the per-anchor output conv, one product per anchor-in-cell."""
    anchors_per_location = weight.shape[0] // embedding_dim
    weight = weight.view(anchors_per_location, embedding_dim, -1)
    order = torch.argsort(cell, stable=True)
    counts = torch.bincount(cell, minlength=anchors_per_location).tolist()
    parts = [
        F.linear(
            windows[queries], weight[anchor], None if bias is None else bias.view(-1, embedding_dim)[anchor]
        )
        for anchor, queries in enumerate(order.split(counts))
        if len(queries)
    ]
    return torch.cat(parts)[torch.argsort(order)]


def _with_unused_parameters(result: Tensor, head: EmbeddingHead, used_levels: Sequence[int]) -> Tensor:
    """``result`` plus an exact zero from every head parameter no gathered level used.

    Distributed data parallel expects every parameter to take part in each
    step; a level without assigned anchors would otherwise leave its BN (and,
    with per-level convs, its whole branch) out of the graph.
    """
    if not torch.is_grad_enabled():
        return result
    used = set()
    for level in used_levels:
        branch, norm = head.level_modules(level)
        for module in (branch.hidden, norm, branch.output):
            used.update(id(parameter) for parameter in module.parameters())
    unused = [p for p in head.parameters() if p.requires_grad and id(p) not in used]
    if not unused:
        return result
    return result + sum(p.sum() for p in unused) * 0.0
