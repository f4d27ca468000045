"""CenterNet / FairMOT training loss: penalty-reduced focal heatmap loss, L1 box and offset at the
positives, and the re-ID terms (L2 to the teacher and / or identity CE) at the same positives.

The positives are each object's centre cell (``assignment: centre``) or AdaMOT's
identity-aware one-to-k choice (``assignment: adamot``); see :mod:`.positives`.
Normalisation is over the batch: the heatmap loss by the number of positive
cells (peaks, at least 1), the box and offset L1 by the number of positives
times the values per positive (a mean absolute error, as FairMOT's RegL1Loss),
the L2 term by the positives with a teacher embedding, the CE by the positives
with an identity. A term without samples is an exact zero that still
backpropagates. Targets are the same per-image mappings as the RetinaNet
criterion's (see :mod:`student.losses`).

``classification_loss: discriminative_focal`` replaces the heatmap loss by AdaMOT's
discriminative focal loss (:func:`discriminative_focal_loss`). How it combines with
CenterNet's Gaussian: the positives' terms are AdaMOT's (soft targets, no Gaussian
there), and the negatives keep CenterNet's penalty reduction (1 - g)^beta around
each object's centre; away from the centres (g = 0) the negative term is AdaMOT's.
AdaMOT itself drops the Gaussian altogether (its heatmap head is a plain
classifier). Keeping the reduction makes the option change one thing against the
default loss -- the positive targets and their weighting -- and under the one-to-k
assignment leaves the centre region's unchosen cells nearly free instead of
pushing them to zero next to chosen ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from ..config import LossConfig, ModelConfig
from ..losses import (
    DistillationCriterion,
    LossTerms,
    embedding_l2_loss,
    identity_cross_entropy,
    zero_like_graph,
)
from .assignment import AssignmentStatistics
from .decoding import cell_boxes
from .model import CenterNetOutputs
from .positives import Positives, adamot_positives, centre_positives
from .reid_probability import IdentityScorer
from .targets import (
    CenterTargets,
    box_corners,
    box_samples,
    build_center_targets,
    cell_positions,
    object_corners,
)


def penalty_reduced_focal_loss(
    logits: Tensor,
    target: Tensor,
    counted: Tensor,
    alpha: float = 2.0,
    beta: float = 4.0,
    positive: Tensor | None = None,
) -> Tensor:
    """CenterNet's focal loss on a Gaussian heatmap, summed and divided by max(1, #peaks).

    At peaks (``positive``; by default the cells where the target is exactly 1):
    -(1 - p)^alpha log p; elsewhere, where ``counted``: -(1 - target)^beta p^alpha
    log(1 - p). Log-probabilities come from ``logsigmoid`` (no clamping of p needed).
    """
    logits = logits.float()
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = log_p.exp()
    peak = target == 1 if positive is None else positive
    positive_sum = -((1 - p) ** alpha * log_p)[peak].sum()
    negative_cells = counted & ~peak
    negative = -((1 - target) ** beta * p**alpha * log_not_p)[negative_cells].sum()
    return (positive_sum + negative) / max(1, int(peak.sum()))


def discriminative_focal_loss(
    logits: Tensor,
    positive: Tensor,
    soft_target: Tensor,
    counted: Tensor,
    negative_weight: Tensor | None = None,
    gamma: float = 2.0,
) -> Tensor:
    """AdaMOT's discriminative focal loss, summed and divided by max(1, #positives).

    At ``positive`` cells with soft target t: (t (1 - p))^gamma (-log p); at the other
    ``counted`` cells: beta p^gamma (-log(1 - p)), times ``negative_weight`` where
    given (CenterNet's penalty reduction). alpha = (mean t over the positives)^2,
    beta = 3 alpha, and the sum is scaled by 1 / (alpha + beta). With every t = 1
    and no negative weight this is the sigmoid focal loss with alpha 0.25 (Lin et
    al.), divided by the positives. The targets carry no gradient.
    """
    logits = logits.float()
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = log_p.exp()
    targets = soft_target.detach().float()[positive]
    count = int(positive.sum())
    alpha = float(targets.mean()) ** 2 if count else 1.0
    beta = 3.0 * alpha
    positive_sum = -((targets * (1 - p[positive])) ** gamma * log_p[positive]).sum()
    negative_cells = counted & ~positive
    negative = -(p**gamma * log_not_p)
    if negative_weight is not None:
        negative = negative * negative_weight
    negative_sum = beta * negative[negative_cells].sum()
    return (positive_sum + negative_sum) / (alpha + beta) / max(1, count)


def masked_l1(predicted: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over positives and values; 0 (with a graph) when there are none."""
    if predicted.numel() == 0:
        return zero_like_graph(predicted)
    return F.l1_loss(predicted.float(), target, reduction="mean")


# The soft target of a positive whose object has no re-ID probability (no identity / no teacher
# embedding): that of a perfectly identified one, the top of the range sigmoid maps [0, 1] to.
UNSCORED_SOFT_TARGET = 1.0 / (1.0 + math.exp(-1.0))


@dataclasses.dataclass(frozen=True)
class CenterNetLossTerms(LossTerms):
    """:class:`student.losses.LossTerms` plus the offset loss. ``classification`` is the heatmap
    loss, ``box_regression`` the box L1, and the counts count positive cells; ``assignment``
    holds the one-to-k statistics (``assignment: adamot`` only)."""

    offset_regression: Tensor | None = None
    box_giou: Tensor | None = None
    assignment: AssignmentStatistics | None = None

    def as_floats(self) -> dict[str, float]:
        values = super().as_floats()
        if self.offset_regression is not None:
            values["offset_regression"] = float(self.offset_regression.detach())
        if self.box_giou is not None:
            values["box_giou"] = float(self.box_giou.detach())
        if self.assignment is not None:
            values["positives_per_object"] = self.assignment.positives_per_object
            if self.assignment.identity_objects:
                values["identity_changed_objects"] = self.assignment.changed_object_fraction
        return values


class CenterNetCriterion(DistillationCriterion):
    """Loss of :class:`CenterNetOutputs` against per-image targets; its learnable parts (identity
    classifier, uncertainty log-variances) are :class:`student.losses.DistillationCriterion`'s."""

    def __init__(self, loss_config: LossConfig, model_config: ModelConfig, num_identities: int = 0) -> None:
        super().__init__(loss_config, model_config, num_identities)
        self.box_encoding = model_config.box_encoding

    @property
    def identity_scorer(self) -> IdentityScorer | None:
        """Where the re-ID probability comes from (None without an embedding loss)."""
        if not (self.uses_l2 or self.uses_identity_ce):
            return None
        return IdentityScorer(
            classifier=self.identity_classifier,
            scale=self.identity_scale,
            teacher_dims=self.embedding_dim if self.uses_l2 else 0,
            temperature=self.loss_config.reid_probability_temperature,
        )

    def forward(
        self, outputs: CenterNetOutputs, targets: Sequence[Mapping[str, Tensor]]
    ) -> CenterNetLossTerms:
        config = self.loss_config
        batch_size = outputs.heatmap_logits.shape[0]
        if len(targets) != batch_size:
            raise ValueError(f"{batch_size} images but {len(targets)} targets")
        device = outputs.heatmap_logits.device
        checked = [self.checked_target(target, device) for target in targets]
        per_image = [self._image_targets(target, outputs) for target in checked]
        positives = self.positives(outputs, checked, per_image)
        heatmap = self._heatmap_loss(outputs, per_image, positives)
        box = masked_l1(_at_cells(outputs.box, positives), positives.box)
        offset = masked_l1(_at_cells(outputs.offset, positives), positives.offset)
        detection_total = (
            config.classification_weight * heatmap + config.box_weight * box + config.offset_weight * offset
        )
        box_giou = None
        if config.box_giou_weight > 0:
            box_giou = self._giou_loss(outputs, per_image, positives)
            detection_total = detection_total + config.box_giou_weight * box_giou
        embedding_l2, identity_ce, counts = self._identity_losses(outputs, positives)
        identity_total = torch.zeros((), device=device)
        if embedding_l2 is not None:
            identity_total = identity_total + config.embedding_weight * embedding_l2
        if identity_ce is not None:
            identity_total = identity_total + config.identity_weight * identity_ce
        return CenterNetLossTerms(
            total=self.combined(detection_total, identity_total),
            classification=heatmap,
            box_regression=box,
            embedding_l2=embedding_l2,
            identity_ce=identity_ce,
            num_positive_anchors=len(positives.cell_index),
            num_embedding_anchors=counts[0],
            num_identity_anchors=counts[1],
            offset_regression=offset,
            box_giou=box_giou,
            assignment=positives.statistics,
        )

    def positives(
        self,
        outputs: CenterNetOutputs,
        targets: Sequence[Mapping[str, Tensor]],
        per_image: Sequence[CenterTargets] | None = None,
    ) -> Positives:
        """The batch's positive cells under ``loss.assignment`` (``targets`` as checked by
        :meth:`checked_target`); for ``adamot`` with its :class:`AssignmentStatistics`."""
        if per_image is None:
            per_image = [self._image_targets(target, outputs) for target in targets]
        config = self.loss_config
        common = {
            "teacher_dims": self.embedding_dim if self.uses_l2 else 0,
            "read_identities": self.uses_identity_ce,
        }
        if config.uses_adamot_assignment:
            return adamot_positives(
                outputs,
                targets,
                per_image,
                k=config.positives_per_object,
                scorer=self.identity_scorer,
                **common,
            )
        scorer = self.identity_scorer if config.uses_discriminative_focal else None
        return centre_positives(outputs, targets, per_image, scorer=scorer, **common)

    def _heatmap_loss(
        self, outputs: CenterNetOutputs, per_image: Sequence[CenterTargets], positives: Positives
    ) -> Tensor:
        config = self.loss_config
        logits = outputs.heatmap_logits[:, 0]
        gaussian = torch.stack([t.heatmap for t in per_image])
        positive = torch.zeros_like(gaussian, dtype=torch.bool)
        positive.view(len(per_image), -1)[positives.image_index, positives.cell_index] = True
        counted = torch.stack([t.counted for t in per_image]) | positive
        if not config.uses_discriminative_focal:
            return penalty_reduced_focal_loss(
                logits, gaussian, counted, config.heatmap_alpha, config.heatmap_beta, positive=positive
            )
        soft_target = torch.zeros_like(gaussian)
        if positives.reid_probability is not None:
            probability = torch.sigmoid(positives.reid_probability)
            values = torch.nan_to_num(probability, nan=UNSCORED_SOFT_TARGET)
        else:
            values = torch.full_like(positives.cell_index, UNSCORED_SOFT_TARGET, dtype=torch.float32)
        flat_index = positives.image_index * gaussian[0].numel() + positives.cell_index
        soft_target.view(-1).scatter_reduce_(0, flat_index, values.float(), reduce="amax")
        return discriminative_focal_loss(
            logits,
            positive,
            soft_target,
            counted,
            negative_weight=(1 - gaussian) ** config.heatmap_beta,
            gamma=config.heatmap_alpha,
        )

    def _giou_loss(
        self, outputs: CenterNetOutputs, per_image: Sequence[CenterTargets], positives: Positives
    ) -> Tensor:
        """1 - GIoU between the decoded and the true box (output-cell units): the mean over the
        positives, or (``box_sample_fraction`` > 0) over objects, each object's regression
        samples weighted to sum 1."""
        fraction = self.loss_config.box_sample_fraction
        if fraction == 0.0:
            image_index, cell_index = positives.image_index, positives.cell_index
            centre = cell_positions(cell_index, outputs.map_size[1]).float() + positives.offset
            true_box = box_corners(centre, positives.box)
            weight = torch.ones(len(cell_index), device=centre.device)
            objects = len(cell_index)
        else:
            parts = []
            for image, targets in enumerate(per_image):
                samples = box_samples(targets, outputs.map_size, fraction)
                parts.append(
                    (
                        torch.full_like(samples.cell_index, image),
                        samples.cell_index,
                        object_corners(targets)[samples.object_index],
                        samples.weight,
                    )
                )
            image_index, cell_index, true_box, weight = (
                torch.cat(values) for values in zip(*parts, strict=True)
            )
            objects = sum(len(targets.cell_index) for targets in per_image)
        predicted = cell_boxes(outputs, image_index, cell_index)
        if len(predicted) == 0:
            return zero_like_graph(outputs.box)
        losses = generalized_box_iou_loss(predicted, true_box.float(), reduction="none")
        return (losses * weight).sum() / max(1, objects)

    def _image_targets(self, target: Mapping[str, Tensor], outputs: CenterNetOutputs) -> CenterTargets:
        return build_center_targets(
            target["boxes"],
            target["ignore"],
            outputs.map_size,
            outputs.stride,
            box_encoding=self.box_encoding,
            min_overlap=self.loss_config.heatmap_min_overlap,
            min_box_size=self.loss_config.min_box_size,
        )

    def _identity_losses(
        self, outputs: CenterNetOutputs, positives: Positives
    ) -> tuple[Tensor | None, Tensor | None, tuple[int, int]]:
        """L2 and CE at the positive cells of objects with a teacher embedding / an identity; the
        embedding head is evaluated at those cells only."""
        if not (self.uses_l2 or self.uses_identity_ce):
            return None, None, (0, 0)
        enters_loss = torch.zeros_like(positives.cell_index, dtype=torch.bool)
        if positives.teacher is not None:
            enters_loss |= ~torch.isnan(positives.teacher).any(dim=1)
        if positives.identities is not None:
            enters_loss |= positives.identities >= 0
        predicted = outputs.cell_embeddings(
            positives.image_index[enters_loss], positives.cell_index[enters_loss]
        ).float()
        embedding_l2 = identity_ce = None
        num_embedding = num_identity = 0
        if positives.teacher is not None:
            num_embedding = int((~torch.isnan(positives.teacher).any(dim=1)).sum())
            embedding_l2 = embedding_l2_loss(predicted, positives.teacher[enters_loss])
        if positives.identities is not None and self.identity_classifier is not None:
            num_identity = int((positives.identities >= 0).sum())
            identity_ce = identity_cross_entropy(
                predicted, positives.identities[enters_loss], self.identity_classifier, self.identity_scale
            )
        return embedding_l2, identity_ce, (num_embedding, num_identity)


def _at_cells(maps: Tensor, positives: Positives) -> Tensor:
    """(P, C) values of (B, C, H, W) ``maps`` at the positive cells."""
    return maps.flatten(2)[positives.image_index, :, positives.cell_index]
