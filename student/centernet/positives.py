"""Which cells of a batch are positives of the CenterNet loss, and what each one regresses.

``assignment: centre`` (CenterNet / FairMOT): one positive per object, its centre
cell. ``assignment: adamot``: the cells AdaMOT's identity-aware one-to-k matching
picks (:mod:`.assignment`). The heatmap, box, offset and re-ID losses all read the
same positives.

What a positive regresses does not depend on how it was chosen: the object's box
as the targets encode it (``ltrb`` distances from the object's centre, or ``wh``)
and, as the offset, the vector from the positive's cell to the object's centre, in
output cells. At the centre cell that is CenterNet's sub-cell offset (in [0, 1));
at another cell it reaches across cells. The offset therefore still applies under
the one-to-k assignment: the decoder places every box at cell + offset, so the
offset is what puts the box of an off-centre positive where the object is (for
``wh`` the box has no other position information), and decoding stays the same
for both assignments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .assignment import AssignmentStatistics, assign_image, candidate_cells
from .decoding import decode_boxes
from .model import CenterNetOutputs
from .reid_probability import IdentityScorer
from .targets import CenterTargets


@dataclasses.dataclass(frozen=True)
class Positives:
    """Every positive cell of the batch, image-major: where to read the heads and what to compare with."""

    image_index: Tensor  # (P,)
    cell_index: Tensor  # (P,)
    offset: Tensor  # (P, 2) object centre - cell, output cells
    box: Tensor  # (P, 4 | 2)
    teacher: Tensor | None  # (P, D_s), NaN rows without embedding
    identities: Tensor | None  # (P,), -1 unknown
    reid_probability: Tensor | None  # (P,), NaN where the object has none; None: not computed
    statistics: AssignmentStatistics | None  # adamot only


@dataclasses.dataclass(frozen=True)
class _ImageChoice:
    cell_index: Tensor  # (P_i,)
    object_index: Tensor  # (P_i,) into the image's objects
    reid_probability: Tensor | None  # (P_i,)


def centre_positives(
    outputs: CenterNetOutputs,
    targets: Sequence[Mapping[str, Tensor]],
    per_image: Sequence[CenterTargets],
    *,
    teacher_dims: int,
    read_identities: bool,
    scorer: IdentityScorer | None = None,
) -> Positives:
    """Each object's centre cell; with a ``scorer``, the re-ID probability there too."""
    choices = []
    for image, (target, objects) in enumerate(zip(targets, per_image, strict=True)):
        probability = None
        if scorer is not None:
            probability = _probability_at(outputs, image, objects.cell_index, target, objects, scorer)
            probability = probability.diagonal() if probability is not None else None
        index = torch.arange(len(objects.cell_index), device=objects.cell_index.device)
        choices.append(_ImageChoice(objects.cell_index, index, probability))
    return _gather(outputs, targets, per_image, choices, teacher_dims, read_identities, None)


def adamot_positives(
    outputs: CenterNetOutputs,
    targets: Sequence[Mapping[str, Tensor]],
    per_image: Sequence[CenterTargets],
    *,
    k: int,
    teacher_dims: int,
    read_identities: bool,
    scorer: IdentityScorer | None,
) -> Positives:
    """The one-to-k positives of every image (:func:`.assignment.assign_image`), with their statistics."""
    choices = []
    statistics = AssignmentStatistics()
    with torch.no_grad():
        for image, (target, objects) in enumerate(zip(targets, per_image, strict=True)):
            object_boxes = target["boxes"][objects.box_index]
            cells, allowed = candidate_cells(
                object_boxes, objects.cell_index, outputs.map_size, outputs.stride
            )
            image_index = torch.full_like(cells, image)
            scores = torch.sigmoid(outputs.heatmap_logits[image, 0].flatten()[cells].float())
            boxes = decode_boxes(outputs, image_index, cells)
            probability = None
            if scorer is not None and len(cells):
                probability = _probability_at(outputs, image, cells, target, objects, scorer)
            chosen = assign_image(
                cells, allowed, scores, boxes, object_boxes, outputs.image_size, probability, k
            )
            statistics = statistics + chosen.statistics
            reid = chosen.reid_probability if scorer is not None and outputs.has_embeddings else None
            choices.append(_ImageChoice(chosen.cell_index, chosen.object_index, reid))
    return _gather(outputs, targets, per_image, choices, teacher_dims, read_identities, statistics)


def _probability_at(
    outputs: CenterNetOutputs,
    image: int,
    cells: Tensor,
    target: Mapping[str, Tensor],
    objects: CenterTargets,
    scorer: IdentityScorer,
) -> Tensor | None:
    """(C, N) re-ID probability of each object's identity at ``cells`` of ``image``."""
    if not outputs.has_embeddings:
        return None
    with torch.no_grad():
        embeddings = outputs.cell_embeddings(torch.full_like(cells, image), cells)
        return scorer(embeddings, target, objects.box_index)


def _gather(
    outputs: CenterNetOutputs,
    targets: Sequence[Mapping[str, Tensor]],
    per_image: Sequence[CenterTargets],
    choices: Sequence[_ImageChoice],
    teacher_dims: int,
    read_identities: bool,
    statistics: AssignmentStatistics | None,
) -> Positives:
    """The regression targets and re-ID targets of the chosen (cell, object) pairs, image-major."""
    width = outputs.map_size[1]
    offsets, boxes, teacher, identities = [], [], [], []
    for target, objects, choice in zip(targets, per_image, choices, strict=True):
        centre_cell = objects.cell_index[choice.object_index]
        cell_steps = torch.stack(
            [
                centre_cell % width - choice.cell_index % width,
                centre_cell // width - choice.cell_index // width,
            ],
            dim=1,
        )
        offsets.append(objects.offset[choice.object_index] + cell_steps.float())
        boxes.append(objects.box[choice.object_index])
        rows = objects.box_index[choice.object_index]
        if teacher_dims:
            teacher.append(target["embeddings"][rows, :teacher_dims])
        if read_identities:
            identities.append(target["identities"][rows])
    probabilities = [choice.reid_probability for choice in choices]
    return Positives(
        image_index=torch.cat(
            [torch.full_like(choice.cell_index, image) for image, choice in enumerate(choices)]
        ),
        cell_index=torch.cat([choice.cell_index for choice in choices]),
        offset=torch.cat(offsets),
        box=torch.cat(boxes),
        teacher=torch.cat(teacher) if teacher_dims else None,
        identities=torch.cat(identities) if read_identities else None,
        reid_probability=torch.cat(probabilities) if all(p is not None for p in probabilities) else None,
        statistics=statistics,
    )


__all__ = ["Positives", "adamot_positives", "centre_positives"]
