"""``optim.embedding_refit_ridge``: the embedding head's output layer solved by least squares
after the last step (:mod:`student.refit`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from student_fixtures import small_centernet, write_pets_shard_dir
from torch.utils.data import Subset

from student.api import load_student
from student.augment import AugmentConfig
from student.checkpoint import CheckpointError
from student.config import ConfigError, LossConfig, ModelConfig
from student.data import DatasetOptions, StudentDataset
from student.engine import train
from student.families import build_student
from student.recipe import DataConfig, OptimConfig, RunConfig, TrainConfig
from student.refit import RefitError, _Moments, refit_embedding_head
from student.sources import ShardSource


def test_the_solution_recovers_a_linear_map_and_its_error_is_computed_from_the_sums():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(300, 6, generator=generator, dtype=torch.float64) * 3 + 1
    inputs[:, 5] = 2.0  # an input that never varies gets weight 0, not a division by zero
    weight = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    weight[:, 5] = 0
    bias = torch.randn(4, generator=generator, dtype=torch.float64)
    targets = inputs @ weight.T + bias
    moments = _Moments.empty(6, 4)
    moments.add(inputs[:100], targets[:100])
    moments.add(inputs[100:], targets[100:])
    solved_weight, solved_bias = moments.solve(ridge=1e-9)
    torch.testing.assert_close(solved_weight, weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(solved_bias, bias, atol=1e-6, rtol=0)
    assert moments.squared_error(solved_weight, solved_bias) == pytest.approx(0.0, abs=1e-8)
    zero = moments.squared_error(torch.zeros(4, 6), torch.zeros(4))
    assert zero == pytest.approx(float((targets**2).sum(1).mean()), rel=1e-9)
    noisy = targets + torch.randn(300, 4, generator=generator, dtype=torch.float64)
    moments = _Moments.empty(6, 4)
    moments.add(inputs, noisy)
    best = moments.squared_error(*moments.solve(ridge=1e-9))
    direct = float(((inputs @ solved_weight.T + solved_bias - noisy) ** 2).sum(1).mean())
    assert moments.squared_error(solved_weight, solved_bias) == pytest.approx(direct, rel=1e-9)
    assert best <= direct  # the least-squares solution of the noisy targets is no worse than the true map
    shrunk = moments.solve(ridge=10.0)[0]
    assert shrunk.norm() < solved_weight.norm()  # the penalty shrinks the weights


def test_the_refit_is_refused_where_it_would_fit_the_wrong_thing(tmp_path):
    data = DataConfig(train=(ShardSource(directory=str(tmp_path)),))
    refit = OptimConfig(embedding_refit_ridge=0.03)
    with pytest.raises(ConfigError, match="needs model.family 'centernet'"):
        TrainConfig(model=ModelConfig(backbone="mobilenet_v2_fpn"), data=data, optim=refit)
    with pytest.raises(ConfigError, match="embedding_dim > 0"):
        TrainConfig(model=small_centernet(embedding_dim=0), data=data, optim=refit)
    with pytest.raises(ConfigError, match="use embedding_loss: l2"):
        TrainConfig(model=small_centernet(), data=data, loss=LossConfig(embedding_loss="l2+ce"), optim=refit)
    with pytest.raises(ConfigError, match="positive number or null"):
        OptimConfig(embedding_refit_ridge=0.0)


@pytest.mark.parametrize(("pooling", "neck_maps"), [("centre", 1), ("box", 1), ("box", 3)])
def test_training_ends_with_the_refit_head_in_the_last_checkpoint(tmp_path, pets_dir, pooling, neck_maps):
    shards = write_pets_shard_dir(tmp_path / "shards", pets_dir)
    model = small_centernet(embedding_pooling=pooling, embedding_dim=16, box_readout_neck_maps=neck_maps)
    config = TrainConfig(
        model=model,
        data=DataConfig(train=(ShardSource(directory=str(shards), frames=(100, 250)),)),
        augment=AugmentConfig(min_scale=1.0, max_scale=1.0, photometric=False),
        optim=OptimConfig(optimizer="adamw", learning_rate=1e-3, batch_size=2, max_steps=3, embedding_refit_ridge=1e-3),
        run=RunConfig(out_dir=str(tmp_path / "run"), checkpoint_every=2, tensorboard=False, threads=1),
    )  # fmt: skip
    torch.manual_seed(0)
    outcome = train(config, progress=False)
    report = outcome.refit
    # frames 133, 150, 200 and 250 of the five: the frame filter holds for the solve too
    assert report is not None and report.images == 4 and report.objects > 10
    assert report.l2_after < 0.5 * report.l2_before  # random teacher vectors: SGD's 3 steps barely start
    assert outcome.last_checkpoint is not None and outcome.last_checkpoint.name == "step_000003.pt"
    loaded, checkpoint = load_student(outcome.out_dir / "last.pt")
    assert checkpoint.step == 3
    if pooling == "box":
        assert bool(loaded.box_readout.solved)
        with pytest.raises(CheckpointError, match="before its box readout was solved"):
            load_student(outcome.out_dir / "step_000002.pt")
    images = StudentDataset([shards], DatasetOptions(input_size=model.input_size, mode="validation"))
    training_images = Subset(images, [0, 1, 2, 3])  # frame 300, the last record, left out
    assert images.record(4).frame == 300
    again = refit_embedding_head(loaded, training_images, 1e-3, device=torch.device("cpu"))
    # the checkpoint holds the solution: solving again on the same features moves nothing
    assert again.l2_before == pytest.approx(report.l2_after, rel=1e-3, abs=1e-6)
    assert again.l2_after == pytest.approx(report.l2_after, rel=1e-3, abs=1e-6)


def test_a_training_set_without_teacher_embeddings_is_a_clear_error(tmp_path, pets_dir):
    shards = write_pets_shard_dir(tmp_path / "shards", pets_dir, frames=(), negative_frames=(300,))
    config = small_centernet()
    images = StudentDataset([shards], DatasetOptions(input_size=config.input_size, mode="validation"))
    model = build_student(config, warn_if_random_backbone=False)
    with pytest.raises(RefitError, match="nothing to refit"):
        refit_embedding_head(model, images, 0.03, device=torch.device("cpu"))
    assert np.isfinite(model.embedding_head.output.weight.detach().numpy()).all()
