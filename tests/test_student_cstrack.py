"""CSTrack's options of the student: the reciprocal network (REN) and the scale-aware attention
network (SAAN) -- shapes, identity at initialisation, attention ranges, sparse against dense
reads, gradients through the L2 loss, checkpoints and which family takes which option.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from student_fixtures import small_centernet

import student
from student import ModelConfig, StudentCriterion, build_student, postprocess
from student.anchors import feature_sizes_for_input
from student.api import load_student
from student.checkpoint import CheckpointError, TrainingCheckpoint, load_checkpoint, save_checkpoint
from student.config import FPN_STRIDES, ConfigError, LossConfig
from student.recipe import CONFIGS_DIR, load_train_config, recipe_differences
from student.reciprocal import RELATION_GRID, ReciprocalNetwork
from student.scale_aware import ChannelAttention, ScaleAwareEmbedding, ScaleAwareEmbeddings, SpatialAttention

INPUT = (64, 96)  # P3 8 x 12 ... P7 1 x 1


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_retinanet(**changes) -> ModelConfig:
    values = dict(
        backbone="mobilenet_v2_fpn",
        fpn_channels=32,
        head_width=32,
        head_depth=1,
        embedding_dim=8,
        embedding_head="per_location",
        embedding_head_width=16,
        input_height=INPUT[0],
        input_width=INPUT[1],
    )
    return ModelConfig(**{**values, **changes})


def built(config: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    return build_student(config, warn_if_random_backbone=False)


def perturbed_(module: torch.nn.Module, std: float = 0.1) -> None:
    """Every parameter (zero-initialised ones included) set to random values."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(std=std)


def person_targets(batch: int, dim: int = 16) -> list[dict[str, torch.Tensor]]:
    """Two people per image (one at the map border) with teacher embeddings; one ignore box."""
    boxes = torch.tensor([[4.0, 2.0, 24.0, 50.0], [50.0, 10.0, 72.0, 60.0], [70.0, 0.0, 96.0, 30.0]])
    embeddings = F.normalize(torch.randn(3, dim), dim=1)
    embeddings[2] = float("nan")
    return [
        {
            "boxes": boxes + image,
            "ignore": torch.tensor([False, False, True]),
            "identities": torch.tensor([-1, -1, -1]),
            "embeddings": embeddings,
        }
        for image in range(batch)
    ]


# ---- config ----------------------------------------------------------------------------------
def test_the_options_are_off_by_default_and_need_an_embedding_head():
    default = ModelConfig()
    assert not default.reciprocal_network and not default.scale_aware_embedding
    for key in ("reciprocal_network", "scale_aware_embedding"):
        with pytest.raises(ConfigError, match=f"{key} .* needs an embedding head"):
            ModelConfig(embedding_dim=0, **{key: True})
        assert ModelConfig.from_dict({key: True}).to_dict()[key] is True


def test_p3_is_the_stride_8_level_the_scale_aware_map_lives_on():
    model = built(small_retinanet(embedding_dim=0))
    with torch.no_grad():
        levels = model.pyramid(torch.rand(1, 3, 72, 100))
    assert FPN_STRIDES[0] == 8
    assert levels[0].shape[-2:] == (9, 13) == feature_sizes_for_input(72, 100)[0]  # ceil(72/8), ceil(100/8)


# ---- REN -------------------------------------------------------------------------------------
def test_ren_is_an_exact_identity_at_initialisation_and_mixes_channels_once_trained():
    torch.manual_seed(0)
    network = ReciprocalNetwork(16)
    x = torch.randn(2, 16, 5, 7)
    detection, reid = network(x)
    assert torch.equal(detection, x) and torch.equal(reid, x)
    perturbed_(network)
    detection, reid = network(x)
    assert detection.shape == reid.shape == x.shape
    assert not torch.allclose(detection, x) and not torch.allclose(detection, reid)
    # the map is x + W (P x + b): check one image against the matrices
    detection_relation, _ = network.relations(x)
    projection = network.detection_projection
    projected = (
        torch.einsum("jk,khw->jhw", projection.weight[:, :, 0, 0], x[1]) + projection.bias[:, None, None]
    )
    expected = x[1] + torch.einsum("ij,jhw->ihw", detection_relation[1], projected)
    torch.testing.assert_close(detection[1], expected)


def test_ren_relations_are_row_stochastic_and_its_gradients_reach_every_part():
    torch.manual_seed(1)
    network = ReciprocalNetwork(8)
    perturbed_(network, std=0.3)
    x = torch.randn(3, 8, 4, 3)  # smaller than the 6 x 10 relation grid: pooling repeats cells
    for relation in network.relations(x):
        assert relation.shape == (3, 8, 8)
        assert bool(((relation >= 0) & (relation <= 1)).all())
        torch.testing.assert_close(relation.sum(dim=-1), torch.ones(3, 8))
    weights = network.self_relation_weights
    assert bool(((weights > 0) & (weights < 1)).all())
    detection, reid = network(x)
    (detection.square().sum() + reid.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())
    assert RELATION_GRID == (6, 10)


def test_retinanet_with_ren_starts_as_the_model_without_it_on_every_level():
    plain = built(small_retinanet()).eval()
    with_ren = built(small_retinanet(reciprocal_network=True)).eval()
    missing, unexpected = with_ren.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(key.startswith("reciprocal_network.") for key in missing)
    images = torch.rand(2, 3, *INPUT)
    with torch.no_grad():
        expected, outputs = plain(images, dense_embeddings=True), with_ren(images, dense_embeddings=True)
        levels = with_ren.pyramid(images)
        detection, reid = with_ren.task_features(levels)
    assert [d.shape for d in detection] == [r.shape for r in reid] == [level.shape for level in levels]
    assert len(levels) == 5 and levels[0].shape[0] == 2
    for name in ("class_logits", "box_deltas", "embeddings"):
        torch.testing.assert_close(getattr(outputs, name), getattr(expected, name), rtol=0, atol=0)
    # one REN for all levels (the subnets after it are shared too)
    assert with_ren.reciprocal_network is not None
    assert sum(isinstance(m, ReciprocalNetwork) for m in with_ren.modules()) == 1


def test_ren_feeds_the_detection_map_to_the_subnets_and_the_reid_map_to_the_embedding_head():
    model = built(small_retinanet(reciprocal_network=True)).eval()
    assert model.reciprocal_network is not None
    perturbed_(model.reciprocal_network, std=0.05)
    images = torch.rand(2, 3, *INPUT)
    with torch.no_grad():
        detection, reid = model.task_features(model.pyramid(images))
        outputs = model(images, dense_embeddings=True)
        sparse = model(images)
        anchors = torch.tensor([0, 17, outputs.anchors.shape[0] - 1])
        sparse_read = sparse.anchor_embeddings(1, anchors)
    torch.testing.assert_close(outputs.class_logits, model.classification_head(detection))
    torch.testing.assert_close(outputs.embeddings, model.embedding_head(reid))
    torch.testing.assert_close(sparse_read, outputs.anchor_embeddings(1, anchors))
    assert not torch.allclose(outputs.embeddings, model.embedding_head(detection))


def test_centernet_takes_ren_between_its_neck_and_heads_starting_as_an_identity():
    plain = built(small_centernet()).eval()
    with_ren = built(small_centernet(reciprocal_network=True)).eval()
    with_ren.load_state_dict(plain.state_dict(), strict=False)
    images = torch.rand(2, 3, *INPUT)
    with torch.no_grad():
        expected, outputs = plain(images, dense_embeddings=True), with_ren(images, dense_embeddings=True)
    assert outputs.heatmap_logits.shape == (2, 1, 16, 24) and outputs.embeddings.shape == (2, 8, 16, 24)
    for name in ("heatmap_logits", "box", "offset", "embeddings"):
        torch.testing.assert_close(getattr(outputs, name), getattr(expected, name), rtol=0, atol=0)
    assert with_ren.reciprocal_network is not None
    perturbed_(with_ren.reciprocal_network, std=0.05)
    with torch.no_grad():
        outputs = with_ren(images, dense_embeddings=True)
        features = with_ren.backbone((images - with_ren.pixel_mean) / with_ren.pixel_std)
        detection, reid = with_ren.reciprocal_network(features)
    torch.testing.assert_close(outputs.heatmap_logits, with_ren.heatmap_head(detection))
    torch.testing.assert_close(outputs.embeddings, with_ren.embedding_head(reid))


def test_centernet_refuses_the_scale_aware_embedding_with_the_reason():
    with pytest.raises(ConfigError, match="retinanet family only: the centernet neck already fuses"):
        small_centernet(scale_aware_embedding=True)
    with pytest.raises(ConfigError, match="scale_aware_embedding"):
        ModelConfig.from_dict({"family": "centernet", "scale_aware_embedding": True})


# ---- SAAN ------------------------------------------------------------------------------------
def test_attention_maps_lie_in_zero_one_and_weight_residually():
    torch.manual_seed(2)
    spatial, channel = SpatialAttention(), ChannelAttention(32)
    perturbed_(spatial, std=3.0)
    perturbed_(channel, std=3.0)
    x = 50 * torch.randn(2, 32, 6, 9)
    spatial_map, channel_map = spatial.attention(x), channel.attention(x)
    assert spatial_map.shape == (2, 1, 6, 9) and channel_map.shape == (2, 32, 1, 1)
    for attention in (spatial_map, channel_map):
        assert bool(((attention >= 0) & (attention <= 1)).all())
        assert attention.min() < 0.5 < attention.max()  # not a constant
    torch.testing.assert_close(spatial(x), x * (1 + spatial_map))
    torch.testing.assert_close(channel(x), x * (1 + channel_map))


def test_saan_map_is_one_stride_8_map_from_p3_p4_p5_for_every_batch_image():
    model = built(small_retinanet(scale_aware_embedding=True)).eval()
    assert model.embedding_head is None and isinstance(model.scale_aware_embedding, ScaleAwareEmbedding)
    images = torch.rand(3, 3, 72, 100)
    with torch.no_grad():
        outputs = model(images, dense_embeddings=True)
        levels = model.pyramid(images)
        p6_changed = [level.clone() for level in levels]
        p6_changed[3] += 1.0
        p6_changed[4] -= 1.0
        p4_changed = [level.clone() for level in levels]
        p4_changed[1] += 1.0
        saan = model.scale_aware_embedding
        reference = saan(levels)
    maps = outputs.scale_aware_embeddings
    assert maps is not None and maps.dense is not None and maps.stride == 8
    assert maps.dense.shape == (3, 8, 9, 13) and maps.attended.shape == (3, 48, 9, 13)
    torch.testing.assert_close(maps.dense, reference)
    torch.testing.assert_close(saan(p6_changed), reference)  # P6, P7 are not read
    assert not torch.allclose(saan(p4_changed), reference)
    assert outputs.embeddings is None and outputs.sparse_embeddings is None and outputs.has_embeddings
    with pytest.raises(ValueError, match="read at box centres"):
        outputs.anchor_embeddings(0, torch.tensor([0]))


def test_points_read_the_nearest_stride_8_cell_clamped_to_the_map():
    maps = ScaleAwareEmbeddings(ScaleAwareEmbedding(4, 2, 3), torch.zeros(1, 6, 5, 7), stride=8)
    points = torch.tensor([[0.0, 0.0], [16.0, 8.0], [19.9, 11.9], [20.1, 12.1], [-30.0, 500.0], [55.0, 39.0]])
    rows, columns = maps.cells_at(points)
    assert rows.tolist() == [0, 1, 1, 2, 4, 4]
    assert columns.tolist() == [0, 2, 2, 3, 0, 6]


@pytest.mark.parametrize("training", [False, True])
def test_sparse_read_of_the_saan_map_equals_the_dense_map_at_border_and_interior_points(training: bool):
    model = built(small_retinanet(scale_aware_embedding=True, reciprocal_network=True))
    perturbed_(model.reciprocal_network, std=0.05)
    model.train(training)
    images = torch.rand(2, 3, *INPUT)
    image_index = torch.tensor([0, 0, 1, 1, 1, 0])
    points = torch.tensor([[0.0, 0.0], [95.0, 63.0], [40.0, 30.0], [0.0, 33.0], [88.0, 4.0], [57.0, 61.0]])
    with torch.no_grad():
        dense = model(images, dense_embeddings=True).scale_aware_embeddings
        sparse = model(images, dense_embeddings=False).scale_aware_embeddings
    assert dense is not None and sparse is not None and sparse.dense is None
    rows, columns = dense.cells_at(points)
    expected = dense.dense[image_index, :, rows, columns]
    torch.testing.assert_close(sparse.at_points(image_index, points), expected)
    torch.testing.assert_close(dense.at_points(image_index, points), expected)


def test_detections_read_the_saan_map_at_their_box_centres():
    config = small_retinanet(scale_aware_embedding=True, score_thresh=0.0, detections_per_image=7)
    model = built(config).eval()
    images = torch.rand(2, 3, *INPUT)
    with torch.no_grad():
        outputs = model(images)
        found = postprocess(outputs, config)
    assert [len(d.boxes) for d in found] == [7, 7]
    maps = outputs.scale_aware_embeddings
    for image, detections in enumerate(found):
        centres = (detections.boxes[:, :2] + detections.boxes[:, 2:]) / 2
        expected = maps.at_points(torch.full((7,), image), centres)
        torch.testing.assert_close(detections.embeddings, F.normalize(expected, dim=1))


def test_l2_loss_with_saan_reads_each_object_once_at_its_centre_and_trains_the_saan_weights():
    torch.manual_seed(3)
    config = small_retinanet(scale_aware_embedding=True, reciprocal_network=True)
    model = built(config).train()
    criterion = StudentCriterion(LossConfig(embedding_loss="l2"), config)
    targets = person_targets(batch=2)
    outputs = model(torch.rand(2, 3, *INPUT))
    terms = criterion(outputs, targets)
    assert terms.num_embedding_anchors == 4  # two people in each image; the ignore box has none
    assert terms.num_positive_anchors > 4  # the detector's positives are anchors, many per person
    image_index = torch.tensor([0, 0, 1, 1])
    boxes = torch.cat([target["boxes"][:2] for target in targets])
    teacher = torch.cat([target["embeddings"][:2, :8] for target in targets])
    read = outputs.scale_aware_embeddings.at_points(image_index, (boxes[:, :2] + boxes[:, 2:]) / 2)
    expected = (read - teacher).square().sum(dim=1).mean()
    torch.testing.assert_close(terms.embedding_l2, expected)
    terms.embedding_l2.backward()
    saan = model.scale_aware_embedding
    parts = {
        "encoders": saan.encoders,
        "spatial attention": saan.spatial_attention,
        "channel attention": saan.channel_attention,
        "output": saan.output,
    }
    for name, part in parts.items():
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    assert model.reciprocal_network.reid_projection.weight.grad.abs().sum() > 0
    # the embedding loss never reaches the class subnet
    assert model.classification_head.predictor.weight.grad is None


def test_a_batch_without_people_gives_a_zero_saan_loss_that_still_backpropagates():
    config = small_retinanet(scale_aware_embedding=True)
    model = built(config).train()
    empty = {
        "boxes": torch.zeros(0, 4),
        "ignore": torch.zeros(0, dtype=torch.bool),
        "identities": torch.zeros(0, dtype=torch.int64),
        "embeddings": torch.zeros(0, 16),
    }
    terms = StudentCriterion(LossConfig(), config)(model(torch.rand(1, 3, *INPUT)), [empty])
    assert terms.embedding_l2.item() == 0.0 and terms.num_embedding_anchors == 0
    terms.total.backward()
    assert model.scale_aware_embedding.output.weight.grad is not None


# ---- checkpoints and recipes -----------------------------------------------------------------
OPTIONS = {
    "ren": {"reciprocal_network": True},
    "saan": {"scale_aware_embedding": True},
    "cstrack": {"reciprocal_network": True, "scale_aware_embedding": True},
}


def _saved(tmp_path: Path, name: str, config: ModelConfig, model_config: dict | None = None) -> Path:
    model = built(config, seed=5)
    plain_config = config.to_dict() if model_config is None else model_config
    return save_checkpoint(
        tmp_path / f"{name}.pt",
        TrainingCheckpoint(step=1, model_state=model.state_dict(), model_config=plain_config),
    )


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_checkpoints_of_each_option_load_and_the_other_architectures_are_refused(tmp_path: Path, option: str):
    config = small_retinanet(**OPTIONS[option])
    path = _saved(tmp_path, option, config)
    model, _ = load_student(path, expected_config=config)
    reference = built(config, seed=5).eval()
    images = torch.rand(1, 3, *INPUT)
    with torch.no_grad():
        loaded, expected = model(images, dense_embeddings=True), reference(images, dense_embeddings=True)
    torch.testing.assert_close(loaded.class_logits, expected.class_logits)
    frame = torch.randint(0, 255, (60, 90, 3), dtype=torch.uint8).numpy()
    assert student.load(path).detect(frame).embedding.shape[1] == 8
    plain = small_retinanet()
    with pytest.raises(CheckpointError, match="another architecture") as refused:
        load_student(path, expected_config=plain)
    for key in OPTIONS[option]:
        assert f"{key}: checkpoint True, expected False" in str(refused.value)
    # the option's weights under a config without it do not fit
    mislabelled = _saved(tmp_path, f"{option}-as-plain", config, model_config=plain.to_dict())
    with pytest.raises(CheckpointError, match="weights do not fit"):
        student.load(mislabelled)


def test_checkpoints_written_before_the_options_existed_load_as_without_them(tmp_path: Path):
    config = small_retinanet()
    older = {key: value for key, value in config.to_dict().items() if key not in OPTIONS["cstrack"]}
    path = _saved(tmp_path, "older", config, model_config=older)
    loaded = load_checkpoint(path, expected_config=config)
    assert not loaded.model_config["reciprocal_network"] and not loaded.model_config["scale_aware_embedding"]
    with pytest.raises(CheckpointError, match="reciprocal_network: checkpoint False, expected True"):
        load_checkpoint(path, expected_config=dataclasses.replace(config, reciprocal_network=True))


def test_the_cstrack_recipes_are_pets09_plus_their_option():
    pets = load_train_config(CONFIGS_DIR / "pets09.yaml")
    for option, keys in OPTIONS.items():
        recipe = load_train_config(CONFIGS_DIR / f"pets09-{option}.yaml")
        differing = {line.split(":")[0] for line in recipe_differences(pets.to_dict(), recipe.to_dict())}
        assert differing == {f"model.{key}" for key in keys}, option
        assert dataclasses.replace(recipe.run, out_dir=pets.run.out_dir) == pets.run
        assert recipe.run.out_dir.endswith(f"train-pets09-{option}")
        assert recipe.loss.embedding_loss == "l2"
