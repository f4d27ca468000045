"""CenterNet / FairMOT training loss: penalty-reduced focal heatmap loss, L1 box and offset at the
centres, and the re-ID terms (L2 to the teacher and / or identity CE) at each object's centre cell.

Normalisation is over the batch: the heatmap loss by the number of centre
cells (peaks, at least 1), the box and offset L1 by the number of objects
times the values per object (a mean absolute error, as FairMOT's RegL1Loss),
the L2 term by the objects with a teacher embedding, the CE by the objects
with an identity. A term without samples is an exact zero that still
backpropagates. Targets are the same per-image mappings as the RetinaNet
criterion's (see :mod:`student.losses`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import LossConfig, ModelConfig
from ..losses import (
    DistillationCriterion,
    LossTerms,
    embedding_l2_loss,
    identity_cross_entropy,
    zero_like_graph,
)
from .model import CenterNetOutputs
from .targets import CenterTargets, build_center_targets


def penalty_reduced_focal_loss(
    logits: Tensor, target: Tensor, counted: Tensor, alpha: float = 2.0, beta: float = 4.0
) -> Tensor:
    """CenterNet's focal loss on a Gaussian heatmap, summed and divided by max(1, #peaks).

    At peaks (target exactly 1): -(1 - p)^alpha log p; elsewhere, where
    ``counted``: -(1 - target)^beta p^alpha log(1 - p). Log-probabilities come
    from ``logsigmoid`` (no clamping of p needed).
    """
    logits = logits.float()
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = log_p.exp()
    peak = target == 1
    positive = -((1 - p) ** alpha * log_p)[peak].sum()
    negative_cells = counted & ~peak
    negative = -((1 - target) ** beta * p**alpha * log_not_p)[negative_cells].sum()
    return (positive + negative) / max(1, int(peak.sum()))


def masked_l1(predicted: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over objects and values; 0 (with a graph) when there are none."""
    if predicted.numel() == 0:
        return zero_like_graph(predicted)
    return F.l1_loss(predicted.float(), target, reduction="mean")


@dataclasses.dataclass(frozen=True)
class CenterNetLossTerms(LossTerms):
    """:class:`student.losses.LossTerms` plus the offset loss. ``classification`` is the heatmap
    loss, ``box_regression`` the box L1, and the counts count objects (centre cells)."""

    offset_regression: Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        values = super().as_floats()
        if self.offset_regression is not None:
            values["offset_regression"] = float(self.offset_regression.detach())
        return values


@dataclasses.dataclass(frozen=True)
class _Centres:
    """Every object of the batch, image-major: where to read the heads and what to compare with."""

    image_index: Tensor  # (N,)
    cell_index: Tensor  # (N,)
    offset: Tensor  # (N, 2)
    box: Tensor  # (N, 4 | 2)
    teacher: Tensor | None  # (N, D_s), NaN rows without embedding
    identities: Tensor | None  # (N,), -1 unknown


class CenterNetCriterion(DistillationCriterion):
    """Loss of :class:`CenterNetOutputs` against per-image targets; its learnable parts (identity
    classifier, uncertainty log-variances) are :class:`student.losses.DistillationCriterion`'s."""

    def __init__(self, loss_config: LossConfig, model_config: ModelConfig, num_identities: int = 0) -> None:
        super().__init__(loss_config, model_config, num_identities)
        self.box_encoding = model_config.box_encoding

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
        heatmap = penalty_reduced_focal_loss(
            outputs.heatmap_logits[:, 0],
            torch.stack([t.heatmap for t in per_image]),
            torch.stack([t.counted for t in per_image]),
            config.heatmap_alpha,
            config.heatmap_beta,
        )
        centres = self._centres(checked, per_image)
        box = masked_l1(_at_cells(outputs.box, centres), centres.box)
        offset = masked_l1(_at_cells(outputs.offset, centres), centres.offset)
        detection_total = (
            config.classification_weight * heatmap + config.box_weight * box + config.offset_weight * offset
        )
        embedding_l2, identity_ce, counts = self._identity_losses(outputs, centres)
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
            num_positive_anchors=len(centres.cell_index),
            num_embedding_anchors=counts[0],
            num_identity_anchors=counts[1],
            offset_regression=offset,
        )

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

    def _centres(
        self, targets: Sequence[Mapping[str, Tensor]], per_image: Sequence[CenterTargets]
    ) -> _Centres:
        device = per_image[0].heatmap.device
        image_index = torch.cat(
            [torch.full_like(t.cell_index, image) for image, t in enumerate(per_image)]
        ).to(device)
        teacher = identities = None
        if self.uses_l2:
            teacher = torch.cat(
                [
                    target["embeddings"][t.box_index, : self.embedding_dim]
                    for target, t in zip(targets, per_image, strict=True)
                ]
            )
        if self.uses_identity_ce:
            identities = torch.cat(
                [target["identities"][t.box_index] for target, t in zip(targets, per_image, strict=True)]
            )
        return _Centres(
            image_index=image_index,
            cell_index=torch.cat([t.cell_index for t in per_image]),
            offset=torch.cat([t.offset for t in per_image]),
            box=torch.cat([t.box for t in per_image]),
            teacher=teacher,
            identities=identities,
        )

    def _identity_losses(
        self, outputs: CenterNetOutputs, centres: _Centres
    ) -> tuple[Tensor | None, Tensor | None, tuple[int, int]]:
        """L2 and CE at the centre cells of objects with a teacher embedding / an identity; the
        embedding head is evaluated at those cells only."""
        if not (self.uses_l2 or self.uses_identity_ce):
            return None, None, (0, 0)
        enters_loss = torch.zeros_like(centres.cell_index, dtype=torch.bool)
        if centres.teacher is not None:
            enters_loss |= ~torch.isnan(centres.teacher).any(dim=1)
        if centres.identities is not None:
            enters_loss |= centres.identities >= 0
        predicted = outputs.cell_embeddings(
            centres.image_index[enters_loss], centres.cell_index[enters_loss]
        ).float()
        embedding_l2 = identity_ce = None
        num_embedding = num_identity = 0
        if centres.teacher is not None:
            num_embedding = int((~torch.isnan(centres.teacher).any(dim=1)).sum())
            embedding_l2 = embedding_l2_loss(predicted, centres.teacher[enters_loss])
        if centres.identities is not None and self.identity_classifier is not None:
            num_identity = int((centres.identities >= 0).sum())
            identity_ce = identity_cross_entropy(
                predicted, centres.identities[enters_loss], self.identity_classifier, self.identity_scale
            )
        return embedding_l2, identity_ce, (num_embedding, num_identity)


def _at_cells(maps: Tensor, centres: _Centres) -> Tensor:
    """(N, C) values of (B, C, H, W) ``maps`` at the objects' centre cells."""
    return maps.flatten(2)[centres.image_index, :, centres.cell_index]
