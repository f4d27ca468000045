"""student.evaluate: greedy matching, distillation fidelity on hand-made frames, AP and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from student_fixtures import BUSY_PETS_FRAMES, write_pets_shard_dir
from student_fixtures import TINY_MODEL as TINY_STUDENT

from student.checkpoint import TrainingCheckpoint, save_checkpoint
from student.config import ModelConfig
from student.data import DatasetOptions, StudentDataset
from student.evaluate import FidelityAccumulator, evaluate_model, greedy_matches, main
from student.families import build_student
from student.recipe import DataConfig, TrainConfig
from student.selection import select_images
from student.sources import ShardSource

TINY_MODEL = dataclasses.replace(TINY_STUDENT, score_thresh=0.0)
# three people side by side, and one more frame with a single person
FRAME_BOXES = np.array([[0, 0, 10, 30], [20, 0, 30, 30], [40, 0, 50, 30]], dtype=np.float64)


def unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


# ---- matching --------------------------------------------------------------------------------
def test_greedy_matching_is_one_to_one_in_score_order():
    ground_truth = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], dtype=np.float64)
    detections = np.array(
        [[0, 0, 10, 11], [0, 0, 10, 10], [100, 100, 110, 110], [50, 50, 60, 60]], dtype=np.float64
    )
    scores = np.array([0.5, 0.9, 0.8, 0.99])
    # the 0.9 detection takes box 0 first although the 0.5 one also overlaps it
    assert greedy_matches(detections, scores, ground_truth).tolist() == [-1, 0, 1, -1]
    shifted = detections + np.array([6, 0, 6, 0])  # IoU 4/16 < 0.5
    assert greedy_matches(shifted[:2], scores[:2], ground_truth).tolist() == [-1, -1]
    assert greedy_matches(np.zeros((0, 4)), np.zeros(0), ground_truth).tolist() == []


# ---- fidelity on hand-made frames ------------------------------------------------------------
def test_identical_embeddings_give_fidelity_one():
    rng = np.random.default_rng(0)
    teacher = unit(rng.random((3, 32)))  # non-negative, like OSNet
    accumulator = FidelityAccumulator(embedding_dim=8, teacher_mean=unit(teacher[:, :8]).mean(axis=0))
    student = unit(teacher[:, :8]) * 3.0  # scale does not matter
    accumulator.add_frame(FRAME_BOXES, np.array([0.9, 0.8, 0.7]), student, FRAME_BOXES, teacher)
    report = accumulator.report()
    assert report is not None and report.matched_detections == 3
    assert report.raw_cosine == pytest.approx(1.0)
    assert report.centred_cosine == pytest.approx(1.0)
    assert report.nearest_rate == pytest.approx(1.0)
    assert report.embedding_dim == 8


def test_nearest_rate_counts_detections_whose_own_teacher_is_closest():
    teacher = np.eye(4)[:3] * 0.8 + 0.2  # three distinct non-negative embeddings
    student = np.stack([teacher[0], teacher[2], teacher[2]])  # detection 1 looks like person 2
    accumulator = FidelityAccumulator(embedding_dim=4)
    accumulator.add_frame(FRAME_BOXES, np.array([0.9, 0.8, 0.7]), student, FRAME_BOXES, teacher)
    # a frame with one teacher embedding has no "nearest" question: counted in cosines only
    accumulator.add_frame(FRAME_BOXES[:1], np.array([0.9]), teacher[1:2], FRAME_BOXES[:1], teacher[:1])
    report = accumulator.report()
    assert report is not None
    assert (report.matched_detections, report.nearest_counted) == (4, 3)
    assert report.nearest_rate == pytest.approx(2 / 3)
    cosines = [
        1.0,
        float(unit(teacher[2]) @ unit(teacher[1])),
        1.0,
        float(unit(teacher[1]) @ unit(teacher[0])),
    ]
    assert report.raw_cosine == pytest.approx(np.mean(cosines))
    assert report.centred_cosine is None


def test_boxes_without_teacher_embedding_and_unmatched_detections_are_left_out():
    teacher = np.array([[1.0, 0.0], [np.nan, np.nan], [0.0, 1.0]])
    detections = np.array([[0, 0, 10, 30], [20, 0, 30, 30], [200, 0, 210, 30]], dtype=np.float64)
    student = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    accumulator = FidelityAccumulator(embedding_dim=2)
    accumulator.add_frame(detections, np.array([0.9, 0.8, 0.7]), student, FRAME_BOXES, teacher)
    report = accumulator.report()
    assert report is not None and report.matched_detections == 1 and report.raw_cosine == pytest.approx(1.0)
    empty = FidelityAccumulator(embedding_dim=2)
    empty.add_frame(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 2)), FRAME_BOXES, teacher)
    assert empty.report() is None


def test_a_constant_student_scores_high_raw_but_no_centred_cosine():
    # the trap DESIGN.md describes: OSNet features are non-negative
    rng = np.random.default_rng(1)
    teacher = unit(rng.random((200, 16)) ** 2)
    mean = unit(teacher).mean(axis=0)
    boxes = np.array([[i * 20, 0, i * 20 + 10, 30] for i in range(200)], dtype=np.float64)
    accumulator = FidelityAccumulator(embedding_dim=16, teacher_mean=mean)
    accumulator.add_frame(boxes, np.linspace(1, 0.5, 200), np.tile(mean, (200, 1)), boxes, teacher)
    report = accumulator.report()
    assert report is not None
    assert report.raw_cosine > 0.7
    assert abs(report.centred_cosine) < 0.15
    assert report.nearest_rate < 0.1


# ---- evaluation of models and checkpoints ----------------------------------------------------
@pytest.fixture(scope="module")
def pets_shards(pets_dir: Path, tmp_path_factory) -> Path:
    return write_pets_shard_dir(tmp_path_factory.mktemp("pets_shards"), pets_dir)


def test_detection_only_students_report_ap_only(pets_shards):
    torch.manual_seed(0)
    model = build_student(
        ModelConfig(**{**TINY_MODEL.to_dict(), "embedding_dim": 0}), warn_if_random_backbone=False
    )
    dataset = StudentDataset(
        [pets_shards], DatasetOptions(input_size=TINY_MODEL.input_size, mode="validation")
    )
    report = evaluate_model(model, dataset, range(len(dataset)))
    assert report.fidelity is None and "detection-only" in report.fidelity_note
    assert report.images == len(BUSY_PETS_FRAMES) + 1
    assert 0.0 <= report.ap50 <= 1.0
    assert report.detections > 0  # score threshold 0: every image yields its top boxes


def _checkpoint(path: Path, shards: Path, teacher_id: str) -> Path:
    torch.manual_seed(0)
    model = build_student(TINY_MODEL, warn_if_random_backbone=False)
    validation = ShardSource(directory=str(shards), frames=(140, 260))
    config = TrainConfig(model=TINY_MODEL, data=DataConfig(train=(validation,), validation=(validation,)))
    dataset = StudentDataset([shards], DatasetOptions(input_size=TINY_MODEL.input_size, mode="validation"))
    _, mean = select_images(dataset, [validation], TINY_MODEL.embedding_dim)
    return save_checkpoint(
        path,
        TrainingCheckpoint(
            step=7,
            model_state=model.state_dict(),
            model_config=TINY_MODEL.to_dict(),
            config=config.to_dict(),
            teacher_id=teacher_id,
            teacher_mean_embedding=torch.from_numpy(mean),
        ),
    )


def test_evaluate_cli_uses_the_checkpoints_validation_selection_or_the_given_one(
    pets_shards, tmp_path, capsys
):
    checkpoint = _checkpoint(tmp_path / "student.pt", pets_shards, "test-teacher-0")
    assert main(["--checkpoint", str(checkpoint), "--quiet"]) == 0
    report = json.loads((tmp_path / "evaluation_student.json").read_text())
    assert report["images"] == 3  # frames 150, 200, 250 of the recipe's validation range
    assert report["settings"]["step"] == 7
    assert set(report) >= {"ap50", "ground_truth_boxes", "detections", "fidelity", "settings"}
    if report["fidelity"] is not None:
        assert report["fidelity"]["centred_cosine"] is not None
    assert "AP@0.5" in capsys.readouterr().out
    out = tmp_path / "other.json"
    code = main(["--checkpoint", str(checkpoint), "--shards", str(pets_shards), "--frames", "100", "140",
                 "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    assert json.loads(out.read_text())["images"] == 1  # frame 133


def test_evaluate_refuses_shards_of_another_teacher(pets_shards, tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path / "student.pt", pets_shards, "another-teacher")
    assert main(["--checkpoint", str(checkpoint), "--quiet"]) == 2
    assert "another-teacher" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "absent.pt")]) == 2
