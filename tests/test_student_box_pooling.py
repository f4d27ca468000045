"""``embedding_pooling: box`` (CenterNet): detections' embeddings read by a linear readout of the
centre window plus the map averaged over a grid of the detected box, solved after training
(:mod:`student.refit`, tested in test_student_refit.py) while SGD trains the centre head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from student_fixtures import small_centernet

from student.api import load_student
from student.centernet import CenterNetCriterion, decode_center_outputs
from student.centernet.model import (
    BOX_POOLING_BINS,
    COARSE_POOLING,
    BoxPooledEmbeddingHead,
    box_bins,
    centre_windows,
)
from student.checkpoint import CheckpointError, TrainingCheckpoint, save_checkpoint
from student.config import ConfigError, LossConfig, ModelConfig
from student.families import build_student
from student.recipe import DataConfig, TrainConfig
from student.sources import ShardSource

STRIDE = 4


def coordinate_map(height: int, width: int, stride: int = STRIDE) -> torch.Tensor:
    """(1, 2, H, W): channel 0 holds each cell centre's x, channel 1 its y, in input pixels."""
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) * stride
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) * stride
    columns = xs.view(1, width).expand(height, width)
    rows = ys.view(height, 1).expand(height, width)
    return torch.stack([columns, rows])[None]


def embed(head: BoxPooledEmbeddingHead, *inputs) -> torch.Tensor:
    """The readout's embeddings: its output layer over what it reads."""
    return head.output(head.readout_inputs(*inputs))


def test_box_bins_average_each_bin_of_the_box_and_read_zero_outside_the_map():
    features = coordinate_map(8, 12)
    boxes = torch.tensor([[8.0, 4.0, 24.0, 28.0], [4.0, 6.0, 12.0, 30.0]])  # samples between cell centres
    pooled = box_bins(features, torch.tensor([0, 0]), boxes, STRIDE).view(2, 2, *BOX_POOLING_BINS)
    rows, columns = BOX_POOLING_BINS
    for index, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        # a linear map interpolates exactly: each bin's mean is its centre
        bin_x = x1 + (torch.arange(columns) + 0.5) * (x2 - x1) / columns
        bin_y = y1 + (torch.arange(rows) + 0.5) * (y2 - y1) / rows
        torch.testing.assert_close(pooled[index, 0], bin_x.expand(rows, columns))
        torch.testing.assert_close(pooled[index, 1], bin_y[:, None].expand(rows, columns))
    outside = box_bins(features, torch.tensor([0]), torch.tensor([[100.0, 60.0, 140.0, 90.0]]), STRIDE)
    assert torch.count_nonzero(outside) == 0


def test_the_head_reads_each_objects_own_image_and_box():
    torch.manual_seed(0)
    head = BoxPooledEmbeddingHead(3, 5)
    for parameter in head.parameters():
        torch.nn.init.normal_(parameter)
    features = torch.randn(2, 3, 8, 12)
    box = torch.tensor([[8.0, 4.0, 24.0, 28.0]])
    cell = torch.tensor([3 * 12 + 4])
    first = embed(head, features, torch.tensor([0]), cell, box, STRIDE)
    second = embed(head, features, torch.tensor([1]), cell, box, STRIDE)
    both = embed(head, features, torch.tensor([1, 0]), torch.cat([cell, cell]), torch.cat([box, box]), STRIDE)
    torch.testing.assert_close(both, torch.cat([second, first]))
    wider = embed(head, features, torch.tensor([0]), cell, torch.tensor([[0.0, 4.0, 40.0, 28.0]]), STRIDE)
    assert not torch.allclose(wider, first)  # same centre cell, another box: another embedding
    # the centre window is the one the FairMOT head reads
    windows = centre_windows(features, torch.tensor([0]), cell)
    assert windows.shape == (1, 3 * 9)
    torch.testing.assert_close(windows.view(3, 3, 3)[:, 1, 1], features[0, :, 3, 4])


def test_the_readout_also_pools_the_coarser_neck_maps_over_their_own_grids():
    """Each coarser map is read at its own stride: a map holding its cells' centres pools to
    the centres of the box's bins, whatever the stride."""
    fine, box = coordinate_map(16, 24), torch.tensor([[8.0, 4.0, 40.0, 60.0]])
    coarse = tuple(coordinate_map(64 // stride, 96 // stride, stride) for stride, _ in COARSE_POOLING)
    head = BoxPooledEmbeddingHead(2, 5, coarse_channels=(2, 2))
    rows, columns = BOX_POOLING_BINS
    fine_inputs = 2 * (9 + rows * columns)
    inputs = head.readout_inputs(fine, torch.tensor([0]), torch.tensor([3 * 24 + 6]), box, STRIDE, coarse)
    assert inputs.shape == (1, head.output.in_features)
    offset = fine_inputs
    for (_, (coarse_rows, coarse_columns)), width in zip(COARSE_POOLING, (16, 4), strict=True):
        pooled = inputs[0, offset : offset + width].view(2, coarse_rows, coarse_columns)
        x1, y1, x2, y2 = box[0].tolist()
        bin_x = x1 + (torch.arange(coarse_columns) + 0.5) * (x2 - x1) / coarse_columns
        bin_y = y1 + (torch.arange(coarse_rows) + 0.5) * (y2 - y1) / coarse_rows
        torch.testing.assert_close(pooled[0], bin_x.expand(coarse_rows, coarse_columns))
        torch.testing.assert_close(pooled[1], bin_y[:, None].expand(coarse_rows, coarse_columns))
        offset += width
    assert offset == head.output.in_features
    with pytest.raises(ValueError, match="pools 2 coarser maps, got 1"):
        head.readout_inputs(fine, torch.tensor([0]), torch.tensor([0]), box, STRIDE, coarse[:1])


@pytest.mark.parametrize("neck_maps", [2, 3])
def test_detections_are_embedded_from_the_neck_maps_the_readout_was_built_for(neck_maps):
    torch.manual_seed(0)
    config = small_centernet(
        embedding_pooling="box", box_readout_neck_maps=neck_maps, neck_channels=(48, 40, 32)
    )
    model = build_student(config, warn_if_random_backbone=False).eval()
    rows, columns = BOX_POOLING_BINS
    coarse_inputs = [40 * 8, 48 * 2][: neck_maps - 1]  # stride 8 over 4 x 2, stride 16 over 2 x 1
    assert model.box_readout.output.in_features == 32 * (9 + rows * columns) + sum(coarse_inputs)
    with torch.no_grad():
        torch.nn.init.normal_(model.box_readout.output.weight)
        outputs = model(torch.rand(1, 3, 64, 96))
        detections = decode_center_outputs(outputs, config)[0]
        neck = model.backbone.neck_maps((torch.rand(1, 3, 64, 96) - model.pixel_mean) / model.pixel_std)
    assert [coarse.shape[-1] for coarse in outputs.coarse_features] == [12, 6][: neck_maps - 1]
    assert [coarse.shape[1] for coarse in outputs.coarse_features] == [40, 48][: neck_maps - 1]
    assert [m.shape[1] for m in neck] == [48, 40, 32]
    index = torch.zeros_like(detections.anchor_indices)
    expected = embed(
        model.box_readout,
        outputs.features,
        index,
        detections.anchor_indices,
        detections.boxes,
        STRIDE,
        outputs.coarse_features,
    )
    torch.testing.assert_close(detections.embeddings, torch.nn.functional.normalize(expected, dim=1))
    without_coarse = BoxPooledEmbeddingHead(32, config.embedding_dim)
    assert without_coarse.output.in_features < model.box_readout.output.in_features


def test_box_pooling_is_refused_where_there_is_no_box_to_read_or_no_solve(tmp_path: Path):
    with pytest.raises(ConfigError, match="family 'centernet' only"):
        ModelConfig(embedding_pooling="box")
    with pytest.raises(ConfigError, match="needs an embedding head"):
        small_centernet(embedding_pooling="box", embedding_dim=0)
    with pytest.raises(ConfigError, match="dense_embeddings: false"):
        small_centernet(embedding_pooling="box", dense_embeddings=True)
    with pytest.raises(ConfigError, match="embedding_pooling must be one of"):
        small_centernet(embedding_pooling="roi")
    with pytest.raises(ConfigError, match="box_readout_neck_maps must be 1 .* got 4"):
        small_centernet(embedding_pooling="box", box_readout_neck_maps=4)
    with pytest.raises(ConfigError, match="read by the box readout only"):
        small_centernet(box_readout_neck_maps=3)
    data = DataConfig(train=(ShardSource(directory=str(tmp_path)),))
    with pytest.raises(ConfigError, match="set optim.embedding_refit_ridge"):
        TrainConfig(model=small_centernet(embedding_pooling="box"), data=data)
    model = build_student(small_centernet(embedding_pooling="box"), warn_if_random_backbone=False)
    with pytest.raises(ValueError, match="no dense map"):
        model(torch.rand(1, 3, 64, 96), dense_embeddings=True)


def test_sgd_trains_the_centre_head_and_detections_are_embedded_by_the_box_readout():
    torch.manual_seed(0)
    config = small_centernet(embedding_pooling="box")
    model = build_student(config, warn_if_random_backbone=False)
    assert not any(parameter.requires_grad for parameter in model.box_readout.parameters())
    criterion = CenterNetCriterion(LossConfig(embedding_weight=10.0), config)
    target = {
        "boxes": torch.tensor([[10.0, 6.0, 30.0, 58.0], [50.0, 10.0, 70.0, 50.0]]),
        "ignore": torch.tensor([False, False]),
        "identities": torch.tensor([-1, -1]),
        "embeddings": torch.randn(2, 16),
    }
    terms = criterion(model(torch.rand(1, 3, 64, 96)), [target])
    assert terms.num_embedding_anchors == 2 and terms.embedding_l2.item() > 0
    terms.total.backward()
    assert torch.count_nonzero(model.embedding_head.hidden.weight.grad) > 0
    model.eval()
    with torch.no_grad():
        for parameter in model.box_readout.parameters():
            torch.nn.init.normal_(parameter)  # a readout that differs clearly from the head
        outputs = model(torch.rand(2, 3, 64, 96))
        detections = decode_center_outputs(outputs, config)
    for image, found in enumerate(detections):
        assert found.embeddings.shape == (len(found.boxes), config.embedding_dim)
        index = torch.full_like(found.anchor_indices, image)
        expected = embed(
            model.box_readout, outputs.features, index, found.anchor_indices, found.boxes, STRIDE
        )
        torch.testing.assert_close(found.embeddings, torch.nn.functional.normalize(expected, dim=1))
        head = outputs.cell_embeddings(index, found.anchor_indices)
        assert not torch.allclose(found.embeddings, torch.nn.functional.normalize(head, dim=1))


def _saved(path: Path, model: torch.nn.Module, config: ModelConfig, step: int) -> Path:
    checkpoint = TrainingCheckpoint(step=step, model_state=model.state_dict(), model_config=config.to_dict())
    return save_checkpoint(path, checkpoint)


def test_a_checkpoint_saved_before_the_readout_was_solved_is_refused(tmp_path: Path):
    config = small_centernet(embedding_pooling="box")
    model = build_student(config, warn_if_random_backbone=False)
    path = _saved(tmp_path / "step_000002.pt", model, config, step=2)
    with pytest.raises(CheckpointError, match="at step 2, before its box readout was solved"):
        load_student(path)
    model.box_readout.solved.fill_(True)
    assert load_student(_saved(path, model, config, step=3))[1].step == 3


def test_a_centre_checkpoint_is_not_loaded_as_a_box_pooled_student(tmp_path: Path):
    centre = small_centernet()
    path = _saved(
        tmp_path / "centre.pt", build_student(centre, warn_if_random_backbone=False), centre, step=1
    )
    with pytest.raises(CheckpointError, match="embedding_pooling"):
        load_student(path, expected_config=small_centernet(embedding_pooling="box"))
