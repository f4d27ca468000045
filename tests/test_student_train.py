"""student.train / student.engine on real PETS09 frames: recipes, record selection, the loop,
checkpoints, exact resume, architecture checks, student.load and the CLI.

Training runs here use one torch thread: on shared CI cores OpenMP's spin-waiting
makes two threads several times slower whenever another process holds a core.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from student_fixtures import (
    BUSY_PETS_FRAMES,
    TINY_MODEL,
    distill_real_pets_frames,
    pets_records,
    write_pets_shard_dir,
    write_shard_dir,
)

import student
from student import engine
from student.api import load_student
from student.augment import AugmentConfig
from student.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from student.config import ConfigError, LossConfig, ModelConfig
from student.data import StudentDataset
from student.engine import cpu_has_native_bfloat16, train
from student.evaluate import evaluate_checkpoint
from student.recipe import (
    CONFIGS_DIR,
    DataConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    load_train_config,
    recipe_differences,
    resolve_config_path,
)
from student.selection import DrawStream, select_images
from student.sources import ShardSource
from student.train import build_parser, main, parse_shard_argument, recipe_from_arguments

# several tests train and validate on the same few frames on purpose
pytestmark = pytest.mark.filterwarnings("ignore:.*validation images are also training images:UserWarning")
REPO = Path(__file__).resolve().parents[1]
PETS_DISTILL_COMMAND = "python -m pipeline.distill --dataset pets09-s2l1-half1 --teacher osnet_x0_25"


@pytest.fixture(scope="module")
def pets_shards(pets_dir: Path, tmp_path_factory) -> Path:
    """Frames 133, 150, 200, 250 (random 16-d embeddings) and negative frame 300."""
    return write_pets_shard_dir(tmp_path_factory.mktemp("pets_shards"), pets_dir)


def tiny_config(shards: Path, out_dir: Path, backbone_weights: Path, **optim_changes) -> TrainConfig:
    source = ShardSource(directory=str(shards))
    return TrainConfig(
        model=TINY_MODEL,
        data=DataConfig(train=(source,), validation=(source,)),
        augment=AugmentConfig(min_scale=0.8, max_scale=1.25),
        optim=OptimConfig(
            **{"learning_rate": 0.01, "warmup_steps": 2, "batch_size": 2, "max_steps": 4, **optim_changes}
        ),
        run=RunConfig(
            out_dir=str(out_dir),
            backbone_weights=str(backbone_weights),
            checkpoint_every=2,
            log_every=1,
            tensorboard=False,
            threads=1,
        ),
    )


def rerun_config(config: TrainConfig, out_dir: Path, **run_changes) -> TrainConfig:
    """``config`` writing to ``out_dir``, without TensorBoard or the final evaluation."""
    run = dataclasses.replace(
        config.run, out_dir=str(out_dir), tensorboard=False, evaluate_at_end=False, **run_changes
    )
    return dataclasses.replace(config, run=run)


# ---- recipes ---------------------------------------------------------------------------------
def test_every_shipped_recipe_loads_strictly_and_the_twins_differ_only_where_they_should():
    recipes = {path.stem: load_train_config(path) for path in sorted(CONFIGS_DIR.glob("*.yaml"))}
    assert {"pets09", "pets09-det", "pets09-ce", "paper", "tiny"} <= set(recipes)
    pets = recipes["pets09"]
    assert pets.model.backbone == "mobilenet_v2_fpn" and pets.model.embedding_dim > 0
    assert [source.frames for source in pets.data.train] == [(1, 300)]
    assert [source.frames for source in pets.data.validation] == [(301, 397)]
    assert pets.data.train[0].directory == str(Path.cwd() / "out" / "shards-pets")
    assert PETS_DISTILL_COMMAND in pets.data.train[0].distill_command
    assert pets.run.backbone_weights is not None
    assert pets.run.backbone_weights.endswith("weights/mobilenet_v2_imagenet_features.pt")
    paper = recipes["paper"]
    assert (paper.model.backbone, paper.model.input_size) == ("resnet34_fpn", (608, 1088))
    assert (paper.model.embedding_dim, paper.model.embedding_head) == (512, "per_anchor")

    def differing_keys(other: TrainConfig) -> set[str]:
        return {line.split(":")[0] for line in recipe_differences(pets.to_dict(), other.to_dict())}

    assert recipes["pets09-det"].model.embedding_dim == 0
    assert differing_keys(recipes["pets09-det"]) == {"model.embedding_dim", "model.embedding_head"}
    assert recipes["pets09-ce"].loss.embedding_loss == "ce"
    assert differing_keys(recipes["pets09-ce"]) == {"loss.embedding_loss"}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("model: {backbone: mobilenet_v2_fpn}\ndata: {train: [{directory: x}]}\noptim: {learnig_rate: 0.1}\n", "learnig_rate"),
        ("model: {backbone: vgg16}\ndata: {train: [{directory: x}]}\n", "vgg16"),
        ("model: {}\ndata: {train: [{directory: x, frames: [5]}]}\n", "frames"),
        ("model: {}\ndata: {train: [{directory: x}]}\naugment: {min_scale: 0}\n", "min_scale"),
        ("model: {}\ndata: {train: [{directory: x}]}\nrun: {cpu_precision: bf16}\n", "cpu_precision"),
        ("model: {}\n", "data"),
        ("model: {}\nmodel: {}\ndata: {train: [{directory: x}]}\n", "duplicate key 'model'"),
    ],
)  # fmt: skip
def test_unknown_keys_and_bad_values_are_refused_with_their_name(tmp_path, text, named):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named):
        load_train_config(path)


def test_recipe_paths_resolve_env_fallbacks_against_the_project_and_plain_paths_against_cwd(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TDT_SHARED_DATA", raising=False)
    assert resolve_config_path("out/shards-pets") == tmp_path / "out" / "shards-pets"
    fallback = resolve_config_path("${TDT_SHARED_DATA:-../shared/data}/weights/w.pt")
    assert fallback == REPO.parent / "shared" / "data" / "weights" / "w.pt"
    monkeypatch.setenv("TDT_SHARED_DATA", "elsewhere")
    assert resolve_config_path("${TDT_SHARED_DATA:-../shared/data}/w.pt") == tmp_path / "elsewhere" / "w.pt"
    with pytest.raises(ConfigError, match="TDT_UNSET_VARIABLE"):
        resolve_config_path("${TDT_UNSET_VARIABLE}/w.pt")


def test_command_line_options_override_the_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(
        [
            "--config", str(CONFIGS_DIR / "pets09.yaml"), "--shards", "a", "b:3", "--val-shards", "c",
            "--train-frames", "1", "50", "--val-frames", "51", "60", "--dataset-root", "images",
            "--max-steps", "7", "--out", "run", "--backbone-weights", "w.pt", "--device", "cpu", "--seed", "3",
        ]
    )  # fmt: skip
    config, resume = recipe_from_arguments(args)
    assert resume is None
    assert [(s.directory, s.weight, s.frames) for s in config.data.train] == [
        (str(tmp_path / "a"), 1.0, (1, 50)),
        (str(tmp_path / "b"), 3.0, (1, 50)),
    ]
    assert [(s.directory, s.frames) for s in config.data.validation] == [(str(tmp_path / "c"), (51, 60))]
    assert {s.dataset_root for s in config.data.train + config.data.validation} == {str(tmp_path / "images")}
    assert (config.optim.max_steps, config.run.seed, config.run.device) == (7, 3, "cpu")
    assert (config.run.out_dir, config.run.backbone_weights) == (
        str(tmp_path / "run"),
        str(tmp_path / "w.pt"),
    )
    assert parse_shard_argument("C:/data/shards").weight == 1.0
    with pytest.raises(ConfigError, match="weight"):
        parse_shard_argument("shards:-1")


def test_set_overrides_one_recipe_key_with_a_yaml_value_and_refuses_unknown_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = str(CONFIGS_DIR / "pets09.yaml")
    args = build_parser().parse_args(
        ["--config", recipe, "--set", "model.embedding_head=per_anchor", "--set", "model.embedding_dim=512",
         "--set", "loss.embedding_loss=l2+ce", "--set", "optim.learning_rate=1e-3", "--out", "run"]
    )  # fmt: skip
    config, _ = recipe_from_arguments(args)
    assert (config.model.embedding_head, config.model.embedding_dim) == ("per_anchor", 512)
    assert (config.loss.embedding_loss, config.optim.learning_rate) == ("l2+ce", 1e-3)
    unchanged, _ = recipe_from_arguments(build_parser().parse_args(["--config", recipe, "--out", "run"]))
    assert (
        dataclasses.replace(
            config,
            model=unchanged.model,
            loss=unchanged.loss,
            optim=dataclasses.replace(config.optim, learning_rate=unchanged.optim.learning_rate),
        )
        == unchanged
    )
    for override, named in [
        ("model.embeding_dim=512", "embeding_dim"),  # typo in a key
        ("modle.embedding_dim=512", "modle"),  # typo in a section
        ("model.embedding_dim=many", "embedding_dim"),  # wrong type
        ("model.embedding_dim", "SECTION.KEY=VALUE"),  # no value
        ("model.backbone.depth=3", "model.backbone is not a section"),
        ("model.embedding_dim=!!python/object:os.system 1", "not valid YAML"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(named)):
            recipe_from_arguments(build_parser().parse_args(["--config", recipe, "--set", override]))


# ---- record selection and the draw stream ----------------------------------------------------
def test_frame_ranges_select_records_and_draws_cover_them_deterministically(pets_shards):
    source = ShardSource(directory=str(pets_shards), frames=(140, 260))
    dataset = StudentDataset([source], _options())
    selection, mean = select_images(dataset, [source], embedding_dim=8)
    assert [dataset.record(i).frame for i in selection.all_indices()] == [150, 200, 250]
    assert mean is not None and mean.shape == (8,)
    stream = DrawStream(selection, seed=5)
    first_epoch = [stream.key_at(position) for position in range(3)]
    assert sorted(key.index for key in first_epoch) == sorted(selection.all_indices().tolist())
    assert [key.epoch for key in first_epoch] == [0, 0, 0]
    assert stream.key_at(3).epoch == 1
    assert [DrawStream(selection, seed=5).key_at(p) for p in range(6)] == [stream.key_at(p) for p in range(6)]
    resumed = iter(DrawStream(selection, seed=5, start=4))
    assert [next(resumed) for _ in range(2)] == [stream.key_at(4), stream.key_at(5)]
    ranks = [DrawStream(selection, seed=5, rank=rank, world_size=2) for rank in (0, 1)]
    interleaved = [ranks[p % 2].key_at(p // 2) for p in range(6)]
    assert interleaved == [stream.key_at(p) for p in range(6)]
    with pytest.raises(ConfigError, match="select no images"):
        empty = ShardSource(directory=str(pets_shards), frames=(1000, 2000))
        select_images(dataset, [empty])


def test_mixing_weights_set_each_sources_share_of_draws(pets_dir, tmp_path):
    first = write_pets_shard_dir(tmp_path / "first", pets_dir)
    second = write_pets_shard_dir(tmp_path / "second", pets_dir)
    sources = [ShardSource(str(first), weight=3.0), ShardSource(str(second), weight=1.0)]
    dataset = StudentDataset(sources, _options())
    selection, _ = select_images(dataset, sources)
    stream = DrawStream(selection, seed=0)
    draws = np.array([stream.key_at(position).index for position in range(4000)])
    share_of_first = np.mean(draws < dataset.source_sizes[0])
    assert share_of_first == pytest.approx(0.75, abs=0.03)


def test_shards_of_different_teachers_are_refused_before_training(pets_dir, tmp_path, capsys):
    records = pets_records(pets_dir)
    write_shard_dir(tmp_path / "a", records, dataset_root=pets_dir, teacher_id="teacher-a")
    write_shard_dir(tmp_path / "b", records, dataset_root=pets_dir, teacher_id="teacher-b")
    code = main(
        ["--config", str(CONFIGS_DIR / "tiny.yaml"), "--shards", str(tmp_path / "a"), str(tmp_path / "b"),
         "--val-shards", str(tmp_path / "a"), "--out", str(tmp_path / "run"), "--quiet"]
    )  # fmt: skip
    assert code == 2
    assert "different teachers" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()


# ---- the loop, checkpoints, resume -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(pets_shards, mobilenet_v2_features, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("tiny_run")
    config = tiny_config(pets_shards, out_dir, mobilenet_v2_features)
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, tensorboard=True))
    return config, train(config, progress=False)


def test_training_writes_checkpoints_logs_and_tensorboard(tiny_run):
    config, outcome = tiny_run
    out_dir = outcome.out_dir
    assert (outcome.start_step, outcome.final_step, len(outcome.step_losses)) == (0, 4, 4)
    assert all(np.isfinite(outcome.step_losses))
    assert {path.name for path in out_dir.glob("*.pt")} == {"step_000002.pt", "step_000004.pt", "last.pt"}
    with open(out_dir / "train_log.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4]
    assert {"loss", "classification", "box_regression", "embedding_l2", "grad_norm", "learning_rate"} <= set(
        rows[0]
    )
    assert float(rows[0]["loss"]) == pytest.approx(outcome.step_losses[0], rel=1e-5)
    assert list((out_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert load_train_config(out_dir / "config.yaml") == config
    checkpoint = load_checkpoint(out_dir / "last.pt", expected_config=TINY_MODEL)
    assert checkpoint.step == 4 and checkpoint.teacher_id == "test-teacher-0"
    assert checkpoint.teacher_fingerprint["id"] == "test-teacher-0"
    assert checkpoint.shard_sources[0]["images"] == len(BUSY_PETS_FRAMES) + 1
    assert TrainConfig.from_dict(checkpoint.config) == config
    assert checkpoint.rng_state is not None and checkpoint.optimizer_state is not None
    assert checkpoint.teacher_mean_embedding.shape == (TINY_MODEL.embedding_dim,)
    assert checkpoint.criterion_state is not None and "criterion_state" not in checkpoint.extra
    # run.evaluate_at_end is the library's to honour, not only the command line's
    assert outcome.evaluation is not None and outcome.evaluation.images == len(BUSY_PETS_FRAMES) + 1
    assert json.loads((out_dir / "evaluation.json").read_text())["settings"]["step"] == 4


def test_resume_continues_with_the_same_losses_as_an_uninterrupted_run(tiny_run, tmp_path):
    config, uninterrupted = tiny_run
    resumed_config = dataclasses.replace(
        config,
        run=dataclasses.replace(config.run, out_dir=str(tmp_path), tensorboard=False, evaluate_at_end=False),
    )
    resumed = train(resumed_config, resume=uninterrupted.out_dir / "step_000002.pt", progress=False)
    assert resumed.start_step == 2
    assert resumed.evaluation is None and not (tmp_path / "evaluation.json").exists()
    assert resumed.step_losses == uninterrupted.step_losses[2:]
    final_a = load_checkpoint(uninterrupted.out_dir / "last.pt").model_state
    final_b = load_checkpoint(tmp_path / "last.pt").model_state
    assert all(torch.equal(final_a[key], final_b[key]) for key in final_a)


def test_a_checkpoint_from_before_the_newest_recipe_keys_resumes_as_it_was_trained(tiny_run, tmp_path):
    config, uninterrupted = tiny_run
    saved = load_checkpoint(uninterrupted.out_dir / "step_000002.pt")
    recipe = {section: dict(values) for section, values in saved.config.items()}
    for section, key in (
        ("run", "cpu_precision"),
        ("optim", "embedding_refit_ridge"),
        ("model", "embedding_pooling"),
    ):
        del recipe[section][key]
    model_config = {key: value for key, value in saved.model_config.items() if key != "embedding_pooling"}
    older = save_checkpoint(
        tmp_path / "older.pt", dataclasses.replace(saved, config=recipe, model_config=model_config)
    )
    resumed = train(rerun_config(config, tmp_path / "resumed"), resume=older, progress=False)
    assert resumed.step_losses == uninterrupted.step_losses[2:]


def test_resuming_with_another_architecture_or_recipe_is_a_clear_error(tiny_run, tmp_path):
    config, outcome = tiny_run
    checkpoint = outcome.out_dir / "step_000002.pt"
    other_model = dataclasses.replace(config, model=dataclasses.replace(TINY_MODEL, embedding_dim=8))
    with pytest.raises(CheckpointError, match="embedding_dim"):
        train(other_model, resume=checkpoint, progress=False)
    other_recipe = dataclasses.replace(config, optim=dataclasses.replace(config.optim, learning_rate=0.5))
    with pytest.raises(CheckpointError, match="optim.learning_rate"):
        train(other_recipe, resume=checkpoint, progress=False)
    with pytest.raises(CheckpointError, match="head_width"):
        load_student(checkpoint, expected_config=dataclasses.replace(TINY_MODEL, head_width=64))


@pytest.mark.skipif(
    not cpu_has_native_bfloat16(), reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)"
)
def test_cpu_precision_bfloat16_trains_under_autocast_and_keeps_float32_weights(tiny_run, tmp_path):
    config, float32_run = tiny_run
    bfloat16_run = train(rerun_config(config, tmp_path, cpu_precision="bfloat16"), progress=False)
    assert all(np.isfinite(bfloat16_run.step_losses))
    assert (float32_run.precision, bfloat16_run.precision) == ("float32", "bfloat16 autocast")
    # the same draws and initial weights: close losses, yet not equal, or autocast never engaged
    assert bfloat16_run.step_losses[0] == pytest.approx(float32_run.step_losses[0], rel=0.05)
    assert bfloat16_run.step_losses[0] != float32_run.step_losses[0]
    state = load_checkpoint(tmp_path / "last.pt").model_state
    assert {tensor.dtype for tensor in state.values() if tensor.is_floating_point()} == {torch.float32}


def test_cpu_bfloat16_is_refused_where_the_cpu_would_emulate_it_and_auto_falls_back(
    tiny_run, tmp_path, monkeypatch
):
    config, float32_run = tiny_run
    monkeypatch.setattr(engine, "cpu_has_native_bfloat16", lambda: False)
    refused = rerun_config(config, tmp_path / "refused", cpu_precision="bfloat16")
    with pytest.raises(ConfigError, match="run.cpu_precision bfloat16: this CPU has no native bfloat16"):
        train(refused, progress=False)
    assert not list((tmp_path / "refused").glob("*.pt"))
    # auto falls back to float32: the very losses of the float32 run
    fallback = train(rerun_config(config, tmp_path / "auto", cpu_precision="auto"), progress=False)
    assert fallback.step_losses == float32_run.step_losses


def test_resume_may_extend_the_schedule(tiny_run, tmp_path, capsys):
    config, outcome = tiny_run
    code = main(["--resume", str(outcome.out_dir / "last.pt"), "--out", str(tmp_path), "--max-steps", "5",
                 "--no-evaluate", "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert load_checkpoint(tmp_path / "last.pt").step == 5


# ---- command line ----------------------------------------------------------------------------
def test_cli_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--config", "--resume", "--max-steps", "--out", "--shards", "DIR[:WEIGHT]",
                   "--backbone-weights", "--device", "--seed", "--dataset-root"):  # fmt: skip
        assert option in text


def test_no_argument_run_without_shards_exits_2_and_names_the_distill_command(tmp_path):
    # the default recipe reads out/shards-pets relative to the working directory
    result = subprocess.run(
        [sys.executable, "-m", "student.train"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "out" / "shards-pets") in result.stderr
    assert PETS_DISTILL_COMMAND in " ".join(result.stderr.split())


def test_cli_trains_the_tiny_recipe_and_evaluates_at_the_end(
    pets_shards, mobilenet_v2_features, tmp_path, capsys
):
    code = main(
        ["--config", str(CONFIGS_DIR / "tiny.yaml"), "--shards", str(pets_shards), "--val-shards", str(pets_shards),
         "--out", str(tmp_path), "--backbone-weights", str(mobilenet_v2_features), "--max-steps", "2",
         "--threads", "1", "--quiet"]
    )  # fmt: skip
    output = capsys.readouterr().out
    assert code == 0
    assert "AP@0.5" in output
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["images"] == len(BUSY_PETS_FRAMES) + 1
    assert report["settings"]["step"] == 2


# ---- learning on real data -------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_shards(pets_dir, osnet_x0_25_msmt17, tmp_path_factory) -> Path:
    """PETS frames 131-134 (7-8 people each) distilled by the real OSNet x0.25 teacher."""
    return distill_real_pets_frames(tmp_path_factory.mktemp("teacher_shards"), pets_dir, osnet_x0_25_msmt17)


@pytest.fixture(scope="module")
def overfitted(teacher_shards, mobilenet_v2_features, tmp_path_factory):
    source = ShardSource(directory=str(teacher_shards))
    model = ModelConfig(
        backbone="mobilenet_v2_fpn",
        trainable_backbone_stages=2,
        fpn_channels=64,
        head_width=64,
        head_depth=2,
        embedding_dim=64,
        embedding_head="per_location",
        embedding_head_width=64,
        input_height=192,
        input_width=256,
        # people are 20-45 px tall at this scale: anchors one octave smaller than the default
        anchor_base_sizes=(16.0, 32.0, 64.0, 128.0, 256.0),
    )
    config = TrainConfig(
        model=model,
        data=DataConfig(train=(source,), validation=(source,)),
        loss=LossConfig(),
        augment=AugmentConfig(min_scale=1.0, max_scale=1.0, photometric=False),
        optim=OptimConfig(
            optimizer="adamw", learning_rate=1e-3, warmup_steps=10, batch_size=2, max_steps=150
        ),
        run=RunConfig(
            out_dir=str(tmp_path_factory.mktemp("overfit")),
            backbone_weights=str(mobilenet_v2_features),
            checkpoint_every=150,
            log_every=10,
            tensorboard=False,
            threads=1,
        ),
    )
    torch.manual_seed(0)
    untrained = student.build_student(model, mobilenet_v2_features)
    initial_path = Path(config.run.out_dir) / "untrained.pt"
    _save_untrained(untrained, config, teacher_shards, initial_path)
    initial = evaluate_checkpoint(initial_path)
    outcome = train(config, progress=False)  # run.evaluate_at_end: evaluates last.pt on the validation source
    assert outcome.evaluation is not None
    return outcome, initial, outcome.evaluation


def test_overfitting_real_frames_lowers_the_loss_and_raises_ap_and_fidelity(overfitted):
    outcome, initial, final = overfitted
    losses = np.array(outcome.step_losses)
    assert losses[-10:].mean() < 0.25 * losses[:10].mean()
    assert initial.ap50 < 0.05
    assert final.ap50 > 0.6
    # An untrained head matches nothing (its scores sit at the 0.01 focal prior) and a
    # constant embedding would score centred cosine ~0 and nearest rate ~1/7 on these frames.
    assert initial.fidelity is None or initial.fidelity.nearest_rate < 0.4
    fidelity = final.fidelity
    assert fidelity is not None and fidelity.matched_detections >= 20
    assert fidelity.raw_cosine > 0.85
    assert fidelity.centred_cosine is not None and fidelity.centred_cosine > 0.5
    assert fidelity.nearest_rate is not None and fidelity.nearest_rate > 0.7


def test_student_load_round_trip_gives_a_working_detector(overfitted, pets_dir):
    outcome, _, _ = overfitted
    checkpoint = outcome.out_dir / "last.pt"
    detector = student.load(checkpoint)
    saved = load_checkpoint(checkpoint).model_state
    assert all(torch.equal(value, saved[key]) for key, value in detector.model.state_dict().items())
    assert detector.embedding_dim == 64
    frame = cv2.imread(str(pets_dir / "img1" / "000133.jpg"))
    found = detector.detect(frame)
    assert found.tlbr.dtype == np.float32 and found.tlbr.shape[1] == 4
    assert found.embedding is not None and found.embedding.shape == (len(found.tlbr), 64)
    np.testing.assert_allclose(np.linalg.norm(found.embedding, axis=1), 1.0, atol=1e-5)
    assert len(found.tlbr) >= 5  # frame 133 shows 8 people
    assert found.tlbr[:, 2].max() > 256  # boxes come back in original 768x576 pixels


# ---- helpers ---------------------------------------------------------------------------------
def _options():
    from student.data import DatasetOptions

    return DatasetOptions(input_size=TINY_MODEL.input_size, mode="validation")


def _save_untrained(model, config: TrainConfig, shards: Path, path: Path) -> None:
    from student.checkpoint import TrainingCheckpoint, save_checkpoint

    dataset = StudentDataset([shards], _options())
    save_checkpoint(
        path,
        TrainingCheckpoint(
            step=0,
            model_state=model.state_dict(),
            model_config=config.model.to_dict(),
            config=config.to_dict(),
            teacher_id=dataset.teacher_id,
        ),
    )


# ---- torchrun ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_and_rank_zero_writes(
    pets_shards: Path, mobilenet_v2_features: Path, tmp_path
):
    """The README's `torchrun --nproc-per-node N -m student.train` on CPU (gloo): two ranks."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "student.train"]
    command += [
        "--config",
        "configs/tiny.yaml",
        "--shards",
        str(pets_shards),
        "--val-shards",
        str(pets_shards),
    ]
    command += ["--backbone-weights", str(mobilenet_v2_features), "--out", str(out), "--max-steps", "2"]
    command += ["--threads", "1", "--quiet"]
    completed = subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert load_checkpoint(out / "last.pt").step == 2
    assert (out / "evaluation.json").is_file()
