"""Student model: config, anchors, heads, backbones and weights, post-processing, Detector."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import student
from student import Detector, LossConfig, ModelConfig, StudentOutputs, build_student, families, postprocess
from student.anchors import (
    AnchorGrid,
    cell_anchor_shapes,
    feature_sizes_for_input,
    torchvision_aspect_ratios,
)
from student.api import load_student
from student.backbones import BackboneWeightsError, load_backbone_weights, read_state_dict
from student.checkpoint import CheckpointError, TrainingCheckpoint, save_checkpoint
from student.config import FPN_STRIDES, MODEL_FAMILY_NAMES, ConfigError
from student.transforms import bgr_to_input_tensor, boxes_to_original

SMALL_INPUT = (128, 160)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_config(**overrides) -> ModelConfig:
    values = dict(input_height=SMALL_INPUT[0], input_width=SMALL_INPUT[1], embedding_dim=16)
    values.update(overrides)
    return ModelConfig(**values)


def random_student(**overrides):
    torch.manual_seed(0)
    return build_student(small_config(**overrides), warn_if_random_backbone=False)


# --- config ---------------------------------------------------------------------------


def test_model_config_yaml_round_trip(tmp_path: Path):
    config = ModelConfig(backbone="mobilenet_v2_fpn", embedding_dim=64, embedding_head="per_location")
    path = tmp_path / "model.yaml"
    config.to_yaml(path)
    assert ModelConfig.from_yaml(path) == config
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.anchors_per_location == 9


def test_model_config_is_strict():
    with pytest.raises(ConfigError, match="ModelConfig: unknown key"):
        ModelConfig.from_dict({"backbone": "resnet34_fpn", "head_widht": 128})
    with pytest.raises(ConfigError, match="backbone"):
        ModelConfig.from_dict({"backbone": "vgg16"})
    with pytest.raises(ConfigError, match="anchor_scales"):
        ModelConfig.from_dict({"anchor_scales": "1.0"})
    with pytest.raises(ConfigError):
        ModelConfig(embedding_head="per_pixel")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="embedding_norm_statistics: 'positives' is not one of"):
        ModelConfig.from_dict({"embedding_norm_statistics": "positives"})
    with pytest.raises(ConfigError, match="embedding_norm_statistics must be one of"):
        ModelConfig(embedding_norm_statistics="positives")  # type: ignore[arg-type]


def test_null_embedding_dim_means_detection_only():
    config = ModelConfig.from_dict({"embedding_dim": None})
    assert config.embedding_dim == 0 and not config.has_embedding_head


# --- model families -------------------------------------------------------------------


def test_every_configurable_family_has_a_registry_entry_and_the_registry_builds_it(monkeypatch):
    assert set(MODEL_FAMILY_NAMES) == set(families.FAMILIES)
    assert ModelConfig().family == "retinanet"
    with pytest.raises(ConfigError, match="family"):
        ModelConfig.from_dict({"family": "anchor_free"})
    # build_student / build_criterion go through the entry of the config's family
    built = []

    def detector(config):
        built.append(("detector", config.family))
        return torch.nn.Module()

    def criterion(loss_config, model_config, num_identities):
        built.append(("criterion", num_identities))
        return torch.nn.Module()

    monkeypatch.setitem(
        families.FAMILIES,
        "retinanet",
        families.ModelFamily("retinanet", detector, criterion, families.FAMILIES["retinanet"].postprocess),
    )
    families.build_criterion(LossConfig(), small_config(), num_identities=7)
    with pytest.warns(UserWarning, match="randomly initialised"):
        build_student(small_config())
    assert built == [("criterion", 7), ("detector", "retinanet")]


def test_a_checkpoint_of_another_family_is_refused_naming_the_family(tmp_path: Path):
    config = small_config(backbone="mobilenet_v2_fpn")
    model = build_student(config, warn_if_random_backbone=False)
    path = save_checkpoint(
        tmp_path / "other.pt",
        TrainingCheckpoint(
            step=1, model_state=model.state_dict(), model_config={**config.to_dict(), "family": "anchor_free"}
        ),
    )
    with pytest.raises(CheckpointError, match="family: checkpoint 'anchor_free', expected 'retinanet'"):
        load_student(path, expected_config=config)
    with pytest.raises(CheckpointError, match="family"):
        student.load(path)


def test_loading_a_student_leaves_the_process_settings_alone(tmp_path: Path):
    """A library call must not retune the allocator or torch's threads (only CLIs opt in)."""
    config = small_config(backbone="mobilenet_v2_fpn")
    model = build_student(config, warn_if_random_backbone=False)
    path = save_checkpoint(
        tmp_path / "s.pt",
        TrainingCheckpoint(step=1, model_state=model.state_dict(), model_config=config.to_dict()),
    )
    script = (
        "import torch, student, tdt.malloc\n"
        "before = torch.get_num_threads()\n"
        f"student.load({str(path)!r})\n"
        "print(tdt.malloc.applied_in_this_process(), torch.get_num_threads() == before)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


# --- anchors --------------------------------------------------------------------------


def test_aspect_ratio_is_width_over_height():
    shapes = cell_anchor_shapes(32.0, scales=(1.0, 2.0), aspect_ratios=(0.25, 1.0))
    widths, heights = shapes[:, 0], shapes[:, 1]
    # aspect ratio major, scale minor
    torch.testing.assert_close(widths, torch.tensor([16.0, 32.0, 32.0, 64.0], dtype=torch.float64))
    torch.testing.assert_close(heights, torch.tensor([64.0, 128.0, 32.0, 64.0], dtype=torch.float64))
    torch.testing.assert_close(widths[:2], heights[:2] / 4)
    torch.testing.assert_close((widths * heights).sqrt(), torch.tensor([32.0, 64.0, 32.0, 64.0]).double())


def test_anchor_counts_and_strides():
    config = small_config()
    grid = AnchorGrid.from_config(config)
    sizes = feature_sizes_for_input(*SMALL_INPUT)
    assert sizes == [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    levels = grid.per_level(sizes)
    assert [len(level) for level in levels] == [h * w * 9 for h, w in sizes]
    for level, stride, (height, width), base in zip(
        levels, FPN_STRIDES, sizes, config.anchor_base_sizes, strict=True
    ):
        centres = (level[:, :2] + level[:, 2:]) / 2
        grid_centres = centres.view(height, width, 9, 2)
        if width > 1:
            torch.testing.assert_close(
                grid_centres[:, 1:, :, 0] - grid_centres[:, :-1, :, 0],
                torch.full_like(grid_centres[:, 1:, :, 0], stride),
            )
        assert grid_centres[-1, -1, 0].tolist() == [(width - 1) * stride, (height - 1) * stride]
        first_cell = level[:9]
        cell_widths = first_cell[:, 2] - first_cell[:, 0]
        cell_heights = first_cell[:, 3] - first_cell[:, 1]
        # ratio 0.25 comes first: the three scales of w = h / 4
        torch.testing.assert_close(cell_widths[:3], cell_heights[:3] / 4)
        expected_sizes = torch.tensor([base * s for s in config.anchor_scales])
        torch.testing.assert_close((cell_widths[:3] * cell_heights[:3]).sqrt(), expected_sizes)
        torch.testing.assert_close(cell_widths[6:], cell_heights[6:])


def test_anchors_match_torchvision_generator_with_converted_ratios():
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    config = small_config()
    sizes = tuple(tuple(base * s for s in config.anchor_scales) for base in config.anchor_base_sizes)
    ratios = (torchvision_aspect_ratios(config.anchor_aspect_ratios),) * len(sizes)
    assert ratios[0] == (4.0, 2.0, 1.0)
    generator = AnchorGenerator(sizes, ratios)
    image_size = (256, 256)  # a multiple of 128, where torchvision's strides are the nominal ones
    feature_sizes = feature_sizes_for_input(*image_size)
    feature_maps = [torch.zeros(1, 1, h, w) for h, w in feature_sizes]
    images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
    theirs = generator(images, feature_maps)[0]
    ours = AnchorGrid.from_config(config)(feature_sizes)
    # torchvision rounds half-extents to whole pixels
    torch.testing.assert_close(ours, theirs, atol=0.5, rtol=0)


# --- model, heads ---------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["resnet18_fpn", "resnet34_fpn", "mobilenet_v2_fpn"])
def test_forward_backward_per_backbone(backbone: str):
    model = random_student(backbone=backbone, embedding_dim=8)
    images = torch.rand(1, 3, *SMALL_INPUT)
    outputs = model(images, dense_embeddings=True)
    num_anchors = sum(h * w * 9 for h, w in feature_sizes_for_input(*SMALL_INPUT))
    assert outputs.anchors.shape == (num_anchors, 4)
    assert outputs.class_logits.shape == (1, num_anchors, 1)
    assert outputs.box_deltas.shape == (1, num_anchors, 4)
    assert outputs.embeddings is not None and outputs.embeddings.shape == (1, num_anchors, 8)
    loss = outputs.class_logits.sigmoid().sum() + outputs.box_deltas.sum() + outputs.embeddings.sum()
    loss.backward()
    assert model.classification_head.predictor.weight.grad is not None
    assert model.embedding_head is not None
    assert model.embedding_head.branches[0].output.weight.grad is not None
    trainable = [name for name, p in model.backbone.body.named_parameters() if p.requires_grad]
    frozen = [name for name, p in model.backbone.body.named_parameters() if not p.requires_grad]
    assert trainable and frozen  # 3 of 5 stages train by default
    grads = [p.grad for p in model.backbone.body.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_resnet50_forward():
    model = random_student(backbone="resnet50_fpn", embedding_dim=0).eval()
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, *SMALL_INPUT))
    assert outputs.embeddings is None
    assert outputs.class_logits.shape[1] == outputs.anchors.shape[0]


def test_per_location_head_shapes_and_anchor_lookup():
    model = random_student(backbone="mobilenet_v2_fpn", embedding_head="per_location").eval()
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, *SMALL_INPUT), dense_embeddings=True)
    num_locations = sum(h * w for h, w in feature_sizes_for_input(*SMALL_INPUT))
    assert outputs.embeddings is not None
    assert outputs.embeddings.shape == (2, num_locations, 16)
    assert not outputs.embeddings_per_anchor
    anchors = torch.tensor([0, 8, 9, outputs.anchors.shape[0] - 1])
    expected = outputs.embeddings[1, torch.tensor([0, 0, 1, num_locations - 1])]
    torch.testing.assert_close(outputs.anchor_embeddings(1, anchors), expected)


def test_per_anchor_head_unshared_convs():
    model = random_student(
        backbone="mobilenet_v2_fpn", embedding_dim=4, share_embedding_convs_across_levels=False
    ).eval()
    assert model.embedding_head is not None
    assert len(model.embedding_head.branches) == 5
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, *SMALL_INPUT), dense_embeddings=True)
    assert outputs.embeddings is not None
    assert outputs.embeddings.shape == (1, outputs.anchors.shape[0], 4)


def test_shared_embedding_convs_have_one_batch_norm_per_level():
    model = random_student(backbone="mobilenet_v2_fpn")
    assert model.embedding_head is not None
    assert len(model.embedding_head.branches) == 1
    assert len(model.embedding_head.branches[0].norms) == 5


def test_detection_only_variant_has_no_embedding_head():
    model = random_student(backbone="mobilenet_v2_fpn", embedding_dim=0)
    assert model.embedding_head is None
    assert not any("embedding" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, *SMALL_INPUT)).embeddings is None


def test_embedding_output_starts_small():
    model = random_student(backbone="mobilenet_v2_fpn").eval()
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, *SMALL_INPUT), dense_embeddings=True)
    assert outputs.embeddings is not None
    # against L2-normalised teacher rows the initial L2 loss is then about |teacher|^2 <= 1
    assert outputs.embeddings.pow(2).sum(dim=2).mean() < 0.1


def test_random_backbone_warns():
    with pytest.warns(UserWarning, match="randomly initialised"):
        build_student(small_config(backbone="mobilenet_v2_fpn", embedding_dim=0))


# --- backbone weights -----------------------------------------------------------------


def test_mobilenet_legacy_weights_map_by_order(mobilenet_v2_features: Path):
    source = read_state_dict(mobilenet_v2_features)  # weights_only=True works on this file
    assert len(source) == 312
    model = build_student(small_config(backbone="mobilenet_v2_fpn"), mobilenet_v2_features)
    body = model.backbone.body.state_dict()
    correspondences = {
        "features.0.0.weight": "0.0.weight",
        "features.1.conv.3.weight": "1.conv.1.weight",  # t=1 block: dw, BN, pw, BN
        "features.2.conv.6.weight": "2.conv.2.weight",  # t=6 block: pw, BN, dw, BN, pw-linear, BN
        "features.17.conv.4.running_var": "17.conv.1.1.running_var",
        "features.18.1.bias": "18.1.bias",
    }
    for old_key, new_key in correspondences.items():
        torch.testing.assert_close(body[new_key], source[old_key], rtol=0, atol=0)


def test_mobilenet_weights_give_imagenet_like_statistics(mobilenet_v2_features: Path, pets_dir: Path):
    """On a real frame every frozen BN should see its input roughly standardised by its
    ImageNet running statistics; a wrong mapping or preprocessing breaks that."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    config = small_config(backbone="mobilenet_v2_fpn", embedding_dim=0, input_height=256, input_width=320)
    model = build_student(config, mobilenet_v2_features).eval()
    image, _ = bgr_to_input_tensor(cv2.imread(str(pets_dir / "img1" / "000001.jpg")), config.input_size)
    standardised_stats: list[tuple[float, float]] = []

    def record(module: FrozenBatchNorm2d, inputs: tuple[torch.Tensor], _output: torch.Tensor) -> None:
        live = module.running_var > 1e-3  # some ImageNet channels are dead (variance ~0)
        mean = module.running_mean[live].view(1, -1, 1, 1)
        std = (module.running_var[live] + module.eps).sqrt().view(1, -1, 1, 1)
        z = (inputs[0][:, live] - mean) / std
        standardised_stats.append((z.mean().item(), z.std().item()))

    for module in model.backbone.body.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.register_forward_hook(record)
    with torch.no_grad():
        features = model.pyramid(image[None])
    assert len(standardised_stats) == 52
    means, stds = np.array(standardised_stats).T
    assert np.abs(means).max() < 0.5
    assert stds.min() > 0.3 and stds.max() < 2.0
    assert all(torch.isfinite(f).all() and f.std() > 0 for f in features)


def test_mobilenet_weights_mismatch_is_an_error(mobilenet_v2_features: Path, tmp_path: Path):
    source = read_state_dict(mobilenet_v2_features)
    model = random_student(backbone="mobilenet_v2_fpn", embedding_dim=0)
    truncated = dict(list(source.items())[:-6])
    torch.save(truncated, tmp_path / "truncated.pt")
    with pytest.raises(BackboneWeightsError, match="tensors"):
        load_backbone_weights(model.backbone, "mobilenet_v2_fpn", tmp_path / "truncated.pt")
    reshaped = dict(source)
    reshaped["features.0.0.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(reshaped, tmp_path / "reshaped.pt")
    with pytest.raises(BackboneWeightsError, match="shape"):
        load_backbone_weights(model.backbone, "mobilenet_v2_fpn", tmp_path / "reshaped.pt")
    resnet = random_student(backbone="resnet18_fpn", embedding_dim=0)
    with pytest.raises(BackboneWeightsError, match="does not fit resnet18_fpn"):
        load_backbone_weights(resnet.backbone, "resnet18_fpn", mobilenet_v2_features)


def test_torchvision_resnet_state_dict_loads(tmp_path: Path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    state = resnet18(weights=None).state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    model = build_student(small_config(backbone="resnet18_fpn", embedding_dim=0), tmp_path / "resnet18.pth")
    body = model.backbone.body.state_dict()
    torch.testing.assert_close(body["layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])
    torch.testing.assert_close(body["bn1.running_var"], state["bn1.running_var"])


def test_pickled_non_tensor_file_is_refused(tmp_path: Path):
    torch.save({"options": argparse.Namespace(lr=0.1)}, tmp_path / "pickled.pt")
    with pytest.raises(BackboneWeightsError, match="weights_only"):
        read_state_dict(tmp_path / "pickled.pt")


# --- post-processing ------------------------------------------------------------------


def hand_made_outputs(embeddings: torch.Tensor | None, anchors_per_location: int = 1) -> StudentOutputs:
    anchors = torch.tensor(
        [[0, 0, 20, 40], [10, 10, 30, 50], [12, 10, 32, 50], [60, 0, 80, 40]], dtype=torch.float32
    )
    logits = torch.full((1, 4, 1), -10.0)
    logits[0, 2, 0] = 3.0  # fires
    logits[0, 1, 0] = 1.0  # fires, but overlaps anchor 2: suppressed by NMS
    logits[0, 3, 0] = -2.0  # sigmoid 0.12 >= 0.05: kept, far from the others
    deltas = torch.zeros(1, 4, 4)
    deltas[0, 2] = torch.tensor([0.1, 0.0, 0.0, 0.0])  # shift right by 0.1 width
    return StudentOutputs(
        class_logits=logits,
        box_deltas=deltas,
        embeddings=embeddings,
        anchors=anchors,
        anchors_per_level=(2, 1, 1, 0, 0),
        anchors_per_location=anchors_per_location,
        image_size=(64, 96),
    )


def test_postprocess_keeps_the_anchor_index_and_its_embedding():
    embeddings = torch.arange(4 * 3, dtype=torch.float32).view(1, 4, 3) + 1
    (detections,) = postprocess(hand_made_outputs(embeddings), small_config())
    assert detections.anchor_indices.tolist() == [2, 3]
    torch.testing.assert_close(detections.boxes[0], torch.tensor([14.0, 10.0, 34.0, 50.0]))
    torch.testing.assert_close(detections.scores, torch.sigmoid(torch.tensor([3.0, -2.0])))
    assert detections.embeddings is not None
    expected = torch.nn.functional.normalize(embeddings[0, [2, 3]], dim=1)
    torch.testing.assert_close(detections.embeddings, expected)
    stricter = postprocess(hand_made_outputs(embeddings), small_config(score_thresh=0.5))[0]
    assert stricter.anchor_indices.tolist() == [2]


def test_postprocess_per_location_embeddings_follow_the_location():
    embeddings = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # locations of 2 anchors each
    (detections,) = postprocess(
        hand_made_outputs(embeddings, anchors_per_location=2), small_config(embedding_head="per_location")
    )
    assert detections.anchor_indices.tolist() == [2, 3]
    assert detections.embeddings is not None
    torch.testing.assert_close(detections.embeddings, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


def test_postprocess_without_detections_or_embeddings():
    outputs = hand_made_outputs(None)
    (detections,) = postprocess(outputs, small_config(embedding_dim=0, score_thresh=0.99))
    assert detections.boxes.shape == (0, 4) and detections.embeddings is None


# --- letterbox and Detector -----------------------------------------------------------


def test_detector_preprocessing_and_box_mapping():
    image = np.zeros((576, 768, 3), dtype=np.uint8)
    image[:, :, 2] = 255  # pure red in BGR
    tensor, placement = bgr_to_input_tensor(image, SMALL_INPUT)
    assert tensor.shape == (3, 128, 160) and tensor.dtype == torch.float32
    assert (placement.offset_x, placement.offset_y) == (0, 4)  # centred: 120 rows of 128
    torch.testing.assert_close(tensor[:, 64, 80], torch.tensor([1.0, 0.0, 0.0]))  # RGB
    boxes = np.array([[0, 0, 768, 576], [100, 50, 200, 300]], dtype=np.float32)
    in_input = placement.to_output(boxes)
    np.testing.assert_allclose(in_input[0], [0, 4, 160, 124], atol=1e-4)
    np.testing.assert_allclose(boxes_to_original(placement, in_input), boxes, atol=1e-3)
    outside = boxes_to_original(placement, np.array([[-5, 0, 170, 2]], dtype=np.float32))
    np.testing.assert_allclose(outside, [[0, 0, 768, 0]], atol=1e-3)


def test_detector_returns_arrays_in_original_pixels(pets_dir: Path):
    model = random_student(backbone="mobilenet_v2_fpn", embedding_dim=8)
    # make every ratio-0.25, scale-1 anchor fire with a score of sigmoid(2)
    predictor = model.classification_head.predictor
    with torch.no_grad():
        predictor.weight.zero_()
        predictor.bias.fill_(-10.0)
        predictor.bias[0] = 2.0
    detector = Detector(model, small_config(backbone="mobilenet_v2_fpn", embedding_dim=8, nms_thresh=0.3))
    image = cv2.imread(str(pets_dir / "img1" / "000001.jpg"))
    results = detector.detect_batch([image, image[:300, :200].copy()])
    for detections, (height, width) in zip(results, [(576, 768), (300, 200)], strict=True):
        tlbr, score, embedding = detections
        assert tlbr.dtype == score.dtype == np.float32
        assert 0 < len(tlbr) <= 100 and tlbr.shape == (len(score), 4)
        assert (tlbr[:, [0, 2]] <= width).all() and (tlbr[:, [1, 3]] <= height).all()
        assert (tlbr >= 0).all() and (tlbr[:, 2] > tlbr[:, 0]).all()
        np.testing.assert_allclose(score, 1 / (1 + math.exp(-2.0)), rtol=1e-5)
        assert embedding is not None and embedding.shape == (len(score), 8)
        np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)
    assert detector.detect(image).tlbr.shape == results[0].tlbr.shape


def test_detector_rejects_a_different_architecture():
    model = random_student(backbone="mobilenet_v2_fpn", embedding_dim=0)
    with pytest.raises(ValueError, match="embedding_dim"):
        Detector(model, small_config(backbone="mobilenet_v2_fpn", embedding_dim=8))
    Detector(model, small_config(backbone="mobilenet_v2_fpn", embedding_dim=0, input_width=192))
