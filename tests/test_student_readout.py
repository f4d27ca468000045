"""``python -m student.readout``: a box readout solved for a student trained without one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from student_fixtures import small_centernet, write_pets_shard_dir

from student.api import load_student
from student.augment import AugmentConfig
from student.checkpoint import load_checkpoint
from student.engine import train
from student.readout import main
from student.recipe import DataConfig, OptimConfig, RunConfig, TrainConfig
from student.sources import ShardSource

RIDGE = 1e-3


def recipe(shards: Path, out_dir: Path, **model_changes) -> TrainConfig:
    return TrainConfig(
        model=small_centernet(embedding_dim=16, **model_changes),
        data=DataConfig(train=(ShardSource(directory=str(shards), frames=(100, 250)),)),
        augment=AugmentConfig(min_scale=1.0, max_scale=1.0, photometric=False),
        optim=OptimConfig(optimizer="adamw", learning_rate=1e-3, batch_size=2, max_steps=3),
        run=RunConfig(out_dir=str(out_dir), checkpoint_every=3, tensorboard=False, threads=1, evaluate_at_end=False),
    )  # fmt: skip


@pytest.fixture(scope="module")
def centre_run(pets_dir: Path, tmp_path_factory) -> tuple[TrainConfig, Path]:
    root = tmp_path_factory.mktemp("readout")
    shards = write_pets_shard_dir(root / "shards", pets_dir)
    config = recipe(shards, root / "centre")
    train(config, progress=False)
    return config, root / "centre" / "last.pt"


def test_the_solved_readout_equals_training_with_the_option_and_keeps_every_trained_weight(
    centre_run, tmp_path, capsys
):
    config, trained = centre_run
    out = tmp_path / "box-readout.pt"
    assert main(["--checkpoint", str(trained), "--out", str(out), "--ridge", str(RIDGE), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "solved the embedding output layer by least squares on" in printed and str(out) in printed
    with_readout, checkpoint = load_student(out)
    assert bool(with_readout.box_readout.solved)
    assert checkpoint.config["model"]["embedding_pooling"] == "box"
    assert checkpoint.config["optim"]["embedding_refit_ridge"] == RIDGE
    assert checkpoint.config["model"]["box_readout_neck_maps"] == 3  # the default
    original = load_checkpoint(trained).model_state
    for key, tensor in original.items():
        torch.testing.assert_close(checkpoint.model_state[key], tensor, rtol=0, atol=0, msg=key)
    # the same recipe trained with the option from the start solves the same readout
    with_option = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, embedding_pooling="box", box_readout_neck_maps=3),
        optim=dataclasses.replace(config.optim, embedding_refit_ridge=RIDGE),
        run=dataclasses.replace(config.run, out_dir=str(tmp_path / "trained-with-box")),
    )
    train(with_option, progress=False)
    trained_state = load_checkpoint(tmp_path / "trained-with-box" / "last.pt").model_state
    readout_keys = [key for key in trained_state if key.startswith("box_readout.")]
    assert readout_keys
    for key in readout_keys:
        torch.testing.assert_close(
            checkpoint.model_state[key], trained_state[key], rtol=1e-4, atol=1e-5, msg=key
        )


def test_a_readout_is_solved_again_over_other_neck_maps(centre_run, tmp_path):
    """A checkpoint whose readout pools the stride-4 map alone takes one over all three maps:
    the old readout (another shape) is replaced, every trained weight kept."""
    _, trained = centre_run
    one_map = tmp_path / "one-map.pt"
    assert main(["--checkpoint", str(trained), "--out", str(one_map), "--neck-maps", "1", "--quiet"]) == 0
    three_maps = tmp_path / "three-maps.pt"
    assert main(["--checkpoint", str(one_map), "--out", str(three_maps), "--quiet"]) == 0
    narrow, _ = load_student(one_map)
    wide, checkpoint = load_student(three_maps)
    assert checkpoint.config["model"]["box_readout_neck_maps"] == 3
    assert wide.box_readout.output.in_features > narrow.box_readout.output.in_features
    for key, tensor in load_checkpoint(trained).model_state.items():
        torch.testing.assert_close(checkpoint.model_state[key], tensor, rtol=0, atol=0, msg=key)


def test_an_existing_out_is_never_overwritten(centre_run, tmp_path, capsys):
    _, trained = centre_run
    out = tmp_path / "taken.pt"
    out.write_bytes(b"keep me")
    assert main(["--checkpoint", str(trained), "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"


def test_a_student_without_an_embedding_head_cannot_take_a_readout(pets_dir, tmp_path, capsys):
    shards = write_pets_shard_dir(tmp_path / "shards", pets_dir)
    config = recipe(shards, tmp_path / "det")
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, embedding_dim=0))
    train(config, progress=False)
    out = tmp_path / "readout.pt"
    assert main(["--checkpoint", str(tmp_path / "det" / "last.pt"), "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "cannot take a box readout" in error and "embedding_dim > 0" in error
    assert not out.exists()


def test_missing_training_shards_are_named(centre_run, tmp_path, capsys):
    config, trained = centre_run
    moved = tmp_path / "shards-moved"
    Path(config.data.train[0].directory).rename(moved)
    try:
        assert main(["--checkpoint", str(trained), "--out", str(tmp_path / "r.pt"), "--quiet"]) == 2
    finally:
        moved.rename(config.data.train[0].directory)
    error = capsys.readouterr().err
    assert config.data.train[0].directory in error and "are not here" in error
