"""Student losses and anchor assignment, against values computed by hand."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from student import LossConfig, ModelConfig, StudentCriterion, StudentOutputs
from student.assign import IGNORED, NEGATIVE, assign_anchors, box_ioa
from student.config import ConfigError
from student.losses import (
    box_huber_loss_sum,
    embedding_l2_loss,
    identity_cross_entropy,
    identity_logit_scale,
    sigmoid_focal_loss_sum,
)


def boxes(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def flags(*values: bool) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


# --- assignment -----------------------------------------------------------------------


def test_assignment_thresholds():
    anchors = boxes(
        (0, 0, 10, 20),  # IoU 1.0 with the box: positive
        (0, 0, 10, 10),  # IoU 0.5: positive
        (0, 11, 10, 20),  # IoU 0.45: between the thresholds, ignored
        (0, 14, 10, 20),  # IoU 0.3: negative
        (100, 100, 110, 120),  # no overlap: negative
    )
    matched = assign_anchors(anchors, boxes((0, 0, 10, 20)), flags(False), LossConfig())
    assert matched.tolist() == [0, 0, IGNORED, NEGATIVE, NEGATIVE]


def test_low_quality_match_makes_a_boxs_best_anchor_positive():
    anchors = boxes((200, 200, 220, 240), (0, 0, 10, 10))
    box = boxes((200, 200, 230, 260))  # best IoU 800 / 1800 = 0.44
    assert assign_anchors(anchors, box, flags(False), LossConfig()).tolist() == [0, NEGATIVE]
    strict = LossConfig(allow_low_quality_matches=False)
    assert assign_anchors(anchors, box, flags(False), strict).tolist() == [IGNORED, NEGATIVE]


def test_degenerate_box_claims_no_anchor():
    anchors = boxes((0, 0, 10, 10), (50, 50, 60, 60))
    matched = assign_anchors(anchors, boxes((5, 5, 5, 30)), flags(False), LossConfig())
    assert matched.tolist() == [NEGATIVE, NEGATIVE]


def test_ignore_boxes_are_never_positive():
    anchors = boxes((0, 0, 10, 20), (0, 0, 10, 10), (40, 0, 50, 20))
    targets = boxes((0, 0, 10, 20), (40, 0, 50, 20))
    matched = assign_anchors(anchors, targets, flags(True, False), LossConfig())
    # anchor 0 matches the ignore box exactly: ignored, not positive (even as a low-quality match)
    assert matched.tolist() == [IGNORED, IGNORED, 1]
    everything_ignored = assign_anchors(anchors, targets, flags(True, True), LossConfig())
    assert (everything_ignored < 0).all()


def test_ignore_region_overlap_measures():
    anchors = boxes((0, 0, 10, 10), (10, 10, 110, 110), (300, 300, 310, 310))
    crowd = boxes((0, 0, 100, 100))
    by_ioa = assign_anchors(anchors, crowd, flags(True), LossConfig(ignore_overlap="ioa"))
    by_iou = assign_anchors(anchors, crowd, flags(True), LossConfig(ignore_overlap="iou"))
    # small anchor inside the crowd: IoA 1 (ignored) but IoU 0.01 (negative)
    assert by_ioa.tolist() == [IGNORED, IGNORED, NEGATIVE]
    assert by_iou.tolist() == [NEGATIVE, IGNORED, NEGATIVE]  # IoU 8100 / 11900 = 0.68
    torch.testing.assert_close(box_ioa(anchors, crowd), torch.tensor([[1.0, 0.81, 0.0]]))


def test_positive_match_wins_over_an_ignore_region():
    anchors = boxes((10, 10, 20, 30), (40, 40, 50, 50))
    targets = boxes((10, 10, 20, 30), (0, 0, 100, 100))
    matched = assign_anchors(anchors, targets, flags(False, True), LossConfig())
    assert matched.tolist() == [0, IGNORED]


# --- individual losses ----------------------------------------------------------------


def test_focal_loss_by_hand():
    logits = torch.tensor([0.0, 2.0, -1.0])
    targets = torch.tensor([1.0, 0.0, 1.0])
    alpha, gamma = 0.25, 1.5
    p_two, p_minus_one = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))
    expected = (
        alpha * math.log(2) * 0.5**gamma
        + (1 - alpha) * -math.log(1 - p_two) * p_two**gamma
        + alpha * -math.log(p_minus_one) * (1 - p_minus_one) ** gamma
    )
    value = sigmoid_focal_loss_sum(logits, targets, alpha, gamma)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    from torchvision.ops import sigmoid_focal_loss

    reference = sigmoid_focal_loss(logits, targets, alpha, gamma, reduction="sum")
    assert value.item() == pytest.approx(reference.item(), rel=1e-6)


def test_box_loss_is_huber_with_delta():
    predicted = torch.tensor([[0.05, -0.3, 0.0, 0.02]])
    value = box_huber_loss_sum(predicted, torch.zeros(1, 4), delta=0.1)
    expected = 0.5 * 0.05**2 + 0.1 * (0.3 - 0.05) + 0.0 + 0.5 * 0.02**2
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_embedding_l2_sums_dimensions_and_averages_rows_with_targets():
    predicted = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [float("nan"), float("nan")], [0.0, 3.0]])
    value = embedding_l2_loss(predicted, target)
    assert value.item() == pytest.approx((4.0 + 9.0) / 2)
    value.backward()
    assert predicted.grad is not None and predicted.grad[1].abs().sum() == 0


def test_embedding_l2_without_targets_is_an_exact_zero():
    predicted = torch.ones(2, 3, requires_grad=True)
    value = embedding_l2_loss(predicted, torch.full((2, 3), float("nan")))
    assert value.item() == 0.0
    value.backward()
    assert predicted.grad is not None and torch.equal(predicted.grad, torch.zeros(2, 3))


def test_identity_scale():
    assert identity_logit_scale(10) == pytest.approx(math.sqrt(2) * math.log(9))
    with pytest.raises(ValueError, match="at least 3"):
        identity_logit_scale(2)


def test_identity_cross_entropy_by_hand():
    torch.manual_seed(0)
    classifier = torch.nn.Linear(3, 5)
    embeddings = torch.tensor([[3.0, 0.0, 4.0], [1.0, 1.0, 1.0], [0.0, 2.0, 0.0]])
    identities = torch.tensor([2, -1, 4])
    scale = identity_logit_scale(5)
    value = identity_cross_entropy(embeddings, identities, classifier, scale)
    expected = 0.0
    for row, identity in ((0, 2), (2, 4)):
        unit = embeddings[row] / embeddings[row].norm()
        logits = classifier.weight @ (scale * unit) + classifier.bias
        expected += -(logits[identity] - torch.logsumexp(logits, dim=0)).item() / 2
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_identity_cross_entropy_without_identities_is_zero_not_nan():
    classifier = torch.nn.Linear(3, 5)
    embeddings = torch.randn(4, 3, requires_grad=True)
    value = identity_cross_entropy(embeddings, torch.full((4,), -1), classifier, 2.0)
    assert value.item() == 0.0
    value.backward()
    assert classifier.weight.grad is not None and torch.isfinite(classifier.weight.grad).all()
    empty = identity_cross_entropy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), classifier, 2.0)
    assert empty.item() == 0.0


# --- the criterion on a hand-made batch -----------------------------------------------

ANCHORS = boxes(
    (0, 0, 10, 20),  # matches the person exactly: positive
    (0, 11, 10, 20),  # IoU 0.45: ignored
    (100, 100, 110, 120),  # negative
    (50, 0, 60, 20),  # inside the ignore box: ignored
)


def hand_made_outputs(embedding_dim: int = 4) -> StudentOutputs:
    logits = torch.tensor([[[0.5], [7.0], [-1.0], [9.0]], [[0.5], [7.0], [-1.0], [9.0]]])
    deltas = torch.zeros(2, 4, 4)
    deltas[0, 0] = torch.tensor([0.05, -0.3, 0.0, 0.02])
    deltas[0, 1] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # ignored anchor: no box loss
    embeddings = torch.zeros(2, 4, embedding_dim)
    embeddings[0, 0] = torch.tensor([1.0, 2.0, 3.0, 2.0])[:embedding_dim]
    return StudentOutputs(
        class_logits=logits.requires_grad_(),
        box_deltas=deltas.requires_grad_(),
        embeddings=embeddings.requires_grad_(),
        anchors=ANCHORS,
        anchors_per_level=(4, 0, 0, 0, 0),
        anchors_per_location=1,
        image_size=(128, 160),
    )


def hand_made_targets(teacher_dim: int = 6) -> list[dict[str, torch.Tensor]]:
    person_and_crowd = {
        "boxes": boxes((0, 0, 10, 20), (50, 0, 60, 20)),
        "ignore": flags(False, True),
        "identities": torch.tensor([4, -1]),
        "embeddings": torch.tensor(
            [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0][:teacher_dim], [float("nan")] * teacher_dim]
        ),
    }
    empty = {
        "boxes": torch.zeros(0, 4),
        "ignore": torch.zeros(0, dtype=torch.bool),
        "identities": torch.zeros(0, dtype=torch.int64),
        "embeddings": torch.zeros(0, teacher_dim),
    }
    return [person_and_crowd, empty]


def expected_detection_terms() -> tuple[float, float]:
    focal = sigmoid_focal_loss_sum(
        torch.tensor([0.5, -1.0, 0.5, 7.0, -1.0, 9.0]),  # image 0: anchors 0, 2; image 1: all
        torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
        alpha=0.25,
        gamma=1.5,
    ).item()
    huber = 0.5 * 0.05**2 + 0.1 * (0.3 - 0.05) + 0.5 * 0.02**2
    return focal, huber  # one positive anchor: normalised by 1


def test_criterion_l2_mode_by_hand():
    model_config = ModelConfig(embedding_dim=4)
    criterion = StudentCriterion(LossConfig(), model_config)
    terms = criterion(hand_made_outputs(), hand_made_targets())
    focal, huber = expected_detection_terms()
    assert terms.num_positive_anchors == 1 and terms.num_embedding_anchors == 1
    assert terms.classification.item() == pytest.approx(focal, rel=1e-5)
    assert terms.box_regression.item() == pytest.approx(huber, rel=1e-5)
    assert terms.embedding_l2 is not None
    assert terms.embedding_l2.item() == pytest.approx((4.0 - 2.0) ** 2)  # first 4 of 6 teacher dims
    assert terms.identity_ce is None
    expected_total = 1.0 * focal + 50.0 * huber + 10.0 * 4.0
    assert terms.total.item() == pytest.approx(expected_total, rel=1e-5)
    terms.total.backward()
    assert set(terms.as_floats()) >= {"loss", "classification", "box_regression", "embedding_l2"}


def test_criterion_without_teacher_embeddings_has_zero_l2():
    targets = hand_made_targets()
    targets[0]["embeddings"] = torch.full((2, 6), float("nan"))
    outputs = hand_made_outputs()
    terms = StudentCriterion(LossConfig(), ModelConfig(embedding_dim=4))(outputs, targets)
    assert terms.embedding_l2 is not None and terms.embedding_l2.item() == 0.0
    terms.total.backward()
    assert outputs.embeddings is not None and outputs.embeddings.grad is not None
    assert torch.isfinite(outputs.embeddings.grad).all()


def test_criterion_rejects_teacher_narrower_than_student():
    criterion = StudentCriterion(LossConfig(), ModelConfig(embedding_dim=4))
    with pytest.raises(ValueError, match="teacher embeddings have 3 dims"):
        criterion(hand_made_outputs(), hand_made_targets(teacher_dim=3))


def test_criterion_cross_entropy_and_uncertainty_weighting():
    loss_config = LossConfig(embedding_loss="l2+ce", uncertainty_weighting=True)
    criterion = StudentCriterion(loss_config, ModelConfig(embedding_dim=4), num_identities=5)
    assert criterion.identity_classifier is not None
    assert criterion.identity_scale == pytest.approx(math.sqrt(2) * math.log(4))
    terms = criterion(hand_made_outputs(), hand_made_targets())
    assert terms.num_identity_anchors == 1
    logits = criterion.identity_classifier(
        criterion.identity_scale * F.normalize(torch.tensor([[1.0, 2.0, 3.0, 2.0]]), dim=1)
    )
    expected_ce = F.cross_entropy(logits, torch.tensor([4])).item()
    assert terms.identity_ce is not None
    assert terms.identity_ce.item() == pytest.approx(expected_ce, rel=1e-5)
    focal, huber = expected_detection_terms()
    detection = focal + 50 * huber
    identity = 10 * 4.0 + expected_ce
    s_det, s_id = -1.85, -1.05
    expected = 0.5 * (math.exp(-s_det) * detection + math.exp(-s_id) * identity + s_det + s_id)
    assert terms.total.item() == pytest.approx(expected, rel=1e-5)
    terms.total.backward()
    assert criterion.detection_log_variance is not None
    assert criterion.detection_log_variance.grad is not None


def test_criterion_cross_entropy_batch_without_identities_is_zero():
    targets = hand_made_targets()
    targets[0]["identities"] = torch.tensor([-1, -1])
    criterion = StudentCriterion(LossConfig(embedding_loss="ce"), ModelConfig(embedding_dim=4), 5)
    terms = criterion(hand_made_outputs(), targets)
    assert terms.embedding_l2 is None
    assert terms.identity_ce is not None and terms.identity_ce.item() == 0.0
    assert torch.isfinite(terms.total)
    terms.total.backward()


def test_criterion_for_the_detection_only_model_needs_no_embeddings():
    outputs = dataclasses.replace(hand_made_outputs(), embeddings=None)
    targets = [{"boxes": t["boxes"], "ignore": t["ignore"]} for t in hand_made_targets()]
    terms = StudentCriterion(LossConfig(), ModelConfig(embedding_dim=0))(outputs, targets)
    focal, huber = expected_detection_terms()
    assert terms.embedding_l2 is None and terms.identity_ce is None
    assert terms.total.item() == pytest.approx(focal + 50 * huber, rel=1e-5)
    with pytest.raises(ValueError, match="uncertainty"):
        StudentCriterion(LossConfig(uncertainty_weighting=True), ModelConfig(embedding_dim=0))


def test_loss_config_round_trip_and_strictness(tmp_path: Path):
    config = LossConfig(embedding_loss="l2+ce", box_weight=20, ignore_overlap="iou")
    config.to_yaml(tmp_path / "loss.yaml")
    assert LossConfig.from_yaml(tmp_path / "loss.yaml") == config
    assert isinstance(LossConfig.from_dict({"box_weight": 20}).box_weight, float)
    with pytest.raises(ConfigError, match="LossConfig: unknown key"):
        LossConfig.from_dict({"box_wieght": 20})
    with pytest.raises(ConfigError, match="embedding_loss"):
        LossConfig.from_dict({"embedding_loss": "triplet"})
