"""Frame sources, sequence reading, timing and rendering of the tracker (plumbing, real frames).

Detectors here are tiny randomly initialised students (fine for plumbing, never for numbers);
the teacher is a numpy stand-in where only the call contract matters.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tracker.association import FrameTracks
from tracker.evaluation import MotBenchmark
from tracker.render import TrackPainter, TrackVideoWriter, track_colour
from tracker.sequence import FrameRange, InputKind, SequenceError, open_sequence
from tracker.sources import (
    FrameDetections,
    OneStageDetection,
    OracleDetection,
    OraclePerturbation,
    PublicDetection,
    SourceError,
    TwoStageDetection,
    embed_with_teacher,
    load_teacher,
    source_frames,
    visible_mask,
)
from tracker.timing import FrameTiming, TimingSummary

REPO_ROOT = Path(__file__).resolve().parents[1]


class StubTeacher:
    """Embeds a crop as a fixed function of its box: enough to follow the data through."""

    name = "stub-teacher"
    dim = 8

    def __init__(self, zero_rows: tuple[int, ...] = ()) -> None:
        self.calls: list[np.ndarray] = []
        self.zero_rows = zero_rows

    def embed_crops(self, image_bgr: np.ndarray, boxes_tlbr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes = np.asarray(boxes_tlbr, dtype=np.float64)
        self.calls.append(boxes)
        height, width = image_bgr.shape[:2]
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= width).all()
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= height).all()
        embeddings = np.ones((len(boxes), self.dim), np.float32)
        embeddings[:, 0] = boxes[:, 0]
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        embeddings[list(self.zero_rows)] = 0.0
        return embeddings, np.linalg.norm(embeddings, axis=1)


@pytest.fixture(scope="module")
def one_torch_thread():
    # Plumbing only: one intra-op thread keeps these tiny models from waiting on busy cores.
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_detectors(one_torch_thread):
    """(one-stage 16-d, detection-only) random mobilenet students at 128x160, scores ~0.5."""
    torch = pytest.importorskip("torch")
    from student import Detector, ModelConfig, build_student

    detectors = []
    for dim in (16, 0):
        torch.manual_seed(0)
        config = ModelConfig(
            backbone="mobilenet_v2_fpn",
            input_height=128,
            input_width=160,
            embedding_dim=dim,
            fpn_channels=32,
            head_width=16,
            head_depth=1,
            embedding_head_width=16,
            detections_per_image=12,
        )
        model = build_student(config, warn_if_random_backbone=False)
        # A zero class bias makes a random head score about 0.5, so it "detects" things.
        torch.nn.init.zeros_(model.classification_head.predictor.bias)
        detectors.append(Detector(model))
    return tuple(detectors)


def pets_image(pets_dir: Path, frame: int = 100) -> np.ndarray:
    image = cv2.imread(str(pets_dir / "img1" / f"{frame:06d}.jpg"))
    assert image is not None
    return image


# ---- sequences ---------------------------------------------------------------------------------


def test_mot_sequence_frames_rate_and_mot15_ground_truth(pets_dir):
    sequence = open_sequence(pets_dir)
    assert sequence.kind is InputKind.MOT_SEQUENCE
    assert sequence.name == "PETS09-S2L1-half1"
    assert sequence.frame_rate == 7.0
    assert sequence.frame_numbers() == list(range(1, 398))
    assert sequence.frame_numbers(FrameRange(301, 397)) == list(range(301, 398))
    assert sequence.notes == ()
    frames = list(sequence.frames(FrameRange(3, 5)))
    assert [frame.number for frame in frames] == [3, 4, 5]
    assert frames[0].image.shape == (576, 768, 3) and frames[0].decode_seconds > 0
    ground_truth = sequence.read_ground_truth()
    assert ground_truth.benchmark is MotBenchmark.MOT15
    tlbr, identities = ground_truth.target_boxes(1)
    rows = ground_truth.rows[(ground_truth.rows[:, 0] == 1) & (ground_truth.rows[:, 6] != 0)]
    np.testing.assert_allclose(tlbr[:, :2], rows[:, 2:4])  # as written, no 1-based shift
    np.testing.assert_allclose(tlbr[:, 2:], rows[:, 2:4] + rows[:, 4:6])
    assert identities.tolist() == rows[:, 1].astype(int).tolist()
    assert sequence.public_detections_path == pets_dir / "det" / "det.txt"


def test_mot17_sequence_uses_frames_present_and_mot17_protocol(mot17_mini_dir):
    sequence = open_sequence(mot17_mini_dir / "MOT17-04-FRCNN")
    assert sequence.frame_numbers() == list(range(1, 9))
    assert len(sequence.notes) == 1 and "claims 1050 frames" in sequence.notes[0]
    ground_truth = sequence.read_ground_truth()
    assert ground_truth.benchmark is MotBenchmark.MOT17
    tlbr, _ = ground_truth.target_boxes(1)
    assert len(tlbr) == 42
    all_boxes, _, ignore = ground_truth.frame_boxes(1)
    assert len(all_boxes) - ignore.sum() == 42  # targets, plus distractors and mark-0 pedestrians as ignore
    rows = ground_truth.rows[ground_truth.rows[:, 0] == 1]
    ignorable = np.isin(rows[:, 7], [2, 7, 8, 12]) | ((rows[:, 6] == 0) & (rows[:, 7] == 1))
    assert ignore.sum() == ignorable.sum() > 0
    assert len(all_boxes) < len(rows), "cars and occluders are neither targets nor ignored"


def test_image_folder_numbering(tmp_path, pets_dir):
    named = tmp_path / "named"
    named.mkdir()
    for frame, name in ((5, "b.jpg"), (6, "a.jpg"), (7, "c.png")):
        cv2.imwrite(str(named / name), pets_image(pets_dir, frame))
    (named / "notes.txt").write_text("not an image")
    sequence = open_sequence(named)
    assert sequence.kind is InputKind.IMAGE_FOLDER and sequence.frame_rate == 30.0
    assert [(number, path.name) for number, path in sequence.frame_files] == [
        (1, "a.jpg"),
        (2, "b.jpg"),
        (3, "c.png"),
    ]
    numbered = tmp_path / "numbered"
    shutil.copytree(
        pets_dir / "img1", numbered, ignore=lambda _, names: [n for n in names if n > "000012.jpg"]
    )
    sequence = open_sequence(numbered, frame_rate=7)
    assert sequence.frame_numbers() == list(range(1, 13)) and sequence.frame_rate == 7


def write_video(path: Path, images: list[np.ndarray], frame_rate: float = 7.0) -> None:
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), frame_rate, (width, height))
    assert writer.isOpened()
    for image in images:
        writer.write(image)
    writer.release()


def test_video_frames_and_range(tmp_path, pets_dir):
    path = tmp_path / "clip.mp4"
    write_video(path, [pets_image(pets_dir, frame) for frame in range(1, 7)])
    sequence = open_sequence(path)
    assert sequence.kind is InputKind.VIDEO and sequence.name == "clip"
    assert sequence.frame_rate == pytest.approx(7.0)
    assert [frame.number for frame in sequence.frames(FrameRange(2, 4))] == [2, 3, 4]
    assert [frame.number for frame in sequence.frames()] == [1, 2, 3, 4, 5, 6]
    assert sequence.ground_truth_path is None


def test_bad_inputs_raise_sequence_errors(tmp_path):
    with pytest.raises(SequenceError, match="no such video file or folder"):
        open_sequence(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SequenceError, match="no images"):
        open_sequence(tmp_path / "empty")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(SequenceError, match="cv2 can open"):
        open_sequence(tmp_path / "junk.mp4")
    with pytest.raises(SequenceError, match="first <= last"):
        FrameRange(5, 4)
    escape = tmp_path / "escape"
    escape.mkdir()
    (escape / "seqinfo.ini").write_text("[Sequence]\nimDir=../elsewhere\n")
    with pytest.raises(SequenceError, match="outside the sequence"):
        open_sequence(escape)


# ---- detections and stages ---------------------------------------------------------------------


def test_frame_detections_convert_and_check_shapes():
    detections = FrameDetections(np.array([[1, 2, 3, 4]], np.float64), np.array([0.5]))
    assert detections.tlbr.dtype == np.float32 and detections.score.dtype == np.float32
    assert len(detections.select(np.array([False]))) == 0
    with pytest.raises(ValueError, match="1 boxes but 2 scores"):
        FrameDetections(np.zeros((1, 4)), np.zeros(2))
    with pytest.raises(ValueError, match="embedding must have shape"):
        FrameDetections(np.zeros((1, 4)), np.zeros(1), np.zeros((2, 3)))


def test_oracle_perturbation_is_seeded_per_frame():
    boxes = np.array([[100.0, 100.0, 140.0, 200.0]] * 200)
    perturbation = OraclePerturbation(jitter=0.1, drop_rate=0.3, seed=4)
    first = perturbation.apply(7, boxes)
    np.testing.assert_array_equal(first, perturbation.apply(7, boxes))
    assert not np.array_equal(first, OraclePerturbation(0.1, 0.3, seed=5).apply(7, boxes))
    assert 100 < len(first) < 180  # about 30% dropped
    assert ((first[:, 2:] - first[:, :2]) >= 1.0).all()
    assert (first[:, 1] - 100.0).std() == pytest.approx(10.0, rel=0.3)  # 0.1 x height 100
    np.testing.assert_array_equal(OraclePerturbation().apply(7, boxes), boxes)
    with pytest.raises(SourceError):
        OraclePerturbation(drop_rate=1.0)


def test_oracle_without_teacher_gives_ground_truth_boxes(pets_dir):
    sequence = open_sequence(pets_dir)
    ground_truth = sequence.read_ground_truth()
    stage = OracleDetection(ground_truth)
    frames = list(source_frames(sequence, stage, FrameRange(10, 12)))
    assert [frame.number for frame in frames] == [10, 11, 12]
    tlbr, _ = ground_truth.target_boxes(11)
    np.testing.assert_allclose(frames[1].detections.tlbr, tlbr, atol=1e-3)
    assert frames[1].detections.embedding is None
    assert (frames[1].detections.score == 1).all()
    assert frames[1].timing.model_seconds == 0 and frames[1].timing.teacher_seconds == 0
    assert stage.embedding_dim is None and "no embeddings" in stage.description


def test_oracle_with_teacher_embeds_clipped_crops_of_visible_boxes(pets_dir):
    ground_truth = open_sequence(pets_dir).read_ground_truth()
    teacher = StubTeacher()
    output = OracleDetection(ground_truth, teacher).process(11, pets_image(pets_dir, 11))
    assert output.tracked.embedding.shape == (len(output.tracked), StubTeacher.dim)
    assert len(teacher.calls) == 1 and len(teacher.calls[0]) == len(output.tracked)


def test_embed_with_teacher_drops_invisible_boxes_and_zero_embeddings():
    image = np.zeros((100, 200, 3), np.uint8)
    boxes = np.array(
        [
            [10, 10, 50, 90],  # inside
            [-30, 20, 20, 80],  # partly outside: kept, crop clipped, box unchanged
            [250, 10, 300, 90],  # entirely outside: no crop
            [60, 10, 100, 90],  # its embedding comes back all zero
        ],
        np.float32,
    )
    detections = FrameDetections(boxes, np.array([0.9, 0.8, 0.7, 0.6]))
    teacher = StubTeacher(zero_rows=(2,))
    embedded, seconds, dropped = embed_with_teacher(teacher, image, detections)
    np.testing.assert_array_equal(embedded.tlbr, boxes[[0, 1]])
    np.testing.assert_allclose(teacher.calls[0][1], [0, 20, 20, 80])
    assert dropped == 2 and seconds >= 0
    np.testing.assert_array_equal(visible_mask(boxes, 200, 100), [True, True, False, True])


def test_public_detections_raw_margins_and_probabilities(pets_dir, mot17_mini_dir):
    image = pets_image(pets_dir, 1)
    raw = PublicDetection.from_file(pets_dir / "det" / "det.txt")
    assert not raw.scores_are_probabilities
    negative_frame = int(raw.rows[raw.rows[:, 6] < 0][0, 0])
    output = raw.process(negative_frame, pets_image(pets_dir, negative_frame))
    rows = raw.rows[raw.rows[:, 0] == negative_frame]
    assert len(output.scored) == len(rows) and len(output.tracked) == int((rows[:, 6] >= 0).sum())
    assert (output.tracked.score == 1).all()
    np.testing.assert_allclose(np.sort(output.scored.score), np.sort(rows[:, 6]), rtol=1e-5)
    stricter = PublicDetection(raw.rows, min_raw_score=60.0).process(1, image)
    assert len(stricter.tracked) == int((raw.rows[(raw.rows[:, 0] == 1)][:, 6] >= 60).sum())

    probabilities = PublicDetection.from_file(mot17_mini_dir / "MOT17-04-FRCNN" / "det" / "det.txt")
    assert probabilities.scores_are_probabilities
    frame_rows = probabilities.rows[probabilities.rows[:, 0] == 1]
    mot17_image = np.zeros((1080, 1920, 3), np.uint8)
    output = probabilities.process(1, mot17_image)
    np.testing.assert_allclose(np.sort(output.tracked.score), np.sort(frame_rows[:, 6]), rtol=1e-5)


def test_one_stage_source_yields_unit_embeddings_and_model_time(pets_dir, tiny_detectors):
    one_stage, detection_only = tiny_detectors
    stage = OneStageDetection(one_stage)
    frames = list(source_frames(open_sequence(pets_dir), stage, FrameRange(1, 2)))
    detections = frames[0].detections
    assert 0 < len(detections) <= 12
    assert detections.embedding.shape == (len(detections), 16)
    np.testing.assert_allclose(np.linalg.norm(detections.embedding, axis=1), 1.0, rtol=1e-5)
    assert frames[0].scored_detections.embedding is None
    assert frames[0].timing.model_seconds > 0 and frames[0].timing.teacher_seconds == 0
    with pytest.raises(SourceError, match="detection-only"):
        OneStageDetection(detection_only)


def test_two_stage_source_embeds_only_what_the_tracker_keeps(pets_dir, tiny_detectors):
    _, detection_only = tiny_detectors
    teacher = StubTeacher()
    image = pets_image(pets_dir)
    scores = detection_only.detect(image).score
    min_score = float(np.median(scores))
    output = TwoStageDetection(detection_only, teacher, min_score=min_score).process(100, image)
    assert len(output.scored) == len(scores)
    assert len(output.tracked) == int((scores >= min_score).sum())
    assert (output.tracked.score >= min_score).all()
    assert output.tracked.embedding.shape[1] == StubTeacher.dim
    assert output.model_seconds > 0 and output.teacher_seconds > 0


def test_teacher_options_need_weights(monkeypatch, tmp_path):
    from tracker.cli import add_teacher_options, teacher_config_from_args

    monkeypatch.delenv("TDT_TEACHER_WEIGHTS", raising=False)
    parser = argparse.ArgumentParser()
    add_teacher_options(parser, default_name="osnet_x0_25")
    with pytest.raises(SourceError, match="needs weights.*osnet_x0_25_msmt17.pth"):
        load_teacher(teacher_config_from_args(parser.parse_args([])))
    with pytest.raises(SourceError, match="no such teacher weights file"):
        load_teacher(
            teacher_config_from_args(parser.parse_args(["--teacher-weights", str(tmp_path / "none.pth")]))
        )


# ---- timing and rendering ----------------------------------------------------------------------


def test_timing_summary_skips_warm_up_and_excludes_decoding():
    timings = [FrameTiming(decode_seconds=1.0, model_seconds=5.0)] + [
        FrameTiming(decode_seconds=1.0, model_seconds=0.08, teacher_seconds=0.015, association_seconds=0.005)
    ] * 4
    summary = TimingSummary.of(timings)
    assert summary.frames == 4
    assert summary.fps == pytest.approx(10.0)
    assert summary.mean_ms("model") == pytest.approx(80.0)
    assert summary.mean_ms("decode") == pytest.approx(1000.0)
    assert TimingSummary.of(timings[:1]).frames == 1  # a single frame is timed anyway
    combined = TimingSummary.combine([summary, TimingSummary.of(timings[:1])])
    assert combined.frames == 5 and combined.model_seconds == pytest.approx(5.32)
    assert "FPS" in summary.describe()
    with pytest.raises(ValueError):
        FrameTiming(model_seconds=-1.0)


def frame_tracks(ids: list[int], boxes: list[list[float]]) -> FrameTracks:
    return FrameTracks(
        track_ids=np.array(ids, np.int64),
        tlbr=np.array(boxes, np.float32).reshape(-1, 4),
        scores=np.ones(len(ids), np.float32),
    )


def test_painter_draws_on_a_copy_with_stable_colours(pets_dir):
    image = pets_image(pets_dir)
    original = image.copy()
    painter = TrackPainter(trail_length=3)
    for frame in range(1, 6):
        drawn = painter.draw(image, frame_tracks([4], [[100 + 5 * frame, 100, 140 + 5 * frame, 200]]), frame)
    np.testing.assert_array_equal(image, original)
    assert not np.array_equal(drawn, image)
    assert track_colour(4) == track_colour(4) != track_colour(5)
    assert len(painter._trails[4]) == 3


def test_video_writer_writes_every_frame(tmp_path, pets_dir):
    path = tmp_path / "out" / "tracks.mp4"
    with TrackVideoWriter(path, frame_rate=7.0) as video:
        for frame in range(1, 5):
            video.write(
                pets_image(pets_dir, frame), frame_tracks([1, 2], [[0, 0, 50, 90], [60, 5, 90, 80]]), frame
            )
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == 4


# ---- package boundary --------------------------------------------------------------------------


def test_tracker_modules_stay_torch_free_until_a_model_is_loaded():
    code = (
        "import sys, tracker.sources, tracker.sequence, tracker.timing, tracker.render, "
        "tracker.run, tracker.scoring, tracker.report, tracker.chart, tracker.comparison, "
        "tracker.tracking, tracker.cli, tracker.track, tracker.compare; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'student', 'teacher')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
