"""AdaMOT's options of the CenterNet student: the one-to-k assignment on hand-made boxes and costs,
the re-ID probability (classifier and teacher softmax), the discriminative focal loss against
hand-computed values, the config checks, and a two-step training run with both options.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from student_fixtures import small_centernet

from student.centernet import CenterNetCriterion, CenterNetOutputs, build_center_targets
from student.centernet.assignment import (
    assign_image,
    candidate_cells,
    focal_classification_cost,
    matching_cost,
    one_to_k_assignment,
)
from student.centernet.assignment_report import measure_assignment
from student.centernet.decoding import decode_boxes
from student.centernet.losses import UNSCORED_SOFT_TARGET, discriminative_focal_loss
from student.centernet.model import CenterHead
from student.centernet.reid_probability import classifier_identity_probability, teacher_box_probability
from student.centernet.targets import cells_inside_each_box
from student.checkpoint import CheckpointError, load_checkpoint
from student.config import ConfigError, LossConfig, ModelConfig
from student.engine import train
from student.families import build_criterion, build_student
from student.losses import sigmoid_focal_loss_sum
from student.recipe import CONFIGS_DIR, DataConfig, OptimConfig, RunConfig, TrainConfig, load_train_config
from student.sources import ShardSource

STRIDE = 4
ADAMOT = dict(assignment="adamot", classification_loss="discriminative_focal")


def hand_outputs(heatmap_logits: torch.Tensor, embeddings: torch.Tensor | None = None) -> CenterNetOutputs:
    """Outputs of one image: the given (H, W) heatmap logits, box / offset 0, dense embeddings."""
    height, width = heatmap_logits.shape
    dim = embeddings.shape[0] if embeddings is not None else 0
    return CenterNetOutputs(
        heatmap_logits=heatmap_logits[None, None].clone().requires_grad_(True),
        box=torch.zeros((1, 4, height, width), requires_grad=True),
        offset=torch.zeros((1, 2, height, width), requires_grad=True),
        embeddings=embeddings[None].clone().requires_grad_(True) if embeddings is not None else None,
        features=torch.zeros((1, 4, height, width)),
        embedding_head=CenterHead(4, 4, dim) if dim else None,
        stride=STRIDE,
        image_size=(height * STRIDE, width * STRIDE),
    )


def one_target(boxes, identities=None, embeddings=None, dim=8) -> dict[str, torch.Tensor]:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    count = len(boxes)
    return {
        "boxes": boxes,
        "ignore": torch.zeros(count, dtype=torch.bool),
        "identities": torch.tensor(identities if identities is not None else [-1] * count),
        "embeddings": torch.tensor(embeddings, dtype=torch.float32)
        if embeddings is not None
        else torch.full((count, dim), float("nan")),
    }


# ---- the matching ----------------------------------------------------------------------------
def test_the_k_cheapest_allowed_cells_win_and_k_is_capped_by_the_allowed_cells():
    # 6 cells, 2 objects. Object 0 may take cells 0-3, object 1 only cell 5. Cell 4 is the
    # cheapest of all for object 0 but lies outside its box: never chosen.
    cost = torch.tensor(
        [[0.3, 9.0], [0.1, 9.0], [0.5, 9.0], [0.2, 9.0], [-5.0, 9.0], [9.0, 0.7]], dtype=torch.float32
    )
    allowed = torch.zeros(6, 2, dtype=torch.bool)
    allowed[:4, 0] = True
    allowed[5, 1] = True
    rows, objects = one_to_k_assignment(cost, allowed, k=3)
    # object 0: its three cheapest allowed cells 1 (0.1), 3 (0.2), 0 (0.3); object 1: its one cell
    assert rows.tolist() == [0, 1, 3, 5]
    assert objects.tolist() == [0, 0, 0, 1]
    rows, objects = one_to_k_assignment(cost, allowed, k=10)  # capped at 4 and 1
    assert rows.tolist() == [0, 1, 2, 3, 5] and objects.tolist() == [0, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="k must be >= 1"):
        one_to_k_assignment(cost, allowed, k=0)


def test_overlapping_objects_never_share_a_cell_and_the_matching_minimises_the_total():
    # Cells 0-2 inside both boxes. Cell 0 is the best of both objects; giving it to object 0
    # (0.0 + 1.0 for cell 1 to object 1 = 1.0) beats giving it to object 1 (0.9 + 0.5 = 1.4).
    cost = torch.tensor([[0.0, 0.5], [0.9, 1.0], [3.0, 3.0]])
    allowed = torch.ones(3, 2, dtype=torch.bool)
    rows, objects = one_to_k_assignment(cost, allowed, k=1)
    assert list(zip(rows.tolist(), objects.tolist(), strict=True)) == [(0, 0), (1, 1)]
    # two cells for 2 x 2 wanted: the matching still uses each cell at most once
    rows, objects = one_to_k_assignment(cost[:2], allowed[:2], k=2)
    assert sorted(rows.tolist()) == [0, 1]
    # an object whose only allowed cell is taken gets fewer than k, never a cell outside its box
    allowed_one = torch.tensor([[True, True], [True, False]])
    rows, objects = one_to_k_assignment(torch.tensor([[0.0, 0.0], [0.0, 5.0]]), allowed_one, k=1)
    assert list(zip(rows.tolist(), objects.tolist(), strict=True)) == [(1, 0), (0, 1)]


def test_candidates_are_the_cells_whose_centre_lies_inside_the_box_plus_a_tiny_objects_centre():
    # map 6 x 8 cells at stride 4. Box x 6..18, y 2..10 contains centres x 6, 10, 14, 18 (cols 1-4)
    # and y 2, 6, 10 (rows 0-2). A 2 x 2 box at x 29..31, y 13..15 contains none: its centre cell
    # (col 7, row 3) is its only candidate.
    boxes = torch.tensor([[6.0, 2.0, 18.0, 10.0], [29.0, 13.0, 31.0, 15.0]])
    centre_cells = torch.tensor([1 * 8 + 3, 3 * 8 + 7])
    cells, allowed = candidate_cells(boxes, centre_cells, (6, 8), STRIDE)
    inside_first = sorted(row * 8 + col for row in range(3) for col in range(1, 5))
    assert cells[allowed[:, 0]].tolist() == inside_first
    assert cells[allowed[:, 1]].tolist() == [3 * 8 + 7]
    assert sorted(cells.tolist()) == sorted(inside_first + [31])


def test_matching_cost_is_the_weighted_focal_l1_and_giou_sum():
    # one cell predicting x 0..20, y 0..40 with score 0.6, object box x 10..30, y 0..40, input 80 x 40
    scores = torch.tensor([0.6])
    predicted = torch.tensor([[0.0, 0.0, 20.0, 40.0]])
    box = torch.tensor([[10.0, 0.0, 30.0, 40.0]])
    focal = 0.25 * 0.4**2 * -math.log(0.6) - 0.75 * 0.6**2 * -math.log(0.4)
    l1 = (10 + 0 + 10 + 0) / 80
    giou = (10 * 40) / (30 * 40)  # IoU 1/3, the enclosing box is the union
    cost = matching_cost(scores, predicted, box, (40, 80))
    assert cost.item() == pytest.approx(2.5 * focal + 5 * l1 - 2 * giou, rel=1e-5)
    # identity-aware: the mean of the costs of p and p * sqrt(r)
    reid = torch.tensor([[0.25]])
    aware = matching_cost(scores, predicted, box, (40, 80), reid)
    weighted = float(focal_classification_cost(torch.tensor(0.6 * 0.5)))
    assert aware.item() == pytest.approx(2.5 * (focal + weighted) / 2 + 5 * l1 - 2 * giou, rel=1e-5)
    # NaN (no identity): the plain cost
    assert (
        matching_cost(scores, predicted, box, (40, 80), torch.tensor([[float("nan")]])).item() == cost.item()
    )


def test_the_identity_term_moves_a_positive_to_where_the_embedding_identifies_the_object():
    # Two candidate cells with the same box; cell 0 scores a little higher (0.60 vs 0.55) but its
    # embedding does not identify the object (r 0.05), cell 1's does (r 0.95).
    cells = torch.tensor([10, 11])
    allowed = torch.ones(2, 1, dtype=torch.bool)
    scores = torch.tensor([0.60, 0.55])
    boxes = torch.tensor([[0.0, 0.0, 20.0, 40.0], [0.0, 0.0, 20.0, 40.0]])
    box = torch.tensor([[0.0, 0.0, 20.0, 40.0]])
    plain = assign_image(cells, allowed, scores, boxes, box, (64, 96), None, k=1)
    assert plain.cell_index.tolist() == [10]
    reid = torch.tensor([[0.05], [0.95]])
    aware = assign_image(cells, allowed, scores, boxes, box, (64, 96), reid, k=1)
    assert aware.cell_index.tolist() == [11]
    assert aware.reid_probability.tolist() == pytest.approx([0.95])
    stats = aware.statistics
    assert (stats.objects, stats.positives, stats.identity_objects, stats.identity_changed_objects) == (
        1,
        1,
        1,
        1,
    )
    assert stats.changed_positive_fraction == 1.0 and stats.positives_histogram == (0, 1)
    # the term does not change a choice it agrees with
    agreeing = assign_image(cells, allowed, scores, boxes, box, (64, 96), reid.flip(0), k=1)
    assert agreeing.cell_index.tolist() == [10] and agreeing.statistics.identity_changed_objects == 0
    pooled = stats + agreeing.statistics
    assert (pooled.objects, pooled.identity_changed_objects, pooled.changed_object_fraction) == (2, 1, 0.5)


# ---- re-ID probability -----------------------------------------------------------------------
def test_teacher_softmax_over_the_images_boxes_at_the_true_box():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # raw: normalised inside
    teacher = torch.tensor([[3.0, 0.0], [float("nan"), float("nan")], [0.0, 1.0]])
    probability = teacher_box_probability(embeddings, teacher, torch.tensor([0, 2, 1]), temperature=0.5)
    high, low = math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)  # softmax of (1, 0) / 0.5
    assert probability[:, 0].tolist() == pytest.approx([high, low])
    assert probability[:, 1].tolist() == pytest.approx([low, high])
    assert torch.isnan(probability[:, 2]).all()  # its box has no teacher embedding
    single = teacher_box_probability(embeddings, teacher[:1], torch.tensor([0]), temperature=0.1)
    assert single.tolist() == [[1.0], [1.0]]  # one person in the image: nobody to confuse it with


def test_classifier_probability_is_the_softmax_of_the_ce_logits():
    classifier = torch.nn.Linear(2, 3)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
        classifier.bias.zero_()
    probability = classifier_identity_probability(
        torch.tensor([[2.0, 0.0]]), torch.tensor([0, -1]), classifier, 2.0
    )
    logits = torch.tensor([2.0, 0.0, -2.0])
    assert probability[0, 0].item() == pytest.approx(torch.softmax(logits, 0)[0].item())
    assert math.isnan(probability[0, 1].item())


# ---- discriminative focal loss ---------------------------------------------------------------
def test_discriminative_focal_loss_matches_a_hand_computed_value():
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0]])  # p = 0.5, 0.731, 0.269, 0.881
    positive = torch.tensor([[True, False, False, True]])
    soft = torch.tensor([[0.6, 0.0, 0.0, 0.7]])
    counted = torch.tensor([[True, True, False, True]])  # cell 2 is not counted
    weight = torch.tensor([[1.0, 0.5, 1.0, 1.0]])
    p = torch.sigmoid(logits)[0].tolist()
    alpha = ((0.6 + 0.7) / 2) ** 2
    beta = 3 * alpha
    positive_sum = (0.6 * (1 - p[0])) ** 2 * -math.log(p[0]) + (0.7 * (1 - p[3])) ** 2 * -math.log(p[3])
    negative_sum = beta * 0.5 * p[1] ** 2 * -math.log(1 - p[1])
    expected = (positive_sum + negative_sum) / (alpha + beta) / 2
    loss = discriminative_focal_loss(logits, positive, soft, counted, weight, gamma=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_discriminative_focal_loss_with_every_target_one_is_the_plain_focal_loss():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 7, generator=generator)
    positive = torch.rand(2, 6, 7, generator=generator) < 0.2
    counted = torch.ones_like(positive)
    loss = discriminative_focal_loss(logits, positive, positive.float(), counted, gamma=2.0)
    plain = sigmoid_focal_loss_sum(logits, positive.float(), alpha=0.25, gamma=2.0)  # RetinaNet's
    assert loss.item() == pytest.approx(plain.item() / int(positive.sum()), rel=1e-5)


# ---- the criterion ---------------------------------------------------------------------------
def test_adamot_positives_are_the_k_best_scored_cells_inside_each_box_and_decode_to_it():
    # 16 x 24 map. Two overlapping people (x 12..30 and 20..40); the heatmap is high on 8 cells
    # inside them (col 5 and col 6 lie in both boxes) and low elsewhere. Boxes and offsets are 0:
    # every candidate predicts a point inside the box, whose L1 and GIoU costs are the same for
    # all of the object's cells, so the scores decide.
    logits = torch.full((16, 24), -6.0)
    high = [(4, 4), (5, 4), (6, 4), (6, 5), (5, 6), (6, 6), (5, 8), (6, 8)]  # (row, col)
    for row, col in high:
        logits[row, col] = 4.0
    outputs = hand_outputs(logits)
    target = one_target([[12.0, 8.0, 30.0, 36.0], [20.0, 8.0, 40.0, 36.0]])
    criterion = CenterNetCriterion(
        LossConfig(assignment="adamot", positives_per_object=4), small_centernet(embedding_dim=0)
    )
    positives = criterion.positives(outputs, [criterion.checked_target(target, torch.device("cpu"))])
    assert sorted(positives.cell_index.tolist()) == sorted(row * 24 + col for row, col in high)
    assert positives.statistics.positives_histogram == (0, 0, 0, 0, 2)  # 4 each, no cell shared
    objects = build_center_targets(target["boxes"], target["ignore"], (16, 24), STRIDE)
    owner = torch.stack([(objects.box == box).all(dim=1).nonzero()[0, 0] for box in positives.box])
    inside = cells_inside_each_box(target["boxes"], (16, 24), STRIDE).flatten(1)
    assert inside[owner, positives.cell_index].all()  # every positive inside its own object's box
    # each positive's offset and box targets, written at its cell, decode to its object's box
    box_map = torch.zeros(1, 4, 16, 24)
    offset_map = torch.zeros(1, 2, 16, 24)
    box_map.flatten(2)[0, :, positives.cell_index] = positives.box.T
    offset_map.flatten(2)[0, :, positives.cell_index] = positives.offset.T
    written = dataclasses.replace(outputs, box=box_map, offset=offset_map)
    decoded = decode_boxes(written, positives.image_index, positives.cell_index)
    assert torch.allclose(decoded, target["boxes"][owner], atol=1e-4)


def test_centre_assignment_with_the_discriminative_loss_reads_the_teacher_probability_at_the_centres():
    logits = torch.full((16, 24), -2.0)
    embeddings = torch.zeros(2, 16, 24)
    embeddings[0] = 1.0  # every cell's embedding is (1, 0): box 0's teacher embedding
    target = one_target(
        [[12.0, 8.0, 30.0, 36.0], [60.0, 8.0, 80.0, 36.0], [40.0, 40.0, 50.0, 60.0]],
        embeddings=[[1.0, 0.0], [0.0, 1.0], [float("nan")] * 2],
        dim=2,
    )
    criterion = CenterNetCriterion(
        LossConfig(classification_loss="discriminative_focal", reid_probability_temperature=0.5),
        small_centernet(embedding_dim=2),
    )
    outputs = hand_outputs(logits, embeddings)
    positives = criterion.positives(outputs, [criterion.checked_target(target, torch.device("cpu"))])
    high, low = math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)  # softmax of (1, 0) / 0.5
    assert positives.reid_probability[:2].tolist() == pytest.approx([high, low])
    assert math.isnan(positives.reid_probability[2].item())  # no teacher embedding: no identity term
    assert positives.statistics is None and len(positives.cell_index) == 3
    # the heatmap loss is the discriminative focal loss with t = sigmoid(r) (sigmoid(1) without r)
    objects = build_center_targets(target["boxes"], target["ignore"], (16, 24), STRIDE)
    positive = torch.zeros(1, 16 * 24, dtype=torch.bool)
    positive[0, objects.cell_index] = True
    soft = torch.zeros(1, 16 * 24)
    soft[0, objects.cell_index] = torch.sigmoid(torch.tensor([high, low, 1.0]))
    expected = discriminative_focal_loss(
        logits[None], positive.view(1, 16, 24), soft.view(1, 16, 24), torch.ones(1, 16, 24, dtype=torch.bool),
        negative_weight=(1 - objects.heatmap[None]) ** 4, gamma=2.0,
    )  # fmt: skip
    assert criterion(outputs, [target]).classification.item() == pytest.approx(expected.item(), rel=1e-6)
    assert pytest.approx(1 / (1 + math.exp(-1))) == UNSCORED_SOFT_TARGET


@pytest.mark.parametrize("embedding_loss", ["l2", "ce"])
def test_gradients_reach_every_head_with_both_options(embedding_loss):
    torch.manual_seed(0)
    config = small_centernet()
    model = build_student(config, warn_if_random_backbone=False)
    criterion = build_criterion(
        LossConfig(embedding_loss=embedding_loss, box_weight=0.1, **ADAMOT), config, 5
    )
    targets = [one_target([[10.0, 5.0, 30.0, 60.0], [24.0, 8.0, 50.0, 58.0]], identities=[0, 3],
                          embeddings=torch.randn(2, 8).tolist())]  # fmt: skip
    terms = criterion(model(torch.rand(1, 3, 64, 96)), targets)
    terms.total.backward()
    for head in (model.heatmap_head, model.box_head, model.offset_head, model.embedding_head):
        assert head.output.weight.grad is not None and head.output.weight.grad.abs().sum() > 0
    assert terms.assignment.objects == 2 and terms.as_floats()["positives_per_object"] == 7.0
    assert "identity_changed_objects" in terms.as_floats()


# ---- configuration ---------------------------------------------------------------------------
def test_the_options_are_validated_with_errors_naming_the_key():
    with pytest.raises(ConfigError, match="positives_per_object must be >= 1"):
        LossConfig(positives_per_object=0)
    with pytest.raises(ConfigError, match="reid_probability_temperature must be a positive"):
        LossConfig(reid_probability_temperature=0.0)
    with pytest.raises(ConfigError, match="assignment must be one of"):
        LossConfig(assignment="hungarian")
    with pytest.raises(ConfigError, match="classification_loss.*'soft' is not one of"):
        LossConfig.from_dict({"classification_loss": "soft"})
    retinanet = ModelConfig(backbone="mobilenet_v2_fpn", embedding_dim=8)
    with pytest.raises(
        ConfigError, match="loss.assignment 'adamot' is implemented for model.family 'centernet'"
    ):
        build_criterion(LossConfig(assignment="adamot"), retinanet)
    with pytest.raises(ConfigError, match="loss.classification_loss 'discriminative_focal' is implemented"):
        TrainConfig(model=retinanet, data=DataConfig(train=(ShardSource("x"),)),
                    loss=LossConfig(classification_loss="discriminative_focal"))  # fmt: skip
    with pytest.raises(ConfigError, match="needs an embedding head"):
        build_criterion(
            LossConfig(classification_loss="discriminative_focal"), small_centernet(embedding_dim=0)
        )
    build_criterion(
        LossConfig(assignment="adamot"), small_centernet(embedding_dim=0)
    )  # one-to-k without re-ID


@pytest.mark.parametrize(
    ("recipe", "base"),
    [
        ("pets09-centernet-adamot.yaml", "pets09-centernet.yaml"),
        ("pets09-centernet-ce-adamot.yaml", "pets09-centernet-ce.yaml"),
    ],
)
def test_the_adamot_recipes_differ_from_their_base_only_in_the_adamot_keys_and_the_peak_nms(recipe, base):
    config, reference = load_train_config(CONFIGS_DIR / recipe), load_train_config(CONFIGS_DIR / base)
    assert config.loss == dataclasses.replace(reference.loss, assignment="adamot", positives_per_object=7,
                                              classification_loss="discriminative_focal")  # fmt: skip
    assert config.model == dataclasses.replace(reference.model, peak_nms_thresh=0.5)  # k peaks per person
    assert (config.data, config.optim, config.augment) == (reference.data, reference.optim, reference.augment)
    assert config.run.out_dir != reference.run.out_dir


# ---- training --------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*validation images are also training images:UserWarning")
def test_two_training_steps_log_the_statistics_and_a_resume_with_another_assignment_is_refused(
    pets_dir, mobilenet_v2_features, tmp_path: Path
):
    from student_fixtures import write_pets_shard_dir

    shards = write_pets_shard_dir(tmp_path / "shards", pets_dir)
    source = ShardSource(directory=str(shards))
    config = TrainConfig(
        model=small_centernet(embedding_dim=16, input_height=144, input_width=192),
        data=DataConfig(train=(source,), validation=(source,)),
        loss=LossConfig(embedding_loss="l2", box_weight=0.1, **ADAMOT),
        optim=OptimConfig(optimizer="adamw", learning_rate=1e-3, warmup_steps=1, batch_size=2, max_steps=2),
        run=RunConfig(out_dir=str(tmp_path / "run"), backbone_weights=str(mobilenet_v2_features),
                      checkpoint_every=1, log_every=1, tensorboard=False, threads=1, evaluate_at_end=False),
    )  # fmt: skip
    outcome = train(config, progress=False)
    assert all(math.isfinite(loss) for loss in outcome.step_losses)
    with open(outcome.out_dir / "train_log.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    # at 144 x 192 some people are smaller than 7 cells: between the centre assignment's 1 and k
    assert all(1.0 < float(row["positives_per_object"]) <= 7.0 for row in rows) and len(rows) == 2
    assert all(0.0 <= float(row["identity_changed_objects"]) <= 1.0 for row in rows)
    report = measure_assignment(outcome.last_checkpoint, images=2)
    boxes = report.statistics.objects
    assert report.images == 2 and boxes > 0 and report.statistics.identity_objects == boxes
    assert sum(report.statistics.positives_histogram) == boxes
    centre = dataclasses.replace(config, loss=dataclasses.replace(config.loss, assignment="centre"),
                                 optim=dataclasses.replace(config.optim, max_steps=3))  # fmt: skip
    with pytest.raises(CheckpointError, match="loss.assignment: checkpoint 'adamot', expected 'centre'"):
        train(centre, resume=outcome.out_dir / "step_000001.pt", progress=False)


def test_checkpoints_from_before_the_options_resume_with_their_defaults(tmp_path: Path):
    from student.checkpoint import TrainingCheckpoint, save_checkpoint

    old_loss = {key: value for key, value in LossConfig().to_dict().items()
                if key not in ("assignment", "positives_per_object", "classification_loss",
                               "reid_probability_temperature")}  # fmt: skip
    path = save_checkpoint(
        tmp_path / "old.pt",
        TrainingCheckpoint(step=1, model_state={}, model_config=small_centernet().to_dict(),
                           config={"model": small_centernet().to_dict(), "loss": old_loss}),
    )  # fmt: skip
    loss = LossConfig.from_dict(load_checkpoint(path).config["loss"])
    assert (loss.assignment, loss.classification_loss) == ("centre", "focal")
