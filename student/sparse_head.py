"""The embedding head evaluated only at chosen anchors, exactly as the dense head computes them.

The head is conv3x3 -> BN -> ReLU -> conv3x3 on one FPN level, so its output
at a location depends on the 3x3 hidden activations around it, each computed
from the 3x3 features around that position: a 5x5 window of the level's
features. Both convs pad with zeros, so a hidden position outside the map
contributes zero (it is not computed from the padded features), and an input
position outside the map is zero.

:func:`embeddings_at_anchors` takes (image, anchor) pairs and, per level,
finds the distinct centre locations, the distinct in-map hidden positions
around them and the distinct feature positions those read; it gathers the
features once, applies the hidden conv to each hidden position's 3x3 window
as one matrix product, then BN and ReLU, and the output conv as a matrix
product over each centre's 3x3 hidden neighbourhood (per-anchor head: only the
D rows of the query's own anchor, one product per anchor-in-cell over all
levels sharing the conv, so each weight slice is read once). Only gather and
matmul ops run, on the features' device and dtype (autocast applies); the host
learns a few counts per level, never a per-anchor value.

Batch statistics in training (``map_statistics``). By default (True) the
hidden conv, BN and ReLU still run over every position of every level in
training, exactly as in the dense head, and only the output conv runs at the
gathered positions: the loss and its gradients are the dense head's, to float
rounding (tested), at the cost of the hidden conv alone. That is most of the
per-location head's cost but about 5% of the paper's per-anchor one, whose
output conv has A * D channels. The alternative (False) normalises with the
statistics of the hidden positions the gathered outputs read, the locations
on people: cheaper, and on the frames it trained on its embeddings copy the
teacher more closely, but the students trained that way detected 3-4 AP
points worse on frames they never saw (two seeds each). Why was not
measured; two differences are plausible: with the whole map's statistics
the gradients reach every location's features through the mean and
variance, and the map's wider spread scales down the gradients into the
features on people. When every location is
gathered the two are the same (tested). In either mode a level whose
statistics would come from a single hidden position has no batch variance:
it is normalised with the running statistics and leaves them unchanged.
Inference uses the running statistics and evaluates the hidden conv only
around the detections.
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
    map_statistics: bool = True

    def at_anchors(self, image_index: int | Tensor, anchor_indices: Tensor) -> Tensor:
        if isinstance(image_index, int):
            image_index = torch.full_like(anchor_indices, image_index)
        return embeddings_at_anchors(
            self.head,
            self.features,
            image_index,
            anchor_indices,
            self.anchors_per_location,
            map_statistics=self.map_statistics,
        )

    def dense(self) -> Tensor:
        return self.head(list(self.features))


def embeddings_at_anchors(
    head: EmbeddingHead,
    features: Sequence[Tensor],
    image_index: Tensor,
    anchor_indices: Tensor,
    anchors_per_location: int,
    *,
    map_statistics: bool = True,
) -> Tensor:
    """(K, D) raw embeddings of anchors ``anchor_indices`` (K,) of images ``image_index`` (K,).

    Anchors are numbered as in :class:`student.anchors.AnchorGrid` (level, row,
    column, anchor-in-cell) over the maps ``features`` (P3..P7, each (B, C, H, W)).
    Equal, up to float rounding, to indexing the dense head's output; in
    training, BN's batch statistics come from the whole map with
    ``map_statistics``, else from the hidden positions the outputs read.
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
    # queries grouped by the output conv they use, so that each conv's weight is read once
    by_branch: dict[int, _BranchQueries] = {}
    used_levels = []
    whole_map = map_statistics and head.training
    for level_index, queries in enumerate(order.split(counts)):
        branch, norm = head.level_modules(level_index)
        # every level, read or not, so that each BN's running statistics move as the dense head's
        hidden_map = _hidden_map(branch.hidden, norm, features[level_index]) if whole_map else None
        if len(queries) == 0:
            continue
        used_levels.append(level_index)
        windows = _output_windows(
            branch,
            norm,
            features[level_index],
            image_index[queries],
            row[queries],
            column[queries],
            hidden_map,
        )
        group = by_branch.setdefault(id(branch), _BranchQueries(branch.output))
        group.add(queries, windows, cell[queries])
    if not by_branch:
        result = features[0].new_zeros((0, head.embedding_dim))
        return _with_unused_parameters(result, head, used_levels)
    query_ids, outputs = [], []
    for group in by_branch.values():
        ids, values = group.outputs(head.embedding_dim if head.per_anchor else None)
        query_ids.append(ids)
        outputs.append(values)
    result = torch.cat(outputs)[torch.argsort(torch.cat(query_ids))]
    return _with_unused_parameters(result, head, used_levels)


class _BranchQueries:
    """Queries of the levels sharing one output conv: their ids, hidden windows and anchor-in-cell."""

    def __init__(self, conv: nn.Conv2d) -> None:
        self.conv = conv
        self.ids: list[Tensor] = []
        self.windows: list[Tensor] = []
        self.cells: list[Tensor] = []

    def add(self, ids: Tensor, windows: Tensor, cells: Tensor) -> None:
        self.ids.append(ids)
        self.windows.append(windows)
        self.cells.append(cells)

    def outputs(self, per_anchor_dim: int | None) -> tuple[Tensor, Tensor]:
        """Query ids and their outputs (per-anchor head: each query's own anchor slice)."""
        ids, windows = torch.cat(self.ids), torch.cat(self.windows)
        weight, bias = _conv_as_matrix(self.conv), self.conv.bias
        if per_anchor_dim is None:
            return ids, F.linear(windows, weight, bias)
        cells = torch.cat(self.cells)
        anchors_per_location = weight.shape[0] // per_anchor_dim
        # unbind, not indexing: backward then builds one weight-sized gradient, not one per anchor
        weights = weight.view(anchors_per_location, per_anchor_dim, -1).unbind(0)
        biases = (
            [None] * anchors_per_location if bias is None else bias.view(anchors_per_location, -1).unbind(0)
        )
        order = torch.argsort(cells, stable=True)
        counts = torch.bincount(cells, minlength=anchors_per_location).tolist()
        parts = [
            F.linear(windows[queries], weights[anchor], biases[anchor])
            for anchor, queries in enumerate(order.split(counts))
            if len(queries)
        ]
        return ids[order], torch.cat(parts)


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


def _unravel(keys: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Image, row and column of flat positions ``image * H * W + row * W + column``."""
    image = torch.div(keys, height * width, rounding_mode="floor")
    row = torch.div(keys, width, rounding_mode="floor") % height
    return image, row, keys % width


def _neighbour_slots(keys: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """The distinct in-map positions of the 3x3 neighbourhoods of flat positions ``keys``, and
    for each (key, neighbour) its row among them, or the row after the last one when the
    neighbour lies outside the map (where a zero row stands for the convs' zero padding)."""
    image, row, column = _unravel(keys, height, width)
    rows = row[:, None] + torch.tensor(_ROW_OFFSETS, device=keys.device)
    columns = column[:, None] + torch.tensor(_COLUMN_OFFSETS, device=keys.device)
    inside = (rows >= 0) & (rows < height) & (columns >= 0) & (columns < width)
    neighbour_keys = (image[:, None] * height + rows) * width + columns
    distinct, slot_of_inside = torch.unique(neighbour_keys[inside], return_inverse=True)
    slots = torch.full_like(neighbour_keys, len(distinct))
    slots[inside] = slot_of_inside
    return distinct, slots


def _with_zero_row(rows: Tensor) -> Tensor:
    return torch.cat([rows, rows.new_zeros((1, rows.shape[1]))])


def _conv_as_matrix(conv: nn.Conv2d) -> Tensor:
    """(out, in * 9) view of the weight (no copy), for windows laid out (channel, kernel position)."""
    return conv.weight.flatten(1)


def _channel_major(windows: Tensor) -> Tensor:
    """(N, 9, C) neighbourhood values -> (N, C * 9) rows matching :func:`_conv_as_matrix`."""
    return windows.transpose(1, 2).flatten(1)


def _output_windows(
    branch: nn.Module,
    norm: nn.BatchNorm2d,
    features: Tensor,
    image: Tensor,
    row: Tensor,
    column: Tensor,
    hidden_map: Tensor | None,
) -> Tensor:
    """(K, hidden width * 9): the 3x3 hidden activations around each query, zero outside the map;
    read from ``hidden_map`` (B, width, H, W) when given, else computed at the positions needed."""
    _, _, height, width = features.shape
    centres, centre_of_query = torch.unique((image * height + row) * width + column, return_inverse=True)
    hidden_keys, hidden_slots = _neighbour_slots(centres, height, width)
    if hidden_map is not None:
        hidden_image, hidden_row, hidden_column = _unravel(hidden_keys, height, width)
        hidden = hidden_map[hidden_image, :, hidden_row, hidden_column]
    else:
        input_keys, input_slots = _neighbour_slots(hidden_keys, height, width)
        input_image, input_row, input_column = _unravel(input_keys, height, width)
        inputs = _with_zero_row(features[input_image, :, input_row, input_column])  # (P + 1, C)
        hidden = _hidden_activations(branch.hidden, norm, _channel_major(inputs[input_slots]))
    return _channel_major(_with_zero_row(hidden)[hidden_slots])[centre_of_query]


def _hidden_map(conv: nn.Conv2d, norm: nn.BatchNorm2d, features: Tensor) -> Tensor:
    """ReLU(BN(conv)) over the whole (B, C, H, W) level, as the dense head computes it."""
    hidden = conv(features)
    if hidden[:, 0].numel() < 2:
        return torch.relu(_normalise_with_running_statistics(hidden, norm))
    return torch.relu(norm(hidden))


def _hidden_activations(conv: nn.Conv2d, norm: nn.BatchNorm2d, windows: Tensor) -> Tensor:
    """ReLU(BN(conv)) of (N, C * 9) input windows; BN on batch statistics over these N in training."""
    hidden = F.linear(windows, _conv_as_matrix(conv), conv.bias)
    if norm.training and hidden.shape[0] < 2:
        normalised = _normalise_with_running_statistics(hidden, norm)
    else:
        normalised = norm(hidden[:, :, None, None]).flatten(1)
    return torch.relu(normalised)


def _normalise_with_running_statistics(hidden: Tensor, norm: nn.BatchNorm2d) -> Tensor:
    return F.batch_norm(
        hidden, norm.running_mean, norm.running_var, norm.weight, norm.bias, training=False, eps=norm.eps
    )


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
