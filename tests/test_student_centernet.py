"""The "centernet" student family: targets, losses and decoding against hand-made values, the
sparse embedding head against the dense one, family checks on checkpoints, and an overfit on
real PETS09 frames through the unchanged trainer.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from student_fixtures import distill_real_pets_frames, small_centernet

import student
from student.api import load_student
from student.augment import AugmentConfig, letterbox
from student.centernet import (
    CenterNetCriterion,
    CenterNetOutputs,
    build_center_targets,
    decode_center_outputs,
    gaussian_radius,
)
from student.centernet.losses import penalty_reduced_focal_loss
from student.centernet.model import CenterHead
from student.centernet.targets import box_samples, cell_positions
from student.checkpoint import CheckpointError, TrainingCheckpoint, save_checkpoint
from student.config import ConfigError, LossConfig, ModelConfig, check_loss_fits_model
from student.engine import train
from student.evaluate import evaluate_checkpoint
from student.families import build_student
from student.recipe import CONFIGS_DIR, DataConfig, OptimConfig, RunConfig, TrainConfig, load_train_config
from student.sources import ShardSource
from student.transforms import detections_to_original

STRIDE = 4


def target(boxes, ignore=None, identities=None, embeddings=None) -> dict[str, torch.Tensor]:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    count = len(boxes)
    return {
        "boxes": boxes,
        "ignore": torch.tensor(ignore if ignore is not None else [False] * count, dtype=torch.bool),
        "identities": torch.tensor(identities if identities is not None else [-1] * count, dtype=torch.int64),
        "embeddings": torch.tensor(embeddings, dtype=torch.float32)
        if embeddings is not None
        else torch.full((count, 8), float("nan")),
    }


def hand_outputs(map_size=(16, 24), embedding_dim=8, box_values=4, heatmap_logit=-10.0) -> CenterNetOutputs:
    """Outputs with every map constant: heatmap logits ``heatmap_logit``, box / offset / embedding 0."""
    height, width = map_size
    head = CenterHead(4, 4, embedding_dim) if embedding_dim else None
    return CenterNetOutputs(
        heatmap_logits=torch.full((1, 1, height, width), heatmap_logit, requires_grad=True),
        box=torch.zeros((1, box_values, height, width), requires_grad=True),
        offset=torch.zeros((1, 2, height, width), requires_grad=True),
        embeddings=torch.zeros((1, embedding_dim, height, width), requires_grad=True)
        if embedding_dim
        else None,
        features=torch.zeros((1, 4, height, width)),
        embedding_head=head,
        stride=STRIDE,
        image_size=(height * STRIDE, width * STRIDE),
    )


# ---- targets ---------------------------------------------------------------------------------
def test_radius_is_centernets_formula_on_a_hand_computed_box():
    # 20 x 10 cells, min overlap 0.7. Case 3 (one corner in, one out) binds:
    # a = 2.8, b = -42, c = -60: (b + sqrt(b^2 - 4ac)) / 2 = (-42 + sqrt(2436)) / 2 = 3.6778
    # (case 1: (30 + sqrt(900 - 4 * 35.294)) / 2 = 28.77; case 2: (60 + sqrt(3600 - 960)) / 2 = 55.69)
    radius = gaussian_radius(torch.tensor([20.0]), torch.tensor([10.0]), 0.7)
    assert radius.item() == pytest.approx((-42 + math.sqrt(2436)) / 2, abs=1e-4)


def test_heatmap_peaks_at_exactly_one_on_the_centre_cell_within_the_radius():
    # box 40 x 80 px at stride 4: 10 x 20 cells (radius 3.68 above); x 6..46 px -> cells
    # 1.5..11.5, centre 6.5 -> column 6; y 10..90 px -> cells 2.5..22.5, centre 12.5 -> row 12
    targets = build_center_targets(
        torch.tensor([[6.0, 10.0, 46.0, 90.0]]), torch.tensor([False]), (32, 24), STRIDE
    )
    heatmap = targets.heatmap
    assert targets.radius.tolist() == [3]  # the hand-computed 3.68 above, floored
    assert heatmap[12, 6].item() == 1.0 and int((heatmap == 1).sum()) == 1
    assert targets.cell_index.tolist() == [12 * 24 + 6]
    torch.testing.assert_close(targets.offset, torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(targets.box, torch.tensor([[5.0, 10.0, 5.0, 10.0]]))  # l, t, r, b in cells
    sigma = 7 / 6  # diameter 2r + 1 = 7
    assert heatmap[12, 7].item() == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-6)
    assert heatmap[15, 9].item() == pytest.approx(math.exp(-18 / (2 * sigma**2)), rel=1e-6)
    nonzero_rows, nonzero_columns = torch.nonzero(heatmap, as_tuple=True)
    assert (nonzero_rows.min(), nonzero_rows.max()) == (9, 15)  # within the radius only
    assert (nonzero_columns.min(), nonzero_columns.max()) == (3, 9)
    wh = build_center_targets(torch.tensor([[6.0, 10.0, 46.0, 90.0]]), torch.tensor([False]), (32, 24), STRIDE,
                              box_encoding="wh")  # fmt: skip
    torch.testing.assert_close(wh.box, torch.tensor([[10.0, 20.0]]))


def test_overlapping_people_take_the_maximum_and_ignore_boxes_are_not_counted():
    person = [6.0, 10.0, 46.0, 90.0]
    neighbour = [14.0, 10.0, 54.0, 90.0]  # same size, centre two cells to the right
    ignored = [60.0, 0.0, 90.0, 40.0]
    both = build_center_targets(
        torch.tensor([person, neighbour, ignored]), torch.tensor([False, False, True]), (32, 24), STRIDE
    )
    alone = [
        build_center_targets(torch.tensor([b]), torch.tensor([False]), (32, 24), STRIDE)
        for b in (person, neighbour)
    ]
    torch.testing.assert_close(both.heatmap, torch.maximum(alone[0].heatmap, alone[1].heatmap))
    assert both.heatmap[12, 6] == 1 and both.heatmap[12, 8] == 1
    assert both.box_index.tolist() == [0, 1]  # the ignore box is no object
    # cells whose centre lies in the ignore box are left out, unless a person's Gaussian reaches them
    assert not both.counted[2, 18] and both.counted[2, 2] and both.counted[20, 18]
    reaching = build_center_targets(torch.tensor([person, [0.0, 40.0, 40.0, 60.0]]), torch.tensor([False, True]),
                                    (32, 24), STRIDE)  # fmt: skip
    assert bool(reaching.counted[12, 6]) and not bool(reaching.counted[14, 0])


# ---- encode -> decode ------------------------------------------------------------------------
@pytest.mark.parametrize("box_encoding", ["ltrb", "wh"])
def test_targets_written_into_the_maps_decode_back_to_the_boxes_through_the_letterbox(box_encoding):
    original = np.array([[100.0, 50.0, 160.0, 230.0], [400.5, 300.25, 470.0, 500.0]])
    _, placement = letterbox(np.zeros((576, 768, 3), np.uint8), (192, 288))  # scale 1/3, padded left/right
    input_boxes = torch.from_numpy(placement.to_output(original)).float()
    map_size = (192 // STRIDE, 288 // STRIDE)
    targets = build_center_targets(input_boxes, torch.tensor([False, False]), map_size, STRIDE,
                                   box_encoding=box_encoding)  # fmt: skip
    outputs = hand_outputs(map_size, box_values=4 if box_encoding == "ltrb" else 2)
    with torch.no_grad():
        outputs.heatmap_logits.flatten()[targets.cell_index] = torch.tensor([3.0, 2.0])
        for maps, values in ((outputs.box, targets.box), (outputs.offset, targets.offset)):
            maps.flatten(2)[0, :, targets.cell_index] = values.T
        outputs.embeddings.flatten(2)[0, :, targets.cell_index] = torch.eye(8)[:2].T * 3
    config = small_centernet(box_encoding=box_encoding, score_thresh=0.5)
    with torch.no_grad():
        (found,) = decode_center_outputs(outputs, config)
    assert found.anchor_indices.tolist() == targets.cell_index.tolist()  # the two peaks, best first
    torch.testing.assert_close(found.scores, torch.sigmoid(torch.tensor([3.0, 2.0])))
    decoded, has_area = detections_to_original(placement, found.boxes.numpy())
    assert has_area.all()
    np.testing.assert_allclose(decoded, original, atol=1e-3)
    torch.testing.assert_close(found.embeddings, torch.eye(8)[:2])  # read at the peaks, L2-normalised


def test_decoding_keeps_local_maxima_above_the_threshold_up_to_top_k():
    outputs = hand_outputs((8, 8), embedding_dim=0)
    with torch.no_grad():
        logits = outputs.heatmap_logits[0, 0]
        logits[2, 2], logits[2, 3] = 2.0, 1.0  # a peak and its weaker neighbour
        logits[6, 6], logits[0, 7] = 1.5, 0.5
    with torch.no_grad():
        (found,) = decode_center_outputs(outputs, small_centernet(embedding_dim=0, score_thresh=0.5))
    assert found.anchor_indices.tolist() == [2 * 8 + 2, 6 * 8 + 6, 0 * 8 + 7] and found.embeddings is None
    (top_two,) = decode_center_outputs(outputs, small_centernet(embedding_dim=0, score_thresh=0.5,
                                                                 detections_per_image=2))  # fmt: skip
    assert top_two.anchor_indices.tolist() == [18, 54]
    (strict,) = decode_center_outputs(outputs, small_centernet(embedding_dim=0, score_thresh=0.8))
    assert strict.anchor_indices.tolist() == [18, 54]


def test_peak_nms_merges_peaks_of_one_box_that_the_max_pool_keeps_image_by_image():
    """Two peaks two cells apart predicting the same box (what k positives per object can
    leave): the 3x3 max-pool keeps both, a box NMS keeps the better; other boxes, other images
    and the order (image by image, best first) are untouched."""
    single = hand_outputs((8, 8), embedding_dim=0)
    batch = CenterNetOutputs(
        heatmap_logits=single.heatmap_logits.detach().repeat(2, 1, 1, 1),
        box=torch.full((2, 4, 8, 8), 1.5),  # every cell predicts a 3x3-cell box around itself
        offset=single.offset.detach().repeat(2, 1, 1, 1),
        embeddings=None,
        features=single.features.repeat(2, 1, 1, 1),
        stride=STRIDE,
        image_size=single.image_size,
    )
    with torch.no_grad():
        batch.heatmap_logits[0, 0, 2, 2], batch.heatmap_logits[0, 0, 2, 4] = 2.0, 1.0  # two cells apart
        batch.heatmap_logits[0, 0, 6, 6] = 1.5
        batch.heatmap_logits[1, 0, 3, 3], batch.heatmap_logits[1, 0, 3, 4] = 0.6, 0.8  # one cell apart
        batch.box[0, :, 2, 4] = torch.tensor([3.0, 1.5, 0.0, 1.5])  # IoU 0.71 with the (2, 2) box
    plain = decode_center_outputs(batch, small_centernet(embedding_dim=0, score_thresh=0.5))
    assert [found.anchor_indices.tolist() for found in plain] == [[18, 54, 20], [28]]
    merged = decode_center_outputs(
        batch, small_centernet(embedding_dim=0, score_thresh=0.5, peak_nms_thresh=0.5)
    )
    assert [found.anchor_indices.tolist() for found in merged] == [[18, 54], [28]]
    torch.testing.assert_close(merged[0].boxes, plain[0].boxes[:2])
    with pytest.raises(ConfigError, match="peak_nms_thresh"):
        small_centernet(peak_nms_thresh=0.0)


# ---- losses ----------------------------------------------------------------------------------
def test_penalty_reduced_focal_loss_matches_a_hand_computed_value():
    logits = torch.tensor([0.0, math.log(3.0), -math.log(3.0)])  # p = 0.5, 0.75, 0.25
    heatmap = torch.tensor([1.0, 0.5, 0.0])
    counted = torch.tensor([True, True, True])
    # peak: -(1 - .5)^2 log .5; others: -(1 - t)^4 p^2 log(1 - p); one peak
    peak = -(0.5**2) * math.log(0.5)
    near = -(0.5**4) * 0.75**2 * math.log(0.25)
    far = -(1.0**4) * 0.25**2 * math.log(0.75)
    assert penalty_reduced_focal_loss(logits, heatmap, counted).item() == pytest.approx(
        peak + near + far, rel=1e-6
    )
    not_far = torch.tensor([True, True, False])
    assert penalty_reduced_focal_loss(logits, heatmap, not_far).item() == pytest.approx(peak + near, rel=1e-6)
    # no peak at all: the sum itself (normaliser 1)
    assert penalty_reduced_focal_loss(logits[1:], heatmap[1:], counted[1:]).item() == pytest.approx(
        near + far, rel=1e-6
    )


def test_box_offset_and_l2_terms_match_hand_computed_values_and_objects_without_embedding_add_nothing():
    # box (10, 10, 26, 42) px -> cells (2.5, 2.5, 6.5, 10.5): centre (4.5, 6.5), offset (.5, .5),
    # l, t, r, b = 2, 4, 2, 4. Zero predictions: box L1 = mean(2, 4, 2, 4) = 3, offset L1 = .5.
    # Teacher (.6, .8, 0...) against a zero prediction: L2 = .36 + .64 = 1.
    teacher = [[0.6, 0.8] + [0.0] * 6]
    with_embedding = target([[10.0, 10.0, 26.0, 42.0]], embeddings=teacher)
    no_embedding = [float("nan")] * 8
    plus_one_without = target(
        [[10.0, 10.0, 26.0, 42.0], [50.0, 10.0, 70.0, 50.0]], embeddings=teacher + [no_embedding]
    )
    config = small_centernet()
    loss_config = LossConfig(box_weight=0.1, offset_weight=1.0, embedding_weight=10.0)
    criterion = CenterNetCriterion(loss_config, config)
    one = criterion(hand_outputs(), [with_embedding])
    assert one.box_regression.item() == pytest.approx(3.0)
    assert one.offset_regression.item() == pytest.approx(0.5)
    assert one.embedding_l2.item() == pytest.approx(1.0)
    assert one.total.item() == pytest.approx(
        one.classification.item() + 0.1 * 3.0 + 0.5 + 10.0 * 1.0, rel=1e-6
    )
    two = criterion(hand_outputs(), [plus_one_without])
    assert (two.num_positive_anchors, two.num_embedding_anchors) == (2, 1)
    assert two.embedding_l2.item() == pytest.approx(1.0)  # the second object adds no L2 term
    outputs = hand_outputs()
    criterion(outputs, [plus_one_without]).embedding_l2.backward()
    gradient = outputs.embeddings.grad.flatten(2)[0]
    second_centre = (30 // STRIDE) * 24 + (60 // STRIDE)  # centre (60, 30) px
    assert gradient[:, second_centre].abs().sum() == 0 and gradient.abs().sum() > 0


def test_identity_ce_hand_value_finite_without_identities_and_uncertainty_weighting():
    config = small_centernet()
    criterion = CenterNetCriterion(LossConfig(embedding_loss="ce"), config, num_identities=5)
    with torch.no_grad():
        criterion.identity_classifier.weight.zero_()
        criterion.identity_classifier.bias.zero_()
    known = criterion(hand_outputs(), [target([[10.0, 10.0, 26.0, 42.0]], identities=[3])])
    assert known.identity_ce.item() == pytest.approx(math.log(5))  # all logits equal
    outputs = hand_outputs()
    unknown = criterion(outputs, [target([[10.0, 10.0, 26.0, 42.0]], identities=[-1])])
    assert unknown.identity_ce.item() == 0.0 and torch.isfinite(unknown.total)
    unknown.total.backward()
    assert torch.isfinite(outputs.heatmap_logits.grad).all()
    empty = criterion(hand_outputs(), [target(np.zeros((0, 4)))])
    assert torch.isfinite(empty.total) and empty.box_regression.item() == 0.0
    weighted_config = LossConfig(embedding_loss="ce", uncertainty_weighting=True, box_weight=0.1)
    weighted = CenterNetCriterion(weighted_config, config, 5)
    with torch.no_grad():
        weighted.identity_classifier.weight.zero_()
        weighted.identity_classifier.bias.zero_()
    terms = weighted(hand_outputs(), [target([[10.0, 10.0, 26.0, 42.0]], identities=[3])])
    detection = terms.classification + 0.1 * terms.box_regression + terms.offset_regression
    s_det, s_id = -1.85, -1.05
    expected = 0.5 * (math.exp(-s_det) * detection.item() + math.exp(-s_id) * math.log(5) + s_det + s_id)
    assert terms.total.item() == pytest.approx(expected, rel=1e-5)


# ---- model -----------------------------------------------------------------------------------
def test_sparse_embeddings_equal_the_dense_head_at_border_and_interior_cells():
    torch.manual_seed(0)
    head = CenterHead(6, 5, 3)
    for parameter in head.parameters():
        torch.nn.init.normal_(parameter)
    features = torch.randn(2, 6, 7, 9)
    dense = head(features).flatten(2)
    image_index = torch.tensor([0, 0, 1, 1, 1])
    cell_index = torch.tensor([0, 8, 62, 31, 54])  # corners, an edge, the interior
    torch.testing.assert_close(
        head.at_cells(features, image_index, cell_index), dense[image_index, :, cell_index]
    )


def test_model_outputs_at_stride_four_and_the_family_configs_are_validated():
    config = small_centernet()
    model = build_student(config, warn_if_random_backbone=False).eval()
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, 64, 96))
    assert outputs.heatmap_logits.shape == (2, 1, 16, 24) and outputs.box.shape == (2, 4, 16, 24)
    assert outputs.embeddings is None and outputs.has_embeddings  # evaluated only where read
    assert torch.sigmoid(outputs.heatmap_logits).mean().item() == pytest.approx(0.1, abs=0.02)  # focal prior
    with pytest.raises(ConfigError, match="box_encoding"):
        ModelConfig(family="centernet", box_encoding="xywh")
    with pytest.raises(ConfigError, match="neck_channels"):
        ModelConfig(family="centernet", neck_channels=(64, 32))


def test_a_checkpoint_of_one_family_loaded_as_the_other_is_a_clear_error(tmp_path: Path):
    centernet = small_centernet()
    retinanet = ModelConfig(backbone="mobilenet_v2_fpn", fpn_channels=32, head_width=32, head_depth=1,
                            embedding_dim=8, embedding_head="per_location", embedding_head_width=32,
                            input_height=64, input_width=96)  # fmt: skip
    paths = {}
    for config in (centernet, retinanet):
        model = build_student(config, warn_if_random_backbone=False)
        paths[config.family] = save_checkpoint(
            tmp_path / f"{config.family}.pt",
            TrainingCheckpoint(step=1, model_state=model.state_dict(), model_config=config.to_dict()),
        )
    with pytest.raises(CheckpointError, match="family: checkpoint 'retinanet', expected 'centernet'"):
        load_student(paths["retinanet"], expected_config=centernet)
    with pytest.raises(CheckpointError, match="family: checkpoint 'centernet', expected 'retinanet'"):
        load_student(paths["centernet"], expected_config=retinanet)
    # RetinaNet weights under a CenterNet model config: the weights do not fit
    retinanet_weights = torch.load(paths["retinanet"], weights_only=True)["model_state"]
    mislabelled = save_checkpoint(
        tmp_path / "mislabelled.pt",
        TrainingCheckpoint(step=1, model_state=retinanet_weights, model_config=centernet.to_dict()),
    )
    with pytest.raises(CheckpointError, match="weights do not fit"):
        student.load(mislabelled)


def test_the_centernet_recipes_load_and_differ_from_each_other_only_in_the_embedding_loss():
    l2 = load_train_config(CONFIGS_DIR / "pets09-centernet.yaml")
    ce = load_train_config(CONFIGS_DIR / "pets09-centernet-ce.yaml")
    fairmot = load_train_config(CONFIGS_DIR / "fairmot.yaml")
    assert l2.model.family == ce.model.family == fairmot.model.family == "centernet"
    assert (l2.loss.embedding_loss, ce.loss.embedding_loss) == ("l2", "ce")
    assert [s.frames for s in l2.data.train] == [(1, 300)] and [s.frames for s in l2.data.validation] == [
        (301, 397)
    ]
    assert l2.model == ce.model and l2.optim == ce.optim and l2.augment == ce.augment
    assert (fairmot.model.backbone, fairmot.model.input_size, fairmot.model.embedding_dim) == (
        "resnet34_fpn", (608, 1088), 128)  # fmt: skip


# ---- training on real frames -----------------------------------------------------------------
@pytest.fixture(scope="module")
def pets_teacher_shards(pets_dir, osnet_x0_25_msmt17, tmp_path_factory) -> Path:
    """PETS frames 131-134 (7-8 people each) distilled by the real OSNet x0.25 teacher."""
    return distill_real_pets_frames(tmp_path_factory.mktemp("centernet_shards"), pets_dir, osnet_x0_25_msmt17)


@pytest.mark.filterwarnings("ignore:.*validation images are also training images:UserWarning")
def test_overfitting_real_frames_raises_ap_and_fidelity(
    pets_teacher_shards, mobilenet_v2_features, tmp_path, pets_dir
):
    import cv2

    source = ShardSource(directory=str(pets_teacher_shards))
    model = small_centernet(neck_channels=(64, 64, 64), head_width=64, embedding_dim=64, embedding_head_width=64,
                            input_height=192, input_width=256, trainable_backbone_stages=2)  # fmt: skip
    config = TrainConfig(
        model=model,
        data=DataConfig(train=(source,), validation=(source,)),
        loss=LossConfig(box_weight=0.1),
        augment=AugmentConfig(min_scale=1.0, max_scale=1.0, photometric=False),
        optim=OptimConfig(optimizer="adamw", learning_rate=1e-3, warmup_steps=5, batch_size=2, max_steps=60),
        run=RunConfig(out_dir=str(tmp_path / "run"), backbone_weights=str(mobilenet_v2_features),
                      checkpoint_every=60, log_every=10, tensorboard=False, threads=1),
    )  # fmt: skip
    torch.manual_seed(0)
    untrained = build_student(model, mobilenet_v2_features)
    initial_path = save_checkpoint(
        tmp_path / "untrained.pt",
        TrainingCheckpoint(step=0, model_state=untrained.state_dict(), model_config=model.to_dict(),
                           config=config.to_dict(), teacher_id=_teacher_id(pets_teacher_shards)),
    )  # fmt: skip
    initial = evaluate_checkpoint(initial_path)
    outcome = train(config, progress=False)
    final = outcome.evaluation
    assert final is not None
    losses = np.array(outcome.step_losses)
    assert losses[-10:].mean() < 0.3 * losses[:10].mean()
    assert initial.ap50 < 0.05 and final.ap50 > 0.7  # measured: 0.0 -> 0.88
    assert initial.fidelity is None or initial.fidelity.nearest_rate < 0.4
    assert final.fidelity is not None and final.fidelity.matched_detections >= 20
    assert final.fidelity.centred_cosine is not None and final.fidelity.centred_cosine > 0.6  # 0.85
    assert final.fidelity.nearest_rate is not None and final.fidelity.nearest_rate > 0.75  # 0.96
    # student.load gives the same Detector interface as for RetinaNet
    detector = student.load(outcome.out_dir / "last.pt")
    found = detector.detect(cv2.imread(str(pets_dir / "img1" / "000133.jpg")))
    assert found.embedding is not None and found.embedding.shape == (len(found.tlbr), 64)
    np.testing.assert_allclose(np.linalg.norm(found.embedding, axis=1), 1.0, atol=1e-5)
    assert found.tlbr[:, 2].max() > 256  # original 768 x 576 pixels


def _teacher_id(shards: Path) -> str:
    from student.data import DatasetOptions, StudentDataset

    return StudentDataset([shards], DatasetOptions(input_size=(64, 96), mode="validation")).teacher_id


@pytest.mark.filterwarnings("ignore:.*validation images are also training images:UserWarning")
def test_resume_with_ce_and_uncertainty_weighting_repeats_the_uninterrupted_losses(
    pets_dir, mobilenet_v2_features, tmp_path
):
    import dataclasses

    from student_fixtures import write_pets_shard_dir

    shards = write_pets_shard_dir(tmp_path / "shards", pets_dir)
    source = ShardSource(directory=str(shards))
    config = TrainConfig(
        model=small_centernet(embedding_dim=16),
        data=DataConfig(train=(source,), validation=(source,)),
        loss=LossConfig(embedding_loss="l2+ce", uncertainty_weighting=True, box_weight=0.1),
        optim=OptimConfig(optimizer="adamw", learning_rate=1e-3, warmup_steps=1, batch_size=2, max_steps=4),
        run=RunConfig(out_dir=str(tmp_path / "a"), backbone_weights=str(mobilenet_v2_features),
                      checkpoint_every=2, log_every=1, tensorboard=False, threads=1, evaluate_at_end=False),
    )  # fmt: skip
    uninterrupted = train(config, progress=False)
    resumed_config = dataclasses.replace(
        config, run=dataclasses.replace(config.run, out_dir=str(tmp_path / "b"))
    )
    resumed = train(resumed_config, resume=uninterrupted.out_dir / "step_000002.pt", progress=False)
    assert resumed.step_losses == uninterrupted.step_losses[2:]
    retinanet = dataclasses.replace(config, model=ModelConfig(**{**small_centernet(embedding_dim=16).to_dict(),
                                                                 "family": "retinanet"}))  # fmt: skip
    with pytest.raises(CheckpointError, match="family: checkpoint 'centernet', expected 'retinanet'"):
        train(retinanet, resume=uninterrupted.out_dir / "step_000002.pt", progress=False)


# ---- GIoU box term and TTFNet regression samples ---------------------------------------------
def _write_box(outputs: CenterNetOutputs, cell: int, ltrb, offset) -> None:
    with torch.no_grad():
        outputs.box.flatten(2)[0, :, cell] = torch.tensor(ltrb, dtype=torch.float32)
        outputs.offset.flatten(2)[0, :, cell] = torch.tensor(offset, dtype=torch.float32)


def test_giou_term_is_zero_for_the_true_box_and_one_minus_iou_for_a_nested_one():
    # box (10, 10, 26, 42) px -> cells (2.5, 2.5, 6.5, 10.5), centre cell (4, 6), offset (.5, .5),
    # l, t, r, b = 2, 4, 2, 4. Half as tall and wide about the same centre: IoU 1/4, and the
    # enclosing box is the true box, so GIoU = IoU and the loss is 3/4.
    one_box = [target([[10.0, 10.0, 26.0, 42.0]])]
    centre_cell = 6 * 24 + 4
    criterion = CenterNetCriterion(LossConfig(box_weight=0.1, box_giou_weight=2.0), small_centernet())
    exact = hand_outputs()
    _write_box(exact, centre_cell, [2.0, 4.0, 2.0, 4.0], [0.5, 0.5])
    terms = criterion(exact, one_box)
    assert terms.box_giou.item() == pytest.approx(0.0, abs=1e-6)
    assert terms.as_floats()["box_giou"] == pytest.approx(0.0, abs=1e-6)
    nested = hand_outputs()
    _write_box(nested, centre_cell, [1.0, 2.0, 1.0, 2.0], [0.5, 0.5])
    terms = criterion(nested, one_box)
    assert terms.box_giou.item() == pytest.approx(0.75)
    assert terms.total.item() == pytest.approx(
        terms.classification.item() + 0.1 * terms.box_regression.item() + terms.offset_regression.item()
        + 2.0 * 0.75, rel=1e-6)  # fmt: skip
    without = CenterNetCriterion(LossConfig(box_weight=0.1), small_centernet())(nested, one_box)
    assert without.box_giou is None and "box_giou" not in without.as_floats()


def test_box_samples_cover_the_middle_of_each_box_weighted_to_one_and_shared_cells_go_to_the_smaller():
    # a tall person (cells 2..14 x 4..28 at stride 4) and a small one inside its middle
    boxes = torch.tensor([[8.0, 16.0, 56.0, 112.0], [28.0, 56.0, 36.0, 72.0]])
    targets = build_center_targets(boxes, torch.tensor([False, False]), (32, 24), STRIDE)
    centres = torch.tensor([[8.0, 16.0], [8.0, 16.0]])  # both centred at cell (8, 16) -> small one is
    assert (cell_positions(targets.cell_index, 24) == centres.long()).all()  # the tall one's centre too
    only_centres = box_samples(targets, (32, 24), 0.0)
    assert only_centres.cell_index.tolist() == targets.cell_index.tolist()
    assert only_centres.weight.tolist() == [1.0, 1.0]
    samples = box_samples(targets, (32, 24), 0.5)
    totals = torch.zeros(2).index_add_(0, samples.object_index, samples.weight)
    torch.testing.assert_close(totals, torch.ones(2))
    assert len(set(samples.cell_index.tolist())) == len(samples.cell_index)  # each cell regresses one box
    tall_cells = samples.cell_index[samples.object_index == 0]
    small_cells = samples.cell_index[samples.object_index == 1]
    # the tall box's middle half: columns 5..10 and rows 10..21 whose centres lie within 6..10 x 10..22
    columns, rows = tall_cells % 24, tall_cells // 24
    assert columns.min() >= 5 and columns.max() <= 10 and rows.min() >= 10 and rows.max() <= 21
    assert len(tall_cells) > 20
    assert targets.cell_index[1].item() in small_cells.tolist()  # the shared centre goes to the small one
    assert targets.cell_index[0].item() not in tall_cells.tolist()
    weights = samples.weight[samples.object_index == 0]
    nearest = ((columns.float() + 0.5 - 8.0) ** 2 + (rows.float() + 0.5 - 16.0) ** 2).argmin()
    assert weights[nearest] == weights.max()  # the Gaussian peaks at the centre


def test_an_object_whose_area_smaller_ones_take_keeps_its_centre_cell():
    # two boxes of one size at one centre: the first in area order claims every cell, the other
    # would have no sample at all
    boxes = torch.tensor([[16.0, 16.0, 48.0, 80.0], [16.0, 16.0, 48.0, 80.0]])
    targets = build_center_targets(boxes, torch.tensor([False, False]), (32, 24), STRIDE)
    samples = box_samples(targets, (32, 24), 0.5)
    assert sorted(set(samples.object_index.tolist())) == [0, 1]
    assert samples.cell_index[samples.object_index == 1].tolist() == [targets.cell_index[1].item()]


def test_sampled_giou_is_zero_where_every_sampled_cell_decodes_the_true_box_and_counts_only_sampled_cells():
    box = [10.0, 10.0, 58.0, 90.0]  # cells (2.5, 2.5, 14.5, 22.5), centre (8.5, 12.5)
    one_box = [target([box])]
    targets = build_center_targets(one_box[0]["boxes"], one_box[0]["ignore"], (16, 24), STRIDE)
    samples = box_samples(targets, (16, 24), 0.54)
    assert len(samples.cell_index) > 1
    criterion = CenterNetCriterion(
        LossConfig(box_giou_weight=1.0, box_sample_fraction=0.54), small_centernet()
    )
    outputs = hand_outputs()
    for cell in samples.cell_index.tolist():  # every sample cell decodes the true box from its own place
        column, row = cell % 24, cell // 24
        offset = [8.5 - column, 12.5 - row]
        _write_box(outputs, cell, [6.0, 10.0, 6.0, 10.0], offset)
    assert criterion(outputs, one_box).box_giou.item() == pytest.approx(0.0, abs=1e-6)
    outside = 0 * 24 + 0  # a cell outside the box's middle: what it predicts does not count
    _write_box(outputs, outside, [1.0, 1.0, 1.0, 1.0], [0.0, 0.0])
    assert criterion(outputs, one_box).box_giou.item() == pytest.approx(0.0, abs=1e-6)
    off_centre = samples.cell_index[samples.weight.argmin()].item()
    _write_box(outputs, off_centre, [1.0, 1.0, 1.0, 1.0], [0.0, 0.0])
    assert criterion(outputs, one_box).box_giou.item() > 0.0


def test_giou_options_are_refused_where_they_cannot_apply():
    with pytest.raises(ConfigError, match="box_sample_fraction.*needs box_giou_weight"):
        LossConfig(box_sample_fraction=0.5)
    with pytest.raises(ConfigError, match="box_sample_fraction must be within"):
        LossConfig(box_giou_weight=1.0, box_sample_fraction=1.5)
    with pytest.raises(ConfigError, match="needs assignment 'centre'"):
        LossConfig(box_giou_weight=1.0, box_sample_fraction=0.5, assignment="adamot")
    with pytest.raises(ConfigError, match="box_giou_weight needs box_weight > 0"):
        LossConfig(box_giou_weight=1.0, box_weight=0.0)
    with pytest.raises(ConfigError, match="box_giou_weight must be >= 0"):
        LossConfig(box_giou_weight=-1.0)
    with pytest.raises(ConfigError, match="box_giou_weight is implemented for model.family 'centernet'"):
        check_loss_fits_model(LossConfig(box_giou_weight=1.0), ModelConfig(family="retinanet"))


def test_giou_at_adamots_positives_reads_each_positives_box_from_its_own_cell():
    # with several positives per object, each decodes from its own cell + offset. Every cell
    # pointing at the true centre with the true size gives 0; with half the width and height
    # (IoU 1/4, enclosed) 3/4, whichever cells the one-to-k matching picks
    teacher = [[0.6, 0.8] + [0.0] * 6]
    one_box = [target([[10.0, 10.0, 58.0, 90.0]], embeddings=teacher)]  # centre (8.5, 12.5) cells
    criterion = CenterNetCriterion(
        LossConfig(assignment="adamot", positives_per_object=3, box_giou_weight=1.0), small_centernet()
    )
    for half, expected in ((1.0, 0.0), (0.5, 0.75)):
        outputs = hand_outputs()
        for cell in range(16 * 24):
            column, row = cell % 24, cell // 24
            _write_box(outputs, cell, [6.0 * half, 10.0 * half, 6.0 * half, 10.0 * half],
                       [8.5 - column, 12.5 - row])  # fmt: skip
        terms = criterion(outputs, one_box)
        assert terms.num_positive_anchors == 3
        assert terms.box_giou.item() == pytest.approx(expected, abs=1e-6)
