"""The embedding head evaluated at chosen anchors (student.sparse_head) against the dense head."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import student
from student import LossConfig, ModelConfig, StudentCriterion, build_student, postprocess
from student.anchors import feature_sizes_for_input
from student.checkpoint import TrainingCheckpoint, save_checkpoint
from student.heads import EmbeddingHead
from student.sparse_head import embeddings_at_anchors

SMALL_INPUT = (128, 160)  # P3..P7: 16x20, 8x10, 4x5, 2x3, 1x2
ANCHORS_PER_LOCATION = 3
HEAD_VARIANTS = [
    pytest.param(layout, shared, id=f"{layout}-{'shared' if shared else 'per_level'}")
    for layout in ("per_anchor", "per_location")
    for shared in (True, False)
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def randomise(head: torch.nn.Module, seed: int = 0) -> None:
    """Weights, biases and BN statistics of order one, so that every term of the head matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in head.named_parameters():
            scale = 0.2 if "output" in name or "hidden" in name else 1.0
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
        for module in head.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


def small_head(layout: str, shared: bool, *, channels: int = 8, dim: int = 4) -> EmbeddingHead:
    torch.manual_seed(0)
    head = EmbeddingHead(
        channels,
        dim,
        ANCHORS_PER_LOCATION,
        width=16,
        num_levels=5,
        per_anchor=layout == "per_anchor",
        share_convs_across_levels=shared,
    )
    randomise(head)
    return head


def pyramid(batch: int, channels: int = 8, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, channels, h, w, generator=generator)
        for h, w in feature_sizes_for_input(*SMALL_INPUT)
    ]


def every_anchor(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, anchor) of every anchor of every image, images interleaved to test the ordering."""
    num_anchors = sum(f.shape[-2] * f.shape[-1] for f in features) * ANCHORS_PER_LOCATION
    batch = features[0].shape[0]
    anchors = torch.arange(num_anchors).repeat_interleave(batch)
    images = torch.arange(batch).repeat(num_anchors)
    permutation = torch.randperm(len(anchors), generator=torch.Generator().manual_seed(2))
    return images[permutation], anchors[permutation]


def dense_at(head: EmbeddingHead, features: list[torch.Tensor], images, anchors) -> torch.Tensor:
    dense = head(features)
    return dense[images, anchors if head.per_anchor else anchors // ANCHORS_PER_LOCATION]


def assert_cosine_at_least(actual: torch.Tensor, expected: torch.Tensor, bound: float = 0.9999) -> None:
    assert actual.shape == expected.shape
    cosine = F.cosine_similarity(actual.double(), expected.double(), dim=1)
    assert float(cosine.min()) >= bound, f"lowest cosine {float(cosine.min())}"


# --- the head alone: every location of every level, borders and corners included ---------


@pytest.mark.parametrize(("layout", "shared"), HEAD_VARIANTS)
def test_sparse_equals_dense_at_every_anchor_in_eval_mode(layout: str, shared: bool):
    head = small_head(layout, shared).eval()
    features = pyramid(batch=2)
    images, anchors = every_anchor(features)
    with torch.no_grad():
        expected = dense_at(head, features, images, anchors)
        sparse = embeddings_at_anchors(head, features, images, anchors, ANCHORS_PER_LOCATION)
    assert_cosine_at_least(sparse, expected)
    torch.testing.assert_close(sparse, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("map_statistics", [True, False], ids=["map", "assigned"])
def test_batch_statistics_over_every_location_are_the_dense_ones(map_statistics: bool):
    """With every location gathered, training-mode BN sees what the dense BN sees in both modes."""
    dense_head = small_head("per_anchor", shared=True).train()
    sparse_head = small_head("per_anchor", shared=True).train()
    features = pyramid(batch=2)
    images, anchors = every_anchor(features)
    expected = dense_at(dense_head, features, images, anchors)
    sparse = embeddings_at_anchors(
        sparse_head, features, images, anchors, ANCHORS_PER_LOCATION, map_statistics=map_statistics
    )
    torch.testing.assert_close(sparse, expected, rtol=1e-4, atol=1e-5)
    for dense_norm, sparse_norm in zip(
        dense_head.branches[0].norms, sparse_head.branches[0].norms, strict=True
    ):
        torch.testing.assert_close(sparse_norm.running_mean, dense_norm.running_mean)
        torch.testing.assert_close(sparse_norm.running_var, dense_norm.running_var)


@pytest.mark.parametrize(("layout", "shared"), HEAD_VARIANTS)
def test_map_statistics_give_the_dense_loss_gradients_and_running_statistics(layout: str, shared: bool):
    """A few anchors, training mode: the dense head's outputs there, the same gradients to the
    head and to the features, and every level's running statistics moved as the dense BN's."""
    dense_head = small_head(layout, shared).train()
    sparse_head = small_head(layout, shared).train()
    dense_features = [f.requires_grad_() for f in pyramid(batch=2)]
    sparse_features = [f.detach().clone().requires_grad_() for f in dense_features]
    # corners of P3 and P4 only: P5..P7 are read by no anchor
    images = torch.tensor([0, 1, 1, 0])
    anchors = torch.tensor([0, 16 * 20 * 3 - 1, 16 * 20 * 3 + 5, 16 * 20 * 3 + 8 * 10 * 3 - 2])
    target = torch.randn(len(anchors), 4, generator=torch.Generator().manual_seed(3))
    expected = dense_at(dense_head, dense_features, images, anchors)
    sparse = embeddings_at_anchors(sparse_head, sparse_features, images, anchors, ANCHORS_PER_LOCATION)
    torch.testing.assert_close(sparse, expected, rtol=1e-4, atol=1e-5)
    ((expected - target) ** 2).sum().backward()
    ((sparse - target) ** 2).sum().backward()
    for (name, dense_parameter), sparse_parameter in zip(
        dense_head.named_parameters(), sparse_head.parameters(), strict=True
    ):
        assert sparse_parameter.grad is not None, name
        torch.testing.assert_close(sparse_parameter.grad, dense_parameter.grad, rtol=1e-4, atol=1e-5)
    for dense_level, sparse_level in zip(dense_features, sparse_features, strict=True):
        assert dense_level.grad is not None
        # a level no anchor reads: no gradient at all on the sparse side, zeros on the dense one
        sparse_gradient = (
            sparse_level.grad if sparse_level.grad is not None else torch.zeros_like(sparse_level)
        )
        torch.testing.assert_close(sparse_gradient, dense_level.grad, rtol=1e-4, atol=1e-5)
    dense_norms = [m for m in dense_head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    sparse_norms = [m for m in sparse_head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for dense_norm, sparse_norm in zip(dense_norms, sparse_norms, strict=True):
        torch.testing.assert_close(sparse_norm.running_mean, dense_norm.running_mean)
        torch.testing.assert_close(sparse_norm.running_var, dense_norm.running_var)


def test_assigned_statistics_come_from_the_gathered_windows_only():
    head = small_head("per_location", shared=True).train()
    features = pyramid(batch=1)
    norm = head.branches[0].norms[0]
    before = norm.running_mean.clone()
    untouched_level = head.branches[0].norms[1].running_mean.clone()
    # one P3 location in the corner: its 3x3 hidden neighbourhood holds 4 in-map positions
    embeddings_at_anchors(
        head, features, torch.tensor([0]), torch.tensor([0]), ANCHORS_PER_LOCATION, map_statistics=False
    )
    hidden = head.branches[0].hidden(features[0])[0, :, :2, :2].flatten(1)
    expected = (1 - norm.momentum) * before + norm.momentum * hidden.mean(dim=1)
    torch.testing.assert_close(norm.running_mean, expected.detach())
    assert torch.equal(head.branches[0].norms[1].running_mean, untouched_level)


@pytest.mark.parametrize("map_statistics", [True, False], ids=["map", "assigned"])
def test_a_single_hidden_position_in_training_uses_the_running_statistics(map_statistics: bool):
    head = small_head("per_location", shared=True).train()
    features = pyramid(batch=1)
    features[-1] = features[-1][:, :, :1, :1]  # a 1x1 P7: one hidden position, no batch variance
    norm = head.branches[0].norms[4]
    running_mean = norm.running_mean.clone()
    last_anchor = torch.tensor([sum(f.shape[-2] * f.shape[-1] for f in features) * ANCHORS_PER_LOCATION - 1])
    trained = embeddings_at_anchors(
        head, features, torch.tensor([0]), last_anchor, ANCHORS_PER_LOCATION, map_statistics=map_statistics
    )
    assert torch.equal(norm.running_mean, running_mean)
    head.eval()
    with torch.no_grad():
        expected = dense_at(head, features, torch.tensor([0]), last_anchor)
    torch.testing.assert_close(trained.detach(), expected, rtol=1e-4, atol=1e-5)


def test_no_anchors_gives_an_empty_result_connected_to_every_parameter():
    head = small_head("per_anchor", shared=False).train()
    empty = torch.zeros(0, dtype=torch.int64)
    result = embeddings_at_anchors(head, pyramid(batch=1), empty, empty, ANCHORS_PER_LOCATION)
    assert result.shape == (0, 4)
    result.sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in head.parameters())


def test_anchor_indices_out_of_range_are_refused():
    head = small_head("per_anchor", shared=True).eval()
    features = pyramid(batch=1)
    num_anchors = sum(f.shape[-2] * f.shape[-1] for f in features) * ANCHORS_PER_LOCATION
    with pytest.raises(IndexError, match=f"outside 0..{num_anchors - 1}"):
        embeddings_at_anchors(head, features, torch.tensor([0]), torch.tensor([num_anchors]), 3)
    with pytest.raises(IndexError, match="image indices 1..1 outside a batch of 1"):
        embeddings_at_anchors(head, features, torch.tensor([1]), torch.tensor([0]), 3)


def test_sparse_head_runs_under_autocast():
    head = small_head("per_anchor", shared=True).eval()
    features = pyramid(batch=2)
    images, anchors = every_anchor(features)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        sparse = embeddings_at_anchors(head, features, images, anchors, ANCHORS_PER_LOCATION)
        expected = dense_at(head, features, images, anchors)
    assert sparse.dtype == expected.dtype == torch.bfloat16
    assert_cosine_at_least(sparse.float(), expected.float(), bound=0.99)


# --- the whole model: postprocess, the loss -------------------------------------------------


def small_student(layout: str, shared: bool, **overrides) -> student.StudentDetector:
    values = dict(
        backbone="mobilenet_v2_fpn",
        input_height=SMALL_INPUT[0],
        input_width=SMALL_INPUT[1],
        fpn_channels=32,
        head_width=16,
        head_depth=1,
        anchor_scales=(1.0,),
        embedding_dim=8,
        embedding_head=layout,
        embedding_head_width=32,
        share_embedding_convs_across_levels=shared,
    )
    values.update(overrides)
    torch.manual_seed(0)
    model = build_student(ModelConfig(**values), warn_if_random_backbone=False)
    assert model.embedding_head is not None
    randomise(model.embedding_head)
    return model


def border_and_interior_logits(outputs: student.StudentOutputs) -> torch.Tensor:
    """Class logits that keep one anchor at every border location (corners included) and one
    interior location of every level, different anchors in each image, strictly ordered."""
    batch = outputs.class_logits.shape[0]
    logits = torch.full_like(outputs.class_logits, -20.0)
    anchors_per_location = outputs.anchors_per_location
    start = 0
    rank = 0
    for height, width in feature_sizes_for_input(*outputs.image_size):
        rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        border = (rows == 0) | (rows == height - 1) | (columns == 0) | (columns == width - 1)
        border[height // 2, width // 2] = True
        for location in np.flatnonzero(border):
            for image in range(batch):
                cell = (location + image) % anchors_per_location
                logits[image, start + location * anchors_per_location + cell, 0] = 10.0 - 0.01 * rank
                rank += 1
        start += height * width * anchors_per_location
    return logits


@pytest.mark.parametrize(("layout", "shared"), HEAD_VARIANTS)
def test_postprocess_keeps_the_same_detections_in_order_with_dense_embeddings(layout: str, shared: bool):
    model = small_student(layout, shared, anchor_aspect_ratios=(0.25, 0.5)).eval()
    config = dataclasses.replace(model.config, nms_thresh=1.0, detections_per_image=500)
    with torch.no_grad():
        sparse_outputs = model(torch.rand(2, 3, *SMALL_INPUT))
        assert sparse_outputs.embeddings is None and sparse_outputs.sparse_embeddings is not None
        logits = border_and_interior_logits(sparse_outputs)
        sparse_outputs = dataclasses.replace(sparse_outputs, class_logits=logits)
        dense_outputs = dataclasses.replace(
            sparse_outputs, embeddings=sparse_outputs.sparse_embeddings.dense(), sparse_embeddings=None
        )
        sparse = postprocess(sparse_outputs, config)
        dense = postprocess(dense_outputs, config)
    border_locations = sum(2 * (h + w) - 4 if h > 1 else w for h, w in feature_sizes_for_input(*SMALL_INPUT))
    for sparse_image, dense_image in zip(sparse, dense, strict=True):
        assert len(sparse_image.anchor_indices) >= border_locations
        assert torch.equal(sparse_image.anchor_indices, dense_image.anchor_indices)
        assert torch.equal(sparse_image.boxes, dense_image.boxes)
        assert sparse_image.embeddings is not None and dense_image.embeddings is not None
        assert_cosine_at_least(sparse_image.embeddings, dense_image.embeddings)


def random_targets(batch: int, dim: int, seed: int = 3) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        corners = torch.rand(6, 2, generator=generator) * torch.tensor(
            [SMALL_INPUT[1] - 40, SMALL_INPUT[0] - 80]
        )
        sizes = torch.rand(6, 2, generator=generator) * 30 + torch.tensor([10.0, 40.0])
        embeddings = torch.randn(6, dim + 2, generator=generator)
        embeddings[0] = float("nan")  # a box without a teacher embedding
        targets.append(
            {
                "boxes": torch.cat([corners, corners + sizes], dim=1),
                "ignore": torch.zeros(6, dtype=torch.bool),
                "embeddings": embeddings,
                "identities": torch.tensor([-1, 0, 1, 2, 3, 4]),
            }
        )
    return targets


@pytest.mark.parametrize(("layout", "shared"), HEAD_VARIANTS)
def test_sparse_and_dense_losses_are_equal_and_gradients_reach_the_head(layout: str, shared: bool):
    model = small_student(layout, shared)
    criterion = StudentCriterion(LossConfig(embedding_loss="l2+ce"), model.config, num_identities=5)
    images = torch.rand(2, 3, *SMALL_INPUT)
    targets = random_targets(2, model.config.embedding_dim)
    # same BN mode on both sides: the head's BN on running statistics
    model.eval()
    dense = criterion(model(images, dense_embeddings=True), targets)
    sparse = criterion(model(images, dense_embeddings=False), targets)
    assert sparse.num_embedding_anchors == dense.num_embedding_anchors > 0
    assert sparse.num_identity_anchors == dense.num_identity_anchors > 0
    assert dense.embedding_l2 is not None and sparse.embedding_l2 is not None
    assert dense.identity_ce is not None and sparse.identity_ce is not None
    torch.testing.assert_close(sparse.embedding_l2, dense.embedding_l2, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sparse.identity_ce, dense.identity_ce, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sparse.total, dense.total, rtol=1e-4, atol=1e-6)

    model.train()
    head = model.embedding_head
    assert head is not None
    model.zero_grad()
    criterion(model(images), targets).total.backward()
    levels_with_gradient = 0
    for level in range(5):
        branch, norm = head.level_modules(level)
        assert norm.weight.grad is not None
        if not norm.weight.grad.any():
            continue  # no assigned anchor on this level
        levels_with_gradient += 1
        for parameter in (
            branch.hidden.weight,
            norm.weight,
            norm.bias,
            branch.output.weight,
            branch.output.bias,
        ):
            assert parameter.grad is not None and parameter.grad.any()
    assert levels_with_gradient > 0


@pytest.mark.parametrize(("layout", "shared"), [HEAD_VARIANTS[0], HEAD_VARIANTS[3]])
def test_training_with_map_statistics_is_dense_training(layout: str, shared: bool):
    """The default sparse head, in training mode: the dense head's loss and gradients."""
    # float64: the backbone's gradients sum many terms, and float32 rounding alone moves a few by 1e-4
    dense_model = small_student(layout, shared, dense_embeddings=True).double().train()
    sparse_model = small_student(layout, shared).double().train()
    assert sparse_model.config.embedding_norm_statistics == "map"
    sparse_model.load_state_dict(dense_model.state_dict())
    criterion = StudentCriterion(LossConfig(), dense_model.config)
    images = torch.rand(2, 3, *SMALL_INPUT, dtype=torch.float64)
    targets = random_targets(2, dense_model.config.embedding_dim)
    dense = criterion(dense_model(images), targets)
    sparse = criterion(sparse_model(images), targets)
    assert sparse.num_embedding_anchors == dense.num_embedding_anchors > 0
    torch.testing.assert_close(sparse.total, dense.total, rtol=1e-10, atol=1e-12)
    dense.total.backward()
    sparse.total.backward()
    for (name, dense_parameter), sparse_parameter in zip(
        dense_model.named_parameters(), sparse_model.parameters(), strict=True
    ):
        if dense_parameter.grad is None:
            assert sparse_parameter.grad is None or not sparse_parameter.grad.any(), name
            continue
        torch.testing.assert_close(sparse_parameter.grad, dense_parameter.grad, rtol=1e-9, atol=1e-12)


def test_levels_without_assigned_anchors_still_take_part_in_the_graph():
    model = small_student("per_anchor", shared=False).train()
    criterion = StudentCriterion(LossConfig(), model.config)
    criterion(model(torch.rand(2, 3, *SMALL_INPUT)), random_targets(2, 8)).total.backward()
    assert model.embedding_head is not None
    assert all(p.grad is not None for p in model.embedding_head.parameters())


def test_student_load_runs_sparse_unless_asked_for_dense(tmp_path):
    model = small_student("per_anchor", shared=True, score_thresh=0.0, dense_embeddings=True)
    path = save_checkpoint(
        tmp_path / "student.pt",
        TrainingCheckpoint(step=0, model_state=model.state_dict(), model_config=model.config.to_dict()),
    )
    sparse_detector = student.load(path)
    dense_detector = student.load(path, dense_embeddings=True)
    assert not sparse_detector.config.dense_embeddings and dense_detector.config.dense_embeddings
    image = (np.random.default_rng(0).random((96, 140, 3)) * 255).astype(np.uint8)
    sparse = sparse_detector.detect(image)
    dense = dense_detector.detect(image)
    assert len(sparse.tlbr) > 0
    np.testing.assert_array_equal(sparse.tlbr, dense.tlbr)
    assert sparse.embedding is not None and dense.embedding is not None
    assert_cosine_at_least(torch.from_numpy(sparse.embedding), torch.from_numpy(dense.embedding))
