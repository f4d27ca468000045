"""AdaMOT's identity-aware one-to-k label assignment for the CenterNet family (``loss.assignment: adamot``).

Liang et al., "A closer look at the joint training of object detection and
re-identification in multi-object tracking" (IEEE TIP 2022): instead of one fixed
positive per object (its centre cell), each object gets k positive locations
chosen where the network's current predictions already fit it best, and -- the
identity-aware part -- where its embedding already identifies it.

For one image with N objects (the non-ignore boxes the targets keep):

1. **Candidates**: the stride-4 cells whose centre lies inside the object's box
   (plus its centre cell, so an object smaller than a cell keeps the one positive
   the centre assignment gives it). A cell outside an object's box is never one of
   its positives; a cell outside every box is no candidate at all.
2. **Cost** of cell i for object j, from the predictions without gradient:
   ``2.5 * cls + 5 * L1 - 2 * GIoU``; cls is the focal matching cost (alpha 0.25,
   gamma 2; DETR-style: the focal loss of calling i positive minus that of calling
   it negative) of the heatmap score p, L1 the distance between the box decoded at
   i (the decoder's own formula) and the object's box, both divided by the input
   width / height, GIoU theirs. Identity-aware: where the re-ID probability r of
   the object's identity at i is known (:mod:`.reid_probability`), cls is the mean
   of the cost of p and the cost of p * sqrt(r).
3. **Matching**: each object is replicated k_j = min(k, its candidates) times and
   :func:`scipy.optimize.linear_sum_assignment` finds the minimum-cost matching of
   cells to replicas, at most one object per cell; pairs outside an object's box
   carry a cost so high that the matching uses as few as possible (then dropped).
   Where overlapping objects compete for too few cells one may get fewer than k_j.

Differences from the AdaMOT code (DemoGit4LIANG/AdaMOT, ``ada_matcher.py``): there the
candidates are every cell of the union of boxes (floor / ceil of the box at the
heatmap scale) and any object may take any of them; its identity term uses, at each
cell, the maximum probability over all identities of the image (the same for every
object), where the paper and this code use the object's own identity; it switches
the identity term on after the first epoch, here it is on from the first step (a
random embedding gives near-uniform probabilities, so the term then changes little).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import generalized_box_iou

from .targets import cells_inside_each_box

CLASSIFICATION_COST_WEIGHT = 2.5
BOX_L1_COST_WEIGHT = 5.0
GIOU_COST_WEIGHT = 2.0
FOCAL_COST_ALPHA = 0.25
FOCAL_COST_GAMMA = 2.0
_PROBABILITY_FLOOR = 1e-8


def focal_classification_cost(probability: Tensor) -> Tensor:
    """alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p)), element-wise."""
    p = probability.float().clamp(_PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR)
    positive = FOCAL_COST_ALPHA * (1 - p) ** FOCAL_COST_GAMMA * -torch.log(p)
    negative = (1 - FOCAL_COST_ALPHA) * p**FOCAL_COST_GAMMA * -torch.log(1 - p)
    return positive - negative


def classification_cost(scores: Tensor, reid_probability: Tensor | None, num_objects: int) -> Tensor:
    """(C, N) focal cost of the scores (C,); averaged with the cost of score * sqrt(r) where
    ``reid_probability`` (C, N) is not NaN."""
    plain = focal_classification_cost(scores)[:, None].expand(scores.shape[0], num_objects)
    if reid_probability is None:
        return plain
    known = ~torch.isnan(reid_probability)
    weighted = scores.float()[:, None] * torch.nan_to_num(reid_probability, nan=1.0).clamp(0, 1).sqrt()
    return torch.where(known, 0.5 * (plain + focal_classification_cost(weighted)), plain)


def matching_cost(
    scores: Tensor,
    predicted_boxes: Tensor,
    object_boxes: Tensor,
    image_size: tuple[int, int],
    reid_probability: Tensor | None = None,
) -> Tensor:
    """(C, N) AdaMOT cost of C candidate cells (scores (C,), boxes (C, 4) x1, y1, x2, y2 in input
    pixels) for N objects (boxes (N, 4)) in an input of ``image_size`` (height, width)."""
    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=object_boxes.device)
    predicted = predicted_boxes.float()
    objects = object_boxes.float()
    box_l1 = torch.cdist(predicted / scale, objects / scale, p=1)
    giou = generalized_box_iou(predicted, objects)
    classification = classification_cost(scores, reid_probability, objects.shape[0])
    return CLASSIFICATION_COST_WEIGHT * classification + BOX_L1_COST_WEIGHT * box_l1 - GIOU_COST_WEIGHT * giou


def one_to_k_assignment(cost: Tensor, allowed: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Minimum-cost matching of C rows (cells) to N objects, each replicated min(k, its allowed
    rows) times; every row at most once, only ``allowed`` (C, N) pairs kept.

    Returns (rows, objects) of the kept pairs, both (P,) int64, sorted by object then row.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if cost.shape != allowed.shape:
        raise ValueError(f"cost {tuple(cost.shape)} and allowed {tuple(allowed.shape)} differ in shape")
    device = cost.device
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    quota = allowed.sum(dim=0).clamp(max=k)
    replicas = torch.repeat_interleave(torch.arange(cost.shape[1], device=device), quota)
    if replicas.numel() == 0:
        return empty, empty
    replica_cost = cost[:, replicas].double().cpu().numpy()
    replica_allowed = allowed[:, replicas].cpu().numpy()
    finite = replica_cost[replica_allowed]
    # one more disallowed pair must cost more than any rearrangement of allowed ones can save
    forbidden = (finite.max() - finite.min()) * len(replicas) + abs(finite.max()) + 1.0
    rows, columns = linear_sum_assignment(np.where(replica_allowed, replica_cost, forbidden))
    kept = replica_allowed[rows, columns]
    rows = torch.as_tensor(rows[kept], dtype=torch.int64, device=device)
    objects = replicas[torch.as_tensor(columns[kept], dtype=torch.int64, device=device)]
    order = torch.as_tensor(np.lexsort((rows.cpu().numpy(), objects.cpu().numpy())), device=device)
    return rows[order], objects[order]


def candidate_cells(
    object_boxes: Tensor, centre_cells: Tensor, map_size: tuple[int, int], stride: int
) -> tuple[Tensor, Tensor]:
    """Flat cells that may be positives (C,) and which object may take each, (C, N) bool:
    the cells whose centre lies inside the object's box, and its centre cell."""
    inside = cells_inside_each_box(object_boxes.float(), map_size, stride).flatten(1)  # (N, H * W)
    if centre_cells.numel():
        inside[torch.arange(len(centre_cells), device=inside.device), centre_cells] = True
    cells = torch.nonzero(inside.any(dim=0)).flatten()
    return cells, inside[:, cells].T.contiguous()


@dataclasses.dataclass(frozen=True)
class AssignmentStatistics:
    """Counts over images of what the one-to-k assignment chose; add two to pool them.

    ``positives_histogram[n]`` objects got n positives. ``identity_objects`` had a
    re-ID probability (the identity term applied); ``identity_changed_objects`` of
    them got another set of positives than the same matching without the identity
    term, ``identity_changed_positives`` positives were not in that other set.
    ``reid_probability_sum`` sums the probability of the object's identity over the
    ``identity_positives`` positives of those objects.
    """

    objects: int = 0
    positives: int = 0
    positives_histogram: tuple[int, ...] = ()
    identity_objects: int = 0
    identity_positives: int = 0
    identity_changed_objects: int = 0
    identity_changed_positives: int = 0
    reid_probability_sum: float = 0.0

    def __add__(self, other: AssignmentStatistics) -> AssignmentStatistics:
        size = max(len(self.positives_histogram), len(other.positives_histogram))
        mine = self.positives_histogram + (0,) * (size - len(self.positives_histogram))
        theirs = other.positives_histogram + (0,) * (size - len(other.positives_histogram))
        return AssignmentStatistics(
            objects=self.objects + other.objects,
            positives=self.positives + other.positives,
            positives_histogram=tuple(a + b for a, b in zip(mine, theirs, strict=True)),
            identity_objects=self.identity_objects + other.identity_objects,
            identity_positives=self.identity_positives + other.identity_positives,
            identity_changed_objects=self.identity_changed_objects + other.identity_changed_objects,
            identity_changed_positives=self.identity_changed_positives + other.identity_changed_positives,
            reid_probability_sum=self.reid_probability_sum + other.reid_probability_sum,
        )

    @property
    def positives_per_object(self) -> float:
        return self.positives / self.objects if self.objects else float("nan")

    @property
    def changed_object_fraction(self) -> float:
        return (
            self.identity_changed_objects / self.identity_objects if self.identity_objects else float("nan")
        )

    @property
    def changed_positive_fraction(self) -> float:
        if not self.identity_positives:
            return float("nan")
        return self.identity_changed_positives / self.identity_positives

    @property
    def mean_reid_probability(self) -> float:
        return (
            self.reid_probability_sum / self.identity_positives if self.identity_positives else float("nan")
        )


@dataclasses.dataclass(frozen=True)
class ImageAssignment:
    """The positives of one image: flat cells, the object each belongs to, and the re-ID
    probability of that object's identity there (NaN: none)."""

    cell_index: Tensor  # (P,)
    object_index: Tensor  # (P,) into the image's objects
    reid_probability: Tensor  # (P,)
    statistics: AssignmentStatistics


def assign_image(
    cells: Tensor,
    allowed: Tensor,
    scores: Tensor,
    predicted_boxes: Tensor,
    object_boxes: Tensor,
    image_size: tuple[int, int],
    reid_probability: Tensor | None,
    k: int,
) -> ImageAssignment:
    """One image's identity-aware one-to-k assignment over candidate ``cells`` (C,) with their
    ``allowed`` objects (C, N), predictions there and the re-ID probabilities (C, N) or None;
    also matched without the identity term, for :class:`AssignmentStatistics`."""
    num_objects = object_boxes.shape[0]
    cost = matching_cost(scores, predicted_boxes, object_boxes, image_size, reid_probability)
    rows, objects = one_to_k_assignment(cost, allowed, k)
    counts = torch.bincount(objects, minlength=num_objects)
    histogram = torch.bincount(counts, minlength=k + 1).tolist() if num_objects else [0] * (k + 1)
    statistics = AssignmentStatistics(
        objects=num_objects, positives=len(rows), positives_histogram=tuple(histogram)
    )
    probability = torch.full((len(rows),), float("nan"), device=cells.device)
    if reid_probability is not None and num_objects:
        probability = reid_probability[rows, objects]
        plain_cost = matching_cost(scores, predicted_boxes, object_boxes, image_size)
        plain = one_to_k_assignment(plain_cost, allowed, k)
        statistics = dataclasses.replace(
            statistics, **_identity_effect((rows, objects), plain, reid_probability)
        )
    return ImageAssignment(cells[rows], objects, probability, statistics)


def _identity_effect(
    aware: tuple[Tensor, Tensor], plain: tuple[Tensor, Tensor], reid_probability: Tensor
) -> dict[str, int | float]:
    """How the identity-aware (rows, objects) differ from the plain matching's, counted over the
    objects with a re-ID probability (the others are matched the same way by both)."""
    has_identity = ~torch.isnan(reid_probability).all(dim=0)
    scored = torch.nonzero(has_identity).flatten().tolist()
    aware_pairs = {(int(r), int(o)) for r, o in zip(*aware, strict=True) if bool(has_identity[o])}
    plain_pairs = {(int(r), int(o)) for r, o in zip(*plain, strict=True) if bool(has_identity[o])}
    changed = {o for _, o in aware_pairs ^ plain_pairs}
    probabilities = reid_probability[aware[0], aware[1]]
    return {
        "identity_objects": len(scored),
        "identity_positives": len(aware_pairs),
        "identity_changed_objects": len(changed),
        "identity_changed_positives": len(aware_pairs - plain_pairs),
        "reid_probability_sum": float(torch.nan_to_num(probabilities, nan=0.0).sum()),
    }


__all__ = [
    "AssignmentStatistics",
    "ImageAssignment",
    "assign_image",
    "candidate_cells",
    "classification_cost",
    "focal_classification_cost",
    "matching_cost",
    "one_to_k_assignment",
]
