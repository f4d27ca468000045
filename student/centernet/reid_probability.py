"""The re-ID probability of an object's identity at a location: what AdaMOT's assignment and
discriminative focal loss read, with identity labels or with a teacher instead.

- **Identity cross-entropy** (``embedding_loss`` ``ce`` / ``l2+ce``), as AdaMOT: the
  identity classifier's softmax probability of the object's identity, on the
  L2-normalised embedding times the CE scale s (exactly the logits the CE loss uses).
- **Distillation** (``l2``: no identities): the softmax, over the image's boxes that
  have a teacher embedding, of cos(predicted embedding, box's teacher embedding) / T,
  read at the object's own box. It asks the same question as the classifier --
  "does this location's embedding single out this person?" -- but among the people
  of the frame, the ones a tracker must tell apart, instead of among all training
  identities. The first D_s teacher dimensions are used (those the student
  regresses), both sides L2-normalised. With one such box in the image the
  probability is 1 (there is no one to confuse it with).

Objects without an identity (CE) or whose box has no teacher embedding (L2) get NaN:
the callers leave the identity term out for them. With ``l2+ce`` an object with an
identity is scored by the classifier, one without by the teacher. Everything here
is evaluated without gradient: the probabilities choose positives and set targets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def classifier_identity_probability(
    embeddings: Tensor, identities: Tensor, classifier: nn.Linear, scale: float
) -> Tensor:
    """(C, N): softmax probability of identity ``identities[j]`` at each of the C embeddings;
    NaN columns for identity -1."""
    probabilities = torch.softmax(classifier(scale * F.normalize(embeddings.float(), dim=1)), dim=1)
    result = torch.full((embeddings.shape[0], identities.shape[0]), float("nan"), device=embeddings.device)
    known = identities >= 0
    if bool(known.any()):
        if int(identities.max()) >= classifier.out_features:
            raise ValueError(
                f"identity {int(identities.max())} out of range for {classifier.out_features} identities"
            )
        result[:, known] = probabilities[:, identities[known]]
    return result


@torch.no_grad()
def teacher_box_probability(
    embeddings: Tensor, teacher: Tensor, object_rows: Tensor, temperature: float
) -> Tensor:
    """(C, N): softmax over the rows of ``teacher`` (M, D; NaN rows: boxes without an embedding,
    left out) of cos(embedding, row) / ``temperature``, at row ``object_rows[j]``; NaN columns
    for objects whose row has no embedding."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    result = torch.full((embeddings.shape[0], object_rows.shape[0]), float("nan"), device=embeddings.device)
    has_embedding = ~torch.isnan(teacher).any(dim=1)
    if not bool(has_embedding.any()):
        return result
    keys = F.normalize(teacher[has_embedding].float(), dim=1)
    logits = F.normalize(embeddings.float(), dim=1) @ keys.T / temperature
    probabilities = torch.softmax(logits, dim=1)  # (C, M')
    column_of_row = torch.cumsum(has_embedding.long(), dim=0) - 1
    scored = has_embedding[object_rows]
    if bool(scored.any()):
        result[:, scored] = probabilities[:, column_of_row[object_rows[scored]]]
    return result


def combined_identity_probability(by_classifier: Tensor | None, by_teacher: Tensor | None) -> Tensor | None:
    """The classifier's probability where it has one, else the teacher's (``l2+ce``)."""
    if by_classifier is None:
        return by_teacher
    if by_teacher is None:
        return by_classifier
    return torch.where(torch.isnan(by_classifier), by_teacher, by_classifier)


@dataclasses.dataclass(frozen=True)
class IdentityScorer:
    """The re-ID probability source of a criterion: its identity classifier (CE) and / or the
    teacher embeddings of the image's boxes (L2, first ``teacher_dims`` dimensions)."""

    classifier: nn.Linear | None
    scale: float
    teacher_dims: int  # 0: no teacher term
    temperature: float

    def __call__(
        self, embeddings: Tensor, target: Mapping[str, Tensor], object_rows: Tensor
    ) -> Tensor | None:
        """(C, N) probability of object j's identity (its box ``object_rows[j]`` among the
        target's boxes) at each of the C embeddings; None when neither source is configured."""
        by_classifier = by_teacher = None
        if self.classifier is not None:
            identities = target["identities"][object_rows]
            by_classifier = classifier_identity_probability(
                embeddings, identities, self.classifier, self.scale
            )
        if self.teacher_dims:
            teacher = target["embeddings"][:, : self.teacher_dims]
            by_teacher = teacher_box_probability(embeddings, teacher, object_rows, self.temperature)
        return combined_identity_probability(by_classifier, by_teacher)


__all__ = [
    "IdentityScorer",
    "classifier_identity_probability",
    "combined_identity_probability",
    "teacher_box_probability",
]
