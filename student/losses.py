"""Training losses of the student: focal + Huber box + embedding (L2 to the teacher and/or identity CE).

Every loss is normalised over the whole batch: the classification and box sums
by the number of positive anchors (at least 1), the L2 term by the number of
positive anchors whose box has a teacher embedding, the identity CE by the
number of positive anchors whose box has an identity (with the scale-aware
embedding map, by the objects those anchors are matched to: it is read once per
object, at the box centre). A batch without any of those contributes an exact
zero that still backpropagates (never NaN).

Targets, one mapping per image (what the shard data loader yields), in input
pixels after letterboxing:

- ``boxes`` float32 (N, 4) x1, y1, x2, y2
- ``ignore`` bool (N,)
- ``identities`` int64 (N,), -1 unknown, already offset to global ids (CE only)
- ``embeddings`` float32 (N, D_teacher), NaN rows where a box has none (L2 only);
  the student regresses the first D_s dimensions. NaN is the shards' "no embedding"
  marker of ignore boxes, so rows with NaN are left out of the L2 term; a NaN or inf
  where a box should have an embedding (corruption) is refused when the shard is read
  (:mod:`pipeline.shards.reader`) and never reaches the loss.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .assign import IGNORED, assign_anchors
from .config import LossConfig, ModelConfig, check_loss_fits_model
from .model import StudentOutputs, make_box_coder


def sigmoid_focal_loss_sum(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Summed focal loss (Lin et al.) of binary ``targets`` in {0, 1}."""
    probabilities = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_true = probabilities * targets + (1 - probabilities) * (1 - targets)
    alpha_true = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_true * cross_entropy * (1 - p_true) ** gamma).sum()


def box_huber_loss_sum(predicted_deltas: Tensor, target_deltas: Tensor, delta: float) -> Tensor:
    """Huber loss summed over anchors and the 4 coordinates.

    Huber(x) = x^2 / 2 for |x| < delta, else delta * (|x| - delta / 2), i.e.
    ``F.huber_loss``; ``F.smooth_l1_loss(beta=delta)`` would be this divided by delta.
    """
    return F.huber_loss(predicted_deltas, target_deltas, delta=delta, reduction="sum")


def zero_like_graph(*tensors: Tensor) -> Tensor:
    """An exact 0 connected to the graph, so backward works when a term has no samples."""
    return sum((t.sum() * 0.0 for t in tensors), start=torch.zeros((), device=tensors[0].device))


def embedding_l2_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Mean over rows of sum_d (predicted - target)^2; rows with any NaN target are skipped."""
    has_target = ~torch.isnan(target).any(dim=1)
    if not bool(has_target.any()):
        return zero_like_graph(predicted)
    difference = predicted[has_target] - target[has_target]
    return difference.pow(2).sum(dim=1).mean()


def identity_logit_scale(num_identities: int) -> float:
    """JDE's scale s = sqrt(2) * log(nID - 1) for L2-normalised embeddings."""
    if num_identities < 3:
        raise ValueError(f"identity cross-entropy needs at least 3 identities, got {num_identities}")
    return math.sqrt(2.0) * math.log(num_identities - 1)


def identity_cross_entropy(
    embeddings: Tensor, identities: Tensor, classifier: nn.Linear, scale: float
) -> Tensor:
    """CE of ``classifier(scale * normalize(embeddings))``; identity -1 rows are ignored."""
    known = identities >= 0
    if not bool(known.any()):
        return zero_like_graph(embeddings, classifier.weight, classifier.bias)
    if int(identities.max()) >= classifier.out_features:
        raise ValueError(
            f"identity {int(identities.max())} out of range for {classifier.out_features} identities"
        )
    logits = classifier(scale * F.normalize(embeddings[known], dim=1))
    return F.cross_entropy(logits, identities[known])


@dataclasses.dataclass(frozen=True)
class LossTerms:
    """Weighted total and the unweighted terms of one batch. The embedding and identity counts
    count anchors, or objects with the scale-aware embedding map."""

    total: Tensor
    classification: Tensor
    box_regression: Tensor
    embedding_l2: Tensor | None
    identity_ce: Tensor | None
    num_positive_anchors: int
    num_embedding_anchors: int
    num_identity_anchors: int

    def as_floats(self) -> dict[str, float]:
        values = {
            "loss": self.total,
            "classification": self.classification,
            "box_regression": self.box_regression,
            "embedding_l2": self.embedding_l2,
            "identity_ce": self.identity_ce,
        }
        floats = {name: float(value.detach()) for name, value in values.items() if value is not None}
        floats["positive_anchors"] = float(self.num_positive_anchors)
        floats["embedding_anchors"] = float(self.num_embedding_anchors)
        floats["identity_anchors"] = float(self.num_identity_anchors)
        return floats


@dataclasses.dataclass(frozen=True)
class _PositiveMatches:
    image_index: Tensor  # (P,)
    anchor_index: Tensor  # (P,)
    box_index: Tensor  # (P,) index into that image's targets


@dataclasses.dataclass(frozen=True)
class _MatchedObjects:
    """Each (image, box) pair that at least one positive anchor is matched to, once, image-major."""

    image_index: Tensor  # (N,)
    box_index: Tensor  # (N,) index into that image's targets

    @classmethod
    def of(cls, positives: _PositiveMatches) -> _MatchedObjects:
        if len(positives.box_index) == 0:
            return cls(positives.image_index, positives.box_index)
        pairs = torch.unique(torch.stack([positives.image_index, positives.box_index], dim=1), dim=0)
        return cls(pairs[:, 0], pairs[:, 1])


@dataclasses.dataclass
class _IdentityLosses:
    embedding_l2: Tensor | None = None
    identity_ce: Tensor | None = None
    num_embedding: int = 0
    num_identity: int = 0


class DistillationCriterion(nn.Module):
    """What every family's loss shares: the embedding terms' set-up and target checks, and the
    combination of detection and identity sums.

    Holds the learnable parts of the loss: the identity classifier (modes "ce"
    and "l2+ce", ``num_identities`` classes) and, with uncertainty weighting,
    the two log-variances. Give its parameters to the optimiser and keep its
    state dict in the checkpoint.
    """

    def __init__(self, loss_config: LossConfig, model_config: ModelConfig, num_identities: int = 0) -> None:
        super().__init__()
        check_loss_fits_model(loss_config, model_config)
        self.loss_config = loss_config
        self.embedding_dim = model_config.embedding_dim
        self.uses_l2 = model_config.has_embedding_head and loss_config.uses_l2
        self.uses_identity_ce = model_config.has_embedding_head and loss_config.uses_identity_ce
        self.identity_classifier: nn.Linear | None = None
        self.identity_scale = 0.0
        if self.uses_identity_ce:
            self.identity_scale = identity_logit_scale(num_identities)
            self.identity_classifier = nn.Linear(self.embedding_dim, num_identities)
        self.detection_log_variance: nn.Parameter | None = None
        self.identity_log_variance: nn.Parameter | None = None
        if loss_config.uncertainty_weighting:
            if not model_config.has_embedding_head:
                raise ValueError("uncertainty weighting needs an embedding head")
            self.detection_log_variance = nn.Parameter(
                torch.tensor(loss_config.initial_detection_log_variance)
            )
            self.identity_log_variance = nn.Parameter(torch.tensor(loss_config.initial_identity_log_variance))

    def checked_target(self, target: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
        """One image's targets as tensors on ``device``, shapes checked: boxes and ignore flags,
        plus the embeddings / identities the configured embedding terms read."""
        for key in ("boxes", "ignore"):
            if key not in target:
                raise KeyError(f"target lacks {key!r}")
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=device)
        num_boxes = boxes.shape[0]
        checked = {
            "boxes": boxes.reshape(num_boxes, 4),
            "ignore": torch.as_tensor(target["ignore"], dtype=torch.bool, device=device),
        }
        if self.uses_l2:
            if "embeddings" not in target:
                raise KeyError("the L2 embedding loss needs target 'embeddings'")
            embeddings = torch.as_tensor(target["embeddings"], dtype=torch.float32, device=device)
            if embeddings.ndim != 2 or embeddings.shape[0] != num_boxes:
                raise ValueError(
                    f"embeddings must be ({num_boxes}, D_teacher), got {tuple(embeddings.shape)}"
                )
            if embeddings.shape[1] < self.embedding_dim:
                raise ValueError(
                    f"teacher embeddings have {embeddings.shape[1]} dims, the student "
                    f"regresses {self.embedding_dim}"
                )
            checked["embeddings"] = embeddings
        if self.uses_identity_ce:
            if "identities" not in target:
                raise KeyError("the identity cross-entropy needs target 'identities'")
            identities = torch.as_tensor(target["identities"], dtype=torch.int64, device=device)
            if identities.shape != (num_boxes,):
                raise ValueError(f"identities must be ({num_boxes},), got {tuple(identities.shape)}")
            checked["identities"] = identities
        return checked

    def combined(self, detection_total: Tensor, identity_total: Tensor) -> Tensor:
        """The plain weighted sum, or FairMOT's uncertainty weighting of the two sums."""
        if self.detection_log_variance is None or self.identity_log_variance is None:
            return detection_total + identity_total
        return 0.5 * (
            torch.exp(-self.detection_log_variance) * detection_total
            + torch.exp(-self.identity_log_variance) * identity_total
            + self.detection_log_variance
            + self.identity_log_variance
        )


class StudentCriterion(DistillationCriterion):
    """Loss of :class:`student.model.StudentDetector` outputs against per-image targets
    (see :class:`DistillationCriterion` for its learnable parts)."""

    def __init__(self, loss_config: LossConfig, model_config: ModelConfig, num_identities: int = 0) -> None:
        super().__init__(loss_config, model_config, num_identities)
        self.box_coder = make_box_coder()

    def forward(self, outputs: StudentOutputs, targets: Sequence[Mapping[str, Tensor]]) -> LossTerms:
        config = self.loss_config
        batch_size = outputs.class_logits.shape[0]
        if len(targets) != batch_size:
            raise ValueError(f"{batch_size} images but {len(targets)} targets")
        targets = [self.checked_target(target, outputs.class_logits.device) for target in targets]
        matches = torch.stack(
            [assign_anchors(outputs.anchors, target["boxes"], target["ignore"], config) for target in targets]
        )  # (B, A)
        positives = self._positive_matches(matches)
        classification, box_regression = self._detection_losses(outputs, targets, matches, positives)
        detection_total = config.classification_weight * classification + config.box_weight * box_regression
        identity = self._identity_losses(outputs, targets, positives)
        identity_total = torch.zeros((), device=outputs.class_logits.device)
        if identity.embedding_l2 is not None:
            identity_total = identity_total + config.embedding_weight * identity.embedding_l2
        if identity.identity_ce is not None:
            identity_total = identity_total + config.identity_weight * identity.identity_ce
        return LossTerms(
            total=self.combined(detection_total, identity_total),
            classification=classification,
            box_regression=box_regression,
            embedding_l2=identity.embedding_l2,
            identity_ce=identity.identity_ce,
            num_positive_anchors=len(positives.anchor_index),
            num_embedding_anchors=identity.num_embedding,
            num_identity_anchors=identity.num_identity,
        )

    def _detection_losses(
        self,
        outputs: StudentOutputs,
        targets: Sequence[Mapping[str, Tensor]],
        matches: Tensor,
        positives: _PositiveMatches,
    ) -> tuple[Tensor, Tensor]:
        """Focal classification and Huber box losses, each normalised by the positive anchors."""
        config = self.loss_config
        normaliser = max(1, len(positives.anchor_index))
        class_logits = outputs.class_logits.float()
        counted = matches != IGNORED
        class_targets = (matches >= 0).to(class_logits.dtype)
        classification = (
            sigmoid_focal_loss_sum(
                class_logits[counted][:, 0],
                class_targets[counted],
                config.focal_alpha,
                config.focal_gamma,
            )
            / normaliser
        )
        box_deltas = outputs.box_deltas.float()
        predicted_deltas = box_deltas[positives.image_index, positives.anchor_index]
        matched_boxes = self._gather_per_box(targets, "boxes", positives)
        target_deltas = self.box_coder.encode_single(matched_boxes, outputs.anchors[positives.anchor_index])
        box_regression = (
            box_huber_loss_sum(predicted_deltas, target_deltas, config.box_huber_delta) / normaliser
        )
        return classification, box_regression

    def _identity_losses(
        self, outputs: StudentOutputs, targets: Sequence[Mapping[str, Tensor]], positives: _PositiveMatches
    ) -> _IdentityLosses:
        """Teacher-regression L2 and identity cross-entropy on the positive anchors (as configured).

        The head is read (a sparse head: evaluated) only at the positive anchors
        whose box has a target for one of the terms. The scale-aware map is read
        once per object that positive anchors are matched to, at its box centre:
        inference reads it at each detection's box centre, so training supervises
        the same place; a positive anchor's centre can lie far from the person's
        (a P5 anchor is placed on a 32-pixel grid, and low-quality matches are
        positives too), where the stride-8 map sees background or a neighbour.
        It also gives every person one sample, where per-anchor reading counts a
        tall person, matched by more anchors, more often than a small one.
        """
        if not (self.uses_l2 or self.uses_identity_ce):
            return _IdentityLosses()
        samples: _PositiveMatches | _MatchedObjects = positives
        if outputs.scale_aware_embeddings is not None:
            samples = _MatchedObjects.of(positives)
        teacher = identities = None
        enters_loss = torch.zeros_like(samples.box_index, dtype=torch.bool)
        if self.uses_l2:
            teacher = self._gather_per_box(targets, "embeddings", samples)[:, : self.embedding_dim]
            enters_loss |= ~torch.isnan(teacher).any(dim=1)
        if self.uses_identity_ce:
            identities = self._gather_per_box(targets, "identities", samples)
            enters_loss |= identities >= 0
        predicted = self._read_embeddings(outputs, targets, samples, enters_loss).float()
        losses = _IdentityLosses()
        if teacher is not None:
            losses.num_embedding = int((~torch.isnan(teacher).any(dim=1)).sum())
            losses.embedding_l2 = embedding_l2_loss(predicted, teacher[enters_loss])
        if identities is not None and self.identity_classifier is not None:
            losses.num_identity = int((identities >= 0).sum())
            losses.identity_ce = identity_cross_entropy(
                predicted, identities[enters_loss], self.identity_classifier, self.identity_scale
            )
        return losses

    def _read_embeddings(
        self,
        outputs: StudentOutputs,
        targets: Sequence[Mapping[str, Tensor]],
        samples: _PositiveMatches | _MatchedObjects,
        selected: Tensor,
    ) -> Tensor:
        """Raw embeddings of the ``selected`` samples: at their anchors, or at their boxes' centres."""
        if isinstance(samples, _PositiveMatches):
            return outputs.anchor_embeddings(samples.image_index[selected], samples.anchor_index[selected])
        if outputs.scale_aware_embeddings is None:
            raise ValueError("per-object embeddings are read from the scale-aware map only")
        boxes = self._gather_per_box(targets, "boxes", samples)[selected]
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        return outputs.scale_aware_embeddings.at_points(samples.image_index[selected], centres)

    @staticmethod
    def _positive_matches(matches: Tensor) -> _PositiveMatches:
        # image-major order, matching the per-image concatenation in _gather_per_box
        image_index, anchor_index = torch.nonzero(matches >= 0, as_tuple=True)
        return _PositiveMatches(image_index, anchor_index, matches[image_index, anchor_index])

    @staticmethod
    def _gather_per_box(
        targets: Sequence[Mapping[str, Tensor]], key: str, positives: _PositiveMatches | _MatchedObjects
    ) -> Tensor:
        """Rows of ``targets[i][key]`` for every positive anchor (or object), in their order."""
        gathered = [
            target[key][positives.box_index[positives.image_index == image]]
            for image, target in enumerate(targets)
        ]
        return torch.cat(gathered)
