"""``python -m tracker.track`` and ``python -m tracker.compare``: outputs and one-line errors.

Students are tiny randomly initialised MobileNetV2 models saved in the real
checkpoint format (student.checkpoint) and loaded back with ``student.load``:
plumbing only, the numbers mean nothing.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tracker import compare, track
from tracker.mot_format import read_mot_file
from tracker.sources import SourceError, load_detector

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {
    "backbone": "mobilenet_v2_fpn",
    "input_height": 128,
    "input_width": 160,
    "fpn_channels": 32,
    "head_width": 16,
    "head_depth": 1,
    "embedding_head_width": 16,
    "detections_per_image": 12,
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"one-stage": 16-d student, "detection-only": no embedding head}, scoring about 0.5 everywhere."""
    torch = pytest.importorskip("torch")
    from student import ModelConfig, build_student
    from student.checkpoint import TrainingCheckpoint, save_checkpoint

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for name, dim in (("one-stage", 16), ("detection-only", 0)):
        torch.manual_seed(0)
        config = ModelConfig(embedding_dim=dim, **TINY_MODEL)
        model = build_student(config, warn_if_random_backbone=False)
        torch.nn.init.zeros_(model.classification_head.predictor.bias)
        paths[name] = save_checkpoint(
            folder / f"{name}.pt",
            TrainingCheckpoint(step=0, model_state=model.state_dict(), model_config=config.to_dict()),
        )
    yield paths
    torch.set_num_threads(previous_threads)


@pytest.fixture
def no_teacher_env(monkeypatch):
    monkeypatch.delenv("TDT_TEACHER_WEIGHTS", raising=False)


def assert_valid_mot_rows(path: Path, frames: range) -> np.ndarray:
    rows = read_mot_file(path, min_columns=10)
    assert rows.shape[1] == 10 and len(rows) > 0
    assert set(rows[:, 0].astype(int)) <= set(frames)
    assert (rows[:, 1] >= 1).all() and (rows[:, 4:6] > 0).all()
    assert (rows[:, 7:] == -1).all()
    pairs = rows[:, :2]
    assert len(np.unique(pairs, axis=0)) == len(pairs)
    return rows


def video_frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def only_error_line(captured: str) -> str:
    lines = captured.strip().splitlines()
    assert len(lines) == 1, captured
    assert lines[0].startswith("error: ")
    return lines[0]


# ---- track -------------------------------------------------------------------------------------


def test_track_one_stage_writes_mot_rows_and_a_video(tmp_path, pets_dir, checkpoints, capsys):
    out = tmp_path / "out"
    argv = ["--input", str(pets_dir), "--checkpoint", str(checkpoints["one-stage"]), "--out", str(out)]
    rendering = ["--render", "--still-frame", "304", "--no-progress", "--threads", "1"]
    code = track.main([*argv, "--frames", "301", "306", *rendering])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "one-stage" in captured.err
    assert_valid_mot_rows(out / "PETS09-S2L1-half1.txt", range(301, 307))
    assert video_frame_count(out / "PETS09-S2L1-half1.mp4") == 6
    still = cv2.imread(str(out / "PETS09-S2L1-half1-frame304.png"))
    original = cv2.imread(str(pets_dir / "img1" / "000304.jpg"))
    assert still.shape == original.shape
    assert np.abs(still.astype(int) - original).max() > 100  # boxes and labels drawn on it
    assert "FPS" in captured.out and "MOT15 protocol" in captured.out


def test_track_two_stage_on_an_image_folder_and_a_video(
    tmp_path, pets_dir, checkpoints, osnet_x0_25_msmt17, capsys
):
    images = tmp_path / "images"
    images.mkdir()
    for frame in (120, 121, 122):
        shutil.copy(pets_dir / "img1" / f"{frame:06d}.jpg", images / f"{frame:06d}.jpg")
    teacher = ["--teacher", "osnet_x0_25", "--teacher-weights", str(osnet_x0_25_msmt17)]
    common = ["--checkpoint", str(checkpoints["detection-only"]), "--no-progress", "--threads", "1", *teacher]
    common += ["--detections-per-image", "8"]
    assert track.main(["--input", str(images), "--out", str(tmp_path / "a"), *common]) == 0
    assert "two-stage" in capsys.readouterr().err
    assert_valid_mot_rows(tmp_path / "a" / "images.txt", range(120, 123))

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), 7.0, (768, 576))
    for frame in (120, 121, 122, 123):
        writer.write(cv2.imread(str(pets_dir / "img1" / f"{frame:06d}.jpg")))
    writer.release()
    code = track.main(["--input", str(video), "--out", str(tmp_path / "b"), "--frames", "2", "4", *common])
    assert code == 0, capsys.readouterr().err
    assert_valid_mot_rows(tmp_path / "b" / "clip.txt", range(2, 5))


# ---- compare -----------------------------------------------------------------------------------


def test_compare_writes_every_report_with_every_tracker(
    tmp_path, pets_dir, mot17_mini_dir, checkpoints, osnet_x0_25_msmt17, capsys
):
    out = tmp_path / "compare"
    sequences = [str(pets_dir), str(mot17_mini_dir / "MOT17-04-FRCNN")]
    code = compare.main(
        [
            "--sequences",
            *sequences,
            "--one-stage",
            str(checkpoints["one-stage"]),
            "--ce",
            str(checkpoints["one-stage"]),
            "--two-stage",
            str(checkpoints["detection-only"]),
            "--oracle",
            "--oracle-jitter",
            "0.05",
            "--oracle-drop",
            "0.1",
            "--public",
            "--teacher",
            "osnet_x0_25",
            "--teacher-weights",
            str(osnet_x0_25_msmt17),
            "--frames",
            "1",
            "3",
            "--threads",
            "1",
            "--detections-per-image",
            "12",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    keys = ["one-stage", "ce", "two-stage", "oracle", "oracle-iou", "public"]
    names = ["PETS09-S2L1-half1", "MOT17-04-FRCNN"]

    report = (out / "results.md").read_text()
    for label in ("one-stage (L2)", "one-stage (CE)", "two-stage (+osnet_x0_25)", "oracle gt (IoU only)"):
        assert f"| {label} |" in report
    assert "| Tracker | HOTA | MOTA | IDF1 | DetA | AssA | IDs | FP | FN | AP@0.5 | FPS |" in report
    assert "PETS09-S2L1-half1: MOT15, MOT17-04-FRCNN: MOT17" in report
    assert "every student detector ran with detections_per_image 12 instead of its checkpoint's" in report

    with open(out / "results.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(row["tracker"], row["sequence"]) for row in rows] == [
        (key, name) for key in keys for name in (*names, "OVERALL")
    ]
    oracle_overall = next(
        row for row in rows if row["tracker"] == "oracle-iou" and row["sequence"] == "OVERALL"
    )
    assert float(oracle_overall["ap50"]) > 0.8 and float(oracle_overall["teacher_ms"]) == 0.0
    assert 0.0 < float(oracle_overall["hota"]) <= 1.0 and 0.0 < float(oracle_overall["assa"]) <= 1.0

    payload = json.loads((out / "results.json").read_text())
    assert [tracker["key"] for tracker in payload["trackers"]] == keys
    assert payload["settings"]["frames"] == [1, 3]
    assert payload["settings"]["tracker_config"]["embedding_weight"] == 0.98
    two_stage = payload["trackers"][2]["results"]["OVERALL"]
    assert two_stage["teacher_ms"] > 0 and two_stage["model_ms"] > 0 and two_stage["fps"] > 0
    assert {"hota", "deta", "assa", "loca", "mota", "idf1"} <= set(two_stage)

    chart = cv2.imread(str(out / "results.png"))
    assert chart is not None and chart.shape == (560, 1200, 3)
    for key in keys:
        for name in names:
            assert_valid_mot_rows(out / key / f"{name}.txt", range(1, 4))


# ---- errors: one line, exit status 2 -----------------------------------------------------------


def test_track_errors_exit_2_with_one_line(tmp_path, pets_dir, checkpoints, no_teacher_env, capsys):
    base = ["--input", str(pets_dir), "--out", str(tmp_path / "out"), "--frames", "1", "2", "--no-progress"]

    assert track.main([*base, "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "no such checkpoint file" in only_error_line(capsys.readouterr().err)

    assert track.main([*base, "--checkpoint", str(checkpoints["detection-only"])]) == 2
    assert "teacher needs weights" in only_error_line(capsys.readouterr().err)

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert track.main([*base, "--checkpoint", str(corrupt)]) == 2
    assert "corrupt.pt" in only_error_line(capsys.readouterr().err)

    config = tmp_path / "tracker.yaml"
    config.write_text("min_score: 0.3\nbuffer: 10\n")
    arguments = [*base, "--checkpoint", str(checkpoints["one-stage"]), "--tracker-config", str(config)]
    assert track.main(arguments) == 2
    assert "TrackerConfig: unknown key(s) buffer" in only_error_line(capsys.readouterr().err)

    assert track.main([*base[2:], "--input", str(tmp_path / "nothing"), "--checkpoint", "x.pt"]) == 2
    assert "no such video file or folder" in only_error_line(capsys.readouterr().err)

    one_stage = [*base, "--checkpoint", str(checkpoints["one-stage"])]
    assert track.main([*one_stage, "--still-frame", "2"]) == 2
    assert "--still-frame needs --render" in only_error_line(capsys.readouterr().err)
    assert track.main([*one_stage, "--render", "--still-frame", "9"]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("error: --still-frame 9: no such frame was tracked"), last_line


def test_compare_errors_exit_2_with_one_line(tmp_path, pets_dir, checkpoints, no_teacher_env, capsys):
    without_gt = tmp_path / "no-gt"
    (without_gt / "img1").mkdir(parents=True)
    shutil.copy(pets_dir / "seqinfo.ini", without_gt / "seqinfo.ini")
    shutil.copy(pets_dir / "img1" / "000001.jpg", without_gt / "img1" / "000001.jpg")
    out = ["--out", str(tmp_path / "out"), "--no-progress"]
    one_stage = ["--one-stage", str(checkpoints["one-stage"])]

    assert compare.main(["--sequences", str(without_gt), *one_stage, *out]) == 2
    assert "no gt/gt.txt" in only_error_line(capsys.readouterr().err)

    assert compare.main(["--sequences", str(pets_dir), *out]) == 2
    assert "nothing to compare" in only_error_line(capsys.readouterr().err)

    assert (
        compare.main(["--sequences", str(pets_dir), "--two-stage", str(checkpoints["detection-only"]), *out])
        == 2
    )
    assert "teacher needs weights" in only_error_line(capsys.readouterr().err)

    arguments = ["--sequences", str(pets_dir), "--one-stage", str(checkpoints["detection-only"]), *out]
    assert compare.main(arguments) == 2
    assert "detection-only checkpoint" in only_error_line(capsys.readouterr().err)

    arguments = ["--sequences", str(pets_dir), *one_stage, "--ce", str(tmp_path / "ce.pt"), *out]
    assert compare.main(arguments) == 2
    assert "ce.pt: no such checkpoint file" in only_error_line(capsys.readouterr().err)


def test_load_detector_reports_checkpoint_problems_as_source_errors(tmp_path, checkpoints):
    assert load_detector(checkpoints["one-stage"]).embedding_dim == 16
    assert load_detector(checkpoints["detection-only"]).embedding_dim is None
    with pytest.raises(SourceError, match="no such checkpoint file"):
        load_detector(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(SourceError, match="empty.pt"):
        load_detector(tmp_path / "empty.pt")


def test_detections_per_image_and_peak_nms_override_the_checkpoints_settings(pets_dir, checkpoints):
    image = cv2.imread(str(pets_dir / "img1" / "000001.jpg"))
    assert len(load_detector(checkpoints["one-stage"]).detect(image).score) == 12  # TINY_MODEL's cap
    capped = load_detector(checkpoints["one-stage"], "cpu", detections_per_image=5)
    assert capped.embedding_dim == 16 and len(capped.detect(image).score) == 5
    with pytest.raises(SourceError, match="detections per image must be >= 1"):
        load_detector(checkpoints["one-stage"], "cpu", detections_per_image=0)
    with_peak_nms = load_detector(checkpoints["one-stage"], "cpu", 5, peak_nms_thresh=0.4)
    assert (with_peak_nms.config.peak_nms_thresh, with_peak_nms.config.detections_per_image) == (0.4, 5)
    assert load_detector(checkpoints["one-stage"]).config.peak_nms_thresh is None
    with pytest.raises(SourceError, match="peak NMS IoU"):
        load_detector(checkpoints["one-stage"], "cpu", peak_nms_thresh=1.5)


# ---- the real entry points ---------------------------------------------------------------------


def run_module(*arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "TDT_TEACHER_WEIGHTS"}
    return subprocess.run(
        [sys.executable, "-m", *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env=environment,
        timeout=120,
    )


def test_module_help_and_error_exit_codes(tmp_path, pets_dir):
    result = run_module("tracker.track", "--help")
    assert result.returncode == 0
    assert (
        "one-stage" in result.stdout and "--teacher-weights" in result.stdout and "--frames" in result.stdout
    )

    result = run_module("tracker.compare", "--sequences", str(pets_dir), "--oracle", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "teacher needs weights" in only_error_line(result.stderr)


def test_cli_limits_numpy_blas_to_one_thread_unless_the_user_chose(monkeypatch):
    from threadpoolctl import ThreadpoolController, threadpool_limits

    from tracker.cli import BLAS_THREADS_VARIABLE, limit_numpy_blas_threads

    def openblas_threads() -> set[int]:
        return {i["num_threads"] for i in ThreadpoolController().info() if i["internal_api"] == "openblas"}

    with threadpool_limits(limits=2, user_api="blas"):
        monkeypatch.setenv(BLAS_THREADS_VARIABLE, "2")
        limit_numpy_blas_threads()
        assert openblas_threads() == {2}
        monkeypatch.delenv(BLAS_THREADS_VARIABLE)
        limit_numpy_blas_threads()
        assert openblas_threads() == {1}


def test_the_chart_of_synthetic_sequences_says_so_under_its_panels() -> None:
    from tracker.chart import draw_chart

    plain, labelled = draw_chart([]), draw_chart([], synthetic=True)
    under_fps_panel = (slice(-40, None), slice(600, None))  # below the FPS axis labels
    assert (plain[under_fps_panel] < 128).sum() == 0
    assert (labelled[under_fps_panel] < 128).sum() > 0
