"""Checkpoints (weights-only round trip, refusals, atomic writes, retention) and the LR schedule."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from student.checkpoint import (
    CheckpointError,
    CheckpointKeeper,
    TrainingCheckpoint,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from student.schedule import CosineWarmup, cosine_warmup_scheduler

MODEL_CONFIG = {
    "backbone": "resnet18_fpn",
    "embedding_dim": 64,
    "anchor_scales": (1.0, 2.0 ** (1 / 3)),
    "score_thresh": 0.05,
}
TEACHER = {
    "architecture": "osnet_x0_25",
    "weights_sha256": "ab" * 32,
    "dim": 512,
    "mean": [0.485, 0.456, 0.406],
}
SOURCES = [
    {"directory": "/data/shards/pets", "teacher_id": "t-1", "dataset_name": "pets09", "identities": 19}
]


def _trained_parts(steps: int = 3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = cosine_warmup_scheduler(optimizer, total_steps=20, warmup_steps=5)
    for _ in range(steps):
        loss = model(torch.randn(2, 3, 8, 8)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def _checkpoint(step: int = 3, model_config=None, **overrides) -> TrainingCheckpoint:
    model, optimizer, scheduler = _trained_parts()
    values = dict(
        step=step,
        model_state=model.state_dict(),
        model_config=MODEL_CONFIG if model_config is None else model_config,
        optimizer_state=optimizer.state_dict(),
        scheduler_state=scheduler.state_dict(),
        criterion_state=nn.Linear(4, 3).state_dict(),
        config={"model": dict(MODEL_CONFIG), "train": {"batch_size": 4, "lr": 0.01}},
        teacher_fingerprint=TEACHER,
        teacher_id="t-1",
        shard_sources=SOURCES,
        rng_state=capture_rng_state(),
        extra={"epoch": 1, "draws_in_epoch": 12},
    )
    values.update(overrides)
    return TrainingCheckpoint(**values)


def test_round_trip_loads_weights_only_and_restores_training_state(tmp_path):
    model, optimizer, scheduler = _trained_parts()
    rng_state = capture_rng_state()
    expected_draws = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint = _checkpoint(
        model_state=model.state_dict(),
        optimizer_state=optimizer.state_dict(),
        scheduler_state=scheduler.state_dict(),
        rng_state=rng_state,
    )
    path = save_checkpoint(tmp_path / "run" / "step_000003.pt", checkpoint)

    raw = torch.load(path, weights_only=True)  # the contract: no pickled code needed
    assert raw["kind"] == "tdt-student-checkpoint" and raw["step"] == 3

    loaded = load_checkpoint(path, expected_config=MODEL_CONFIG)
    assert loaded.step == 3 and loaded.teacher_id == "t-1"
    assert loaded.teacher_fingerprint == TEACHER and list(loaded.shard_sources) == SOURCES
    assert loaded.config["train"] == {"batch_size": 4, "lr": 0.01} and loaded.extra["epoch"] == 1
    assert loaded.criterion_state["weight"].shape == (3, 4)

    fresh_model, fresh_optimizer, fresh_scheduler = _trained_parts(steps=0)
    fresh_model.load_state_dict(loaded.model_state)
    fresh_optimizer.load_state_dict(loaded.optimizer_state)
    fresh_scheduler.load_state_dict(loaded.scheduler_state)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(fresh_model.state_dict()[name], tensor)
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert fresh_scheduler.last_epoch == scheduler.last_epoch

    torch.rand(5), np.random.rand(5), random.random()  # move every generator on
    restore_rng_state(loaded.rng_state)
    torch.testing.assert_close(torch.rand(3), expected_draws[0])
    np.testing.assert_array_equal(np.random.rand(3), expected_draws[1])
    assert random.random() == expected_draws[2]


def test_other_architecture_is_refused_naming_file_and_keys(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", _checkpoint())
    other = {**MODEL_CONFIG, "backbone": "mobilenet_v2_fpn", "embedding_dim": 128}
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, expected_config=other)
    message = str(caught.value)
    assert str(path) in message and "backbone" in message and "embedding_dim" in message
    assert "anchor_scales" not in message, "a tuple saved and a list expected are the same value"
    inference_only = {**MODEL_CONFIG, "score_thresh": 0.3, "anchor_scales": [1.0, 2.0 ** (1 / 3)]}
    assert load_checkpoint(path, expected_config=inference_only).step == 3
    with pytest.raises(CheckpointError, match="score_thresh"):
        load_checkpoint(path, expected_config=inference_only, ignore_keys=())
    with pytest.raises(CheckpointError, match="teacher"):
        load_checkpoint(path, expected_teacher_id="t-2")


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "foreign_pickle", "plain_state_dict"])
def test_unusable_files_are_refused_naming_the_file(tmp_path, damage):
    path = save_checkpoint(tmp_path / "c.pt", _checkpoint())
    if damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("step: 3\nmodel: resnet\n")
    elif damage == "foreign_pickle":
        # a class: a weights-only load must refuse to import it
        path.write_bytes(pickle.dumps(random.Random, protocol=2))
    else:
        torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(CheckpointError, match="c.pt"):
        load_checkpoint(path)


def test_training_state_travels_in_typed_fields(tmp_path):
    mean = torch.linspace(-1, 1, 8)
    scaler_state = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}
    checkpoint = _checkpoint(teacher_mean_embedding=mean, grad_scaler_state=scaler_state)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "typed.pt", checkpoint))
    torch.testing.assert_close(loaded.teacher_mean_embedding, mean)
    assert loaded.grad_scaler_state == scaler_state
    assert loaded.criterion_state["weight"].shape == (3, 4)
    assert dict(loaded.extra) == {"epoch": 1, "draws_in_epoch": 12}


def test_checkpoints_of_the_older_layout_still_load(tmp_path):
    """Before the typed fields, training state travelled in ``extra`` and model configs had no family."""
    criterion_state = nn.Linear(4, 3).state_dict()
    mean = torch.ones(8)
    older = _checkpoint(
        criterion_state=None,
        extra={"criterion_state": criterion_state, "teacher_mean_embedding": mean, "train_images": 5},
    )
    assert "family" not in older.model_config and "family" not in older.config["model"]
    path = save_checkpoint(tmp_path / "older.pt", older)
    loaded = load_checkpoint(path, expected_config={**MODEL_CONFIG, "family": "retinanet"})
    torch.testing.assert_close(loaded.criterion_state["weight"], criterion_state["weight"])
    torch.testing.assert_close(loaded.teacher_mean_embedding, mean)
    assert dict(loaded.extra) == {"train_images": 5}
    assert loaded.model_config["family"] == loaded.config["model"]["family"] == "retinanet"
    # trained before the key existed, so with the sparse head's statistics of that time; a resumed
    # run keeps them
    assert loaded.model_config["embedding_norm_statistics"] == "assigned"
    assert loaded.config["model"]["embedding_norm_statistics"] == "assigned"
    with pytest.raises(CheckpointError, match="family: checkpoint 'retinanet', expected 'anchor_free'"):
        load_checkpoint(path, expected_config={**MODEL_CONFIG, "family": "anchor_free"})


def test_saves_are_atomic_and_leave_no_temporary_files(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "model.pt", _checkpoint(step=1))
    good = path.read_bytes()

    def crash_midway(obj, stream, *args, **kwargs):
        stream.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _checkpoint(step=2))
    monkeypatch.undo()
    assert path.read_bytes() == good and load_checkpoint(path).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]

    with pytest.raises(CheckpointError, match=r"extra\.mean.*ndarray"):
        save_checkpoint(tmp_path / "bad.pt", _checkpoint(extra={"mean": np.zeros(3)}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_keeper_keeps_the_last_k_and_points_last_at_the_newest(tmp_path):
    keeper = CheckpointKeeper(tmp_path / "run", keep_last=2)
    base = _checkpoint()
    for step in (100, 200, 300, 999_999, 1_000_000):
        keeper.save(TrainingCheckpoint(**{**base.__dict__, "step": step}))
    names = sorted(p.name for p in keeper.directory.iterdir())
    assert names == ["last.pt", "step_1000000.pt", "step_999999.pt"]
    assert load_checkpoint(keeper.last_path).step == 1_000_000
    assert latest_checkpoint(keeper.directory) == keeper.last_path
    keeper.last_path.unlink()
    assert latest_checkpoint(keeper.directory).name == "step_1000000.pt"
    assert latest_checkpoint(tmp_path / "empty") is None


# ---- schedule ------------------------------------------------------------------------------------
def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=lr)


def _lrs(optimizer, scheduler, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_is_linear_and_cosine_reaches_the_final_value():
    optimizer = _optimizer(0.1)
    scheduler = cosine_warmup_scheduler(optimizer, 100, 10, warmup_start_factor=0.0, final_factor=0.05)
    lrs = _lrs(optimizer, scheduler, 120)
    np.testing.assert_allclose(lrs[:11], [0.1 * step / 10 for step in range(11)], rtol=1e-12, atol=1e-15)
    assert lrs[10] == pytest.approx(0.1)
    assert lrs[55] == pytest.approx(0.1 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert all(a >= b for a, b in zip(lrs[10:100], lrs[11:101], strict=True)), "cosine must not rise"
    assert lrs[100] == pytest.approx(0.005) and lrs[119] == pytest.approx(0.005)


def test_scheduler_resumes_from_its_state_dict():
    optimizer = _optimizer()
    scheduler = cosine_warmup_scheduler(optimizer, 50, 5)
    _lrs(optimizer, scheduler, 17)
    saved_scheduler, saved_optimizer = scheduler.state_dict(), optimizer.state_dict()
    expected = _lrs(optimizer, scheduler, 20)

    resumed_optimizer = _optimizer()
    resumed = cosine_warmup_scheduler(resumed_optimizer, 50, 5)
    resumed_optimizer.load_state_dict(saved_optimizer)
    resumed.load_state_dict(saved_scheduler)
    assert _lrs(resumed_optimizer, resumed, 20) == expected


def test_schedule_rejects_warmup_longer_than_training():
    with pytest.raises(ValueError, match="warmup_steps"):
        CosineWarmup(total_steps=10, warmup_steps=11)
    assert CosineWarmup(total_steps=10, warmup_steps=10)(10) == pytest.approx(0.01)
