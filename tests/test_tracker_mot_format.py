"""MOT result rows, files, and an end-to-end run on real PETS09 public detections."""

from __future__ import annotations

import numpy as np
import pytest

from tdt.boxes import tlwh_to_tlbr
from tracker import (
    Tracker,
    TrackerConfig,
    frame_tracks_to_mot_rows,
    read_mot_file,
    stack_mot_rows,
    write_mot_results,
)
from tracker.association import FrameTracks
from tracker.mot_format import MotFormatError


def test_frame_tracks_become_mot_rows_and_survive_a_file_round_trip(tmp_path):
    tracks = FrameTracks(
        track_ids=np.array([3, 7]),
        tlbr=np.array([[10.0, 20.0, 40.0, 120.0], [5.5, 6.25, 15.5, 36.25]], dtype=np.float32),
        scores=np.array([0.875, 0.5], dtype=np.float32),
    )
    rows = frame_tracks_to_mot_rows(12, tracks)
    np.testing.assert_allclose(
        rows,
        [[12, 3, 10, 20, 30, 100, 0.875, -1, -1, -1], [12, 7, 5.5, 6.25, 10, 30, 0.5, -1, -1, -1]],
    )
    all_rows = stack_mot_rows([rows, frame_tracks_to_mot_rows(13, tracks)])
    path = tmp_path / "seq.txt"
    write_mot_results(path, all_rows)
    lines = path.read_text().splitlines()
    assert lines[0] == "12,3,10.00,20.00,30.00,100.00,0.8750,-1,-1,-1"
    assert len(lines) == 4
    np.testing.assert_allclose(read_mot_file(path), all_rows, atol=5e-3)
    assert not list(tmp_path.glob("*.partial"))


def test_empty_results():
    assert stack_mot_rows([]).shape == (0, 10)
    empty = FrameTracks(np.empty(0, np.int64), np.empty((0, 4), np.float32), np.empty(0, np.float32))
    assert frame_tracks_to_mot_rows(1, empty).shape == (0, 10)


def test_malformed_files_name_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("1,1,0,0,10,10,1,-1,-1,-1\n2,1,0,0,10\n")
    with pytest.raises(MotFormatError, match=r"bad.txt:2: 5 columns"):
        read_mot_file(path)
    path.write_text("1,1,0,0,x,10\n")
    with pytest.raises(MotFormatError, match=r"bad.txt:1: non-numeric"):
        read_mot_file(path)
    path.write_text("")
    assert read_mot_file(path).shape == (0, 6)
    with pytest.raises(ValueError, match=r"\(R, 10\)"):
        write_mot_results(tmp_path / "out.txt", np.zeros((2, 6)))


def test_iou_tracking_of_pets09_public_detections(pets_dir):
    """End to end on real data: ACF public detections, IoU + motion only, MOT15 evaluation."""
    from tracker.evaluation import evaluate_sequences

    detections = read_mot_file(pets_dir / "det" / "det.txt")
    ground_truth = read_mot_file(pets_dir / "gt" / "gt.txt")
    # ACF scores are unbounded (-0.5 .. 139); PETS09 runs at 7 fps.
    tracker = Tracker(TrackerConfig(min_score=20.0, det_thresh=30.0), frame_rate=7.0)
    rows = []
    for frame_number in range(1, 398):
        in_frame = detections[detections[:, 0] == frame_number]
        tracks = tracker.update(tlwh_to_tlbr(in_frame[:, 2:6]), in_frame[:, 6])
        rows.append(frame_tracks_to_mot_rows(frame_number, tracks))
    metrics = evaluate_sequences(
        {"PETS09": (ground_truth, stack_mot_rows(rows))}, "MOT15", frames={"PETS09": range(1, 398)}
    )["PETS09"]
    assert metrics.num_frames == 397
    # measured: MOTA 0.694, IDF1 0.461, 70 ID switches (no appearance: IoU at 7 fps)
    assert metrics.mota > 0.65
    assert metrics.recall > 0.8 and metrics.precision > 0.8
