"""Tracker behaviour on small hand-made scenes (numpy arrays only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tdt.config import ConfigError
from tracker import FrameTracks, Tracker, TrackerConfig, TrackerConfigError

DIM = 8
REPO_ROOT = Path(__file__).resolve().parents[1]


def box(cx: float, cy: float, width: float = 40.0, height: float = 100.0) -> list[float]:
    return [cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2]


def unit(index: int, dim: int = DIM) -> np.ndarray:
    vector = np.full(dim, 0.05, dtype=np.float32)
    vector[index] = 1.0
    return vector


def frame(boxes, scores=None, features=None):
    tlbr = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    if scores is None:
        scores = np.full(len(tlbr), 0.9)
    embedding = None
    if features is not None:
        embedding = np.array(features, dtype=np.float32).reshape(len(tlbr), DIM)
    return tlbr, np.array(scores, dtype=np.float32), embedding


def ids_of(tracks: FrameTracks) -> set[int]:
    return {int(track_id) for track_id in tracks.track_ids}


def id_near(tracks: FrameTracks, cx: float, cy: float, tolerance: float = 15.0) -> int | None:
    centres = (tracks.tlbr[:, :2] + tracks.tlbr[:, 2:]) / 2
    close = np.flatnonzero(np.hypot(centres[:, 0] - cx, centres[:, 1] - cy) < tolerance)
    assert len(close) <= 1
    return int(tracks.track_ids[close[0]]) if len(close) else None


# --- birth, confirmation, scores ---------------------------------------------------------------


def test_first_frame_tracks_are_confirmed_at_once_later_ones_on_second_match():
    tracker = Tracker(TrackerConfig())
    first = tracker.update(*frame([box(100, 200), box(300, 200)], features=[unit(0), unit(1)]))
    assert ids_of(first) == {1, 2}
    assert first.tlbr.dtype == np.float32 and first.scores.dtype == np.float32
    np.testing.assert_allclose(first.tlbr[np.argsort(first.track_ids)][0], box(100, 200), atol=1e-4)

    second = tracker.update(
        *frame([box(102, 200), box(302, 200), box(600, 200)], features=[unit(0), unit(1), unit(2)])
    )
    assert ids_of(second) == {1, 2}, "a track born after frame 1 waits for its second match"
    third = tracker.update(
        *frame([box(104, 200), box(304, 200), box(603, 200)], features=[unit(0), unit(1), unit(2)])
    )
    assert ids_of(third) == {1, 2, 3}
    assert id_near(third, 603, 200) == 3


def test_unconfirmed_track_without_second_match_is_removed_but_its_id_is_spent():
    tracker = Tracker(TrackerConfig())
    tracker.update(*frame([box(100, 200)], features=[unit(0)]))
    tracker.update(*frame([box(100, 200), box(500, 200)], features=[unit(0), unit(1)]))
    tracker.update(*frame([box(100, 200)], features=[unit(0)]))
    assert tracker.num_tracked == 1 and tracker.num_lost == 0
    later = tracker.update(*frame([box(100, 200), box(800, 400)], features=[unit(0), unit(2)]))
    later = tracker.update(*frame([box(100, 200), box(801, 400)], features=[unit(0), unit(2)]))
    assert ids_of(later) == {1, 3}


def test_score_thresholds():
    config = TrackerConfig(min_score=0.2, det_thresh=0.5)
    tracker = Tracker(config)
    # 0.3 is kept for matching but cannot start a track; 0.1 is discarded up front.
    out = tracker.update(*frame([box(100, 200), box(300, 200), box(500, 200)], [0.9, 0.3, 0.1]))
    assert ids_of(out) == {1}
    assert tracker.num_tracked == 1
    # a low (but >= min_score) detection still extends an existing track
    out = tracker.update(*frame([box(103, 200)], [0.3]))
    assert ids_of(out) == {1}
    assert out.scores[0] == pytest.approx(0.3)
    out = tracker.update(*frame([box(106, 200)], [0.1]))
    assert len(out) == 0 and tracker.num_lost == 1


# --- occlusion, re-identification, expiry --------------------------------------------------------


def walk(tracker, frames, *, hidden=(), speed=5.0, start=100.0, y=300.0, other=True):
    """Person 0 walks right; person 1 (different look) stands nearby. Returns outputs per frame."""
    outputs = []
    for t in range(frames):
        boxes, features = [], []
        if t not in hidden:
            boxes.append(box(start + speed * t, y))
            features.append(unit(0))
        if other:
            boxes.append(box(start + speed * t + 5, y + 130))
            features.append(unit(1))
        outputs.append(tracker.update(*frame(boxes, features=features)))
    return outputs


def test_occluded_person_is_reacquired_by_embedding_with_the_same_id():
    tracker = Tracker(TrackerConfig())
    outputs = walk(tracker, 10)
    person = id_near(outputs[-1], 100 + 5 * 9, 300)
    assert person == 1
    for t in range(10, 18):  # hidden: only the bystander is seen
        out = tracker.update(*frame([box(100 + 5 * t + 5, 430)], features=[unit(1)]))
        assert person not in ids_of(out)
    assert tracker.num_lost == 1
    # Reappears 25 px off the extrapolated path (still inside the motion gate), next to a
    # stranger with a different embedding who stands exactly where the lost track is predicted.
    t = 18
    predicted_x = 100 + 5 * t
    out = tracker.update(
        *frame(
            [box(predicted_x + 25, 300 + 10), box(predicted_x, 300), box(predicted_x + 5, 430)],
            features=[unit(0), unit(3), unit(1)],
        )
    )
    assert id_near(out, predicted_x + 25, 310) == person
    assert tracker.num_lost == 0


def test_lost_track_is_removed_after_the_buffer_and_its_id_is_never_reused():
    config = TrackerConfig(track_buffer=30)
    tracker = Tracker(config, frame_rate=15.0)
    assert tracker.max_frames_lost == 15
    tracker.update(*frame([box(100, 200)], features=[unit(0)]))
    for _ in range(15):
        tracker.update(*frame([], features=np.empty((0, DIM))))
    assert tracker.num_lost == 1, "lost for exactly the buffer: still kept"
    tracker.update(*frame([], features=np.empty((0, DIM))))
    assert tracker.num_lost == 0, "lost for longer than the buffer: removed"
    out = tracker.update(*frame([box(100, 200)], features=[unit(0)]))
    out = tracker.update(*frame([box(100, 200)], features=[unit(0)]))
    assert ids_of(out) == {2}


def test_lost_track_comes_back_within_the_buffer():
    tracker = Tracker(TrackerConfig(), frame_rate=15.0)
    tracker.update(*frame([box(100, 200)], features=[unit(0)]))
    for _ in range(15):
        assert len(tracker.update(*frame([], features=np.empty((0, DIM))))) == 0
    out = tracker.update(*frame([box(100, 200)], features=[unit(0)]))
    assert ids_of(out) == {1}


def test_iou_only_tracking_follows_motion_and_never_reuses_ids():
    tracker = Tracker(TrackerConfig())
    seen: set[int] = set()
    for t in range(40):
        out = tracker.update(*frame([box(100 + 8 * t, 200), box(700 - 8 * t, 420)]))
        seen |= ids_of(out)
        assert len(out) == 2
    assert seen == {1, 2}
    # both leave; new people arrive after the old tracks expired
    for _ in range(31):
        tracker.update(*frame([]))
    for _ in range(2):
        out = tracker.update(*frame([box(100, 200), box(700, 420)]))
    assert ids_of(out) == {3, 4}


def test_embedding_weight_zero_tracks_as_if_there_were_no_embeddings():
    """Weight 0 means motion alone: the same tracks as the IoU path, whatever the embeddings say."""
    rng = np.random.default_rng(0)

    def scene(t: int) -> list[list[float]]:
        # a few pixels of detector noise: a Mahalanobis distance held to the embedding
        # threshold fails such boxes, the IoU path does not
        wobble = rng.normal(scale=4.0, size=(3, 2))
        people = [
            box(100 + 6 * t + wobble[0, 0], 200 + wobble[0, 1]),
            box(600 - 6 * t + wobble[1, 0], 205 + wobble[1, 1]),
            box(300 + wobble[2, 0], 420 + 2 * t + wobble[2, 1]),
        ]
        return [person for index, person in enumerate(people) if not (index == 0 and 12 <= t < 16)]

    with_features = Tracker(TrackerConfig(embedding_weight=0.0))
    without = Tracker(TrackerConfig(embedding_weight=0.0))
    for t in range(40):
        boxes = scene(t)
        # embeddings that would swap identities if they were used
        features = rng.normal(size=(len(boxes), DIM)).astype(np.float32)
        first = with_features.update(*frame(boxes, features=features))
        second = without.update(*frame(boxes))
        np.testing.assert_array_equal(first.track_ids, second.track_ids)
        np.testing.assert_array_equal(first.tlbr, second.tlbr)
    assert with_features.num_lost == without.num_lost
    assert len(first) == 3


def test_younger_duplicate_of_a_lost_track_is_dropped():
    """A re-detection the embedding rejects, born on top of an older lost track, is dropped."""
    tracker = Tracker(TrackerConfig())
    for _ in range(10):
        tracker.update(*frame([box(100, 200)], features=[unit(0)]))
    tracker.update(*frame([], features=np.empty((0, DIM))))
    assert tracker.num_lost == 1
    out = tracker.update(*frame([box(100, 200)], features=[unit(5)]))
    assert len(out) == 0
    assert tracker.num_tracked == 0 and tracker.num_lost == 1


# --- empty frames and inputs --------------------------------------------------------------------


def test_empty_frames_in_every_accepted_form():
    tracker = Tracker(TrackerConfig())
    empty_boxes = np.empty((0, 4), dtype=np.float32)
    empty_scores = np.empty(0, dtype=np.float32)
    assert len(tracker.update(empty_boxes, empty_scores)) == 0
    assert len(tracker.update(empty_boxes, empty_scores, np.empty((0, DIM), np.float32))) == 0
    out = tracker.update(*frame([box(100, 200)], features=[unit(0)]))
    assert len(out) == 0, "frame 3 is not the first frame: the new track needs a second match"
    assert len(tracker.update(empty_boxes, empty_scores, None)) == 0
    assert tracker.num_tracked == 0
    empty = tracker.update(empty_boxes, empty_scores)
    assert empty.track_ids.shape == (0,) and empty.tlbr.shape == (0, 4)

    iou_only = Tracker(TrackerConfig())
    iou_only.update(*frame([box(100, 200)]))
    assert len(iou_only.update(empty_boxes, empty_scores, np.empty((0, DIM)))) == 0
    assert ids_of(iou_only.update(*frame([box(100, 200)]))) == {1}


def test_caller_arrays_are_not_modified_and_outputs_are_read_only():
    tracker = Tracker(TrackerConfig())
    tlbr, score, embedding = frame([box(100, 200), box(300, 200)], features=[unit(0) * 3.0, unit(1) * 0.5])
    copies = tlbr.copy(), score.copy(), embedding.copy()
    for _ in range(3):
        out = tracker.update(tlbr, score, embedding)
    np.testing.assert_array_equal(tlbr, copies[0])
    np.testing.assert_array_equal(score, copies[1])
    np.testing.assert_array_equal(embedding, copies[2])
    with pytest.raises(ValueError, match="read-only"):
        out.tlbr[0, 0] = 1.0


def test_two_trackers_have_independent_id_counters():
    first, second = Tracker(TrackerConfig()), Tracker(TrackerConfig())
    first.update(*frame([box(100, 200), box(300, 200), box(500, 200)]))
    out = second.update(*frame([box(100, 200)]))
    assert ids_of(out) == {1}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((np.zeros((2, 3)), np.zeros(2)), r"tlbr must have shape \(N, 4\)"),
        ((np.array([box(0, 0)]), np.zeros(2)), r"score must have shape \(1,\)"),
        ((np.array([box(0, 0)]), np.array([np.nan])), "score contains NaN"),
        ((np.array([[0, 0, np.inf, 10]]), np.ones(1)), "tlbr contains NaN or infinite"),
        ((np.array([[10, 0, 5, 10]]), np.ones(1)), "non-positive width or height"),
        ((np.array([["a", "b", "c", "d"]]), np.ones(1)), "real numeric array"),
        ((np.array([box(0, 0)]), np.ones(1), np.array([[np.nan] * DIM])), "embedding contains NaN"),
        ((np.array([box(0, 0)]), np.ones(1), np.zeros((1, DIM))), "all-zero row"),
        ((np.array([box(0, 0)]), np.ones(1), np.ones((2, DIM))), r"embedding must have shape \(1, D\)"),
        ((np.array([box(0, 0)]), np.ones(1), np.ones(DIM)), r"embedding must have shape \(1, D\)"),
    ],
)
def test_invalid_detections_are_rejected_with_a_clear_message(arguments, message):
    tracker = Tracker(TrackerConfig())
    with pytest.raises(ValueError, match=message):
        tracker.update(*arguments)
    assert tracker.frame_index == 0, "a rejected frame must not advance the tracker"


def test_embedding_dimension_and_mode_cannot_change_between_frames():
    tracker = Tracker(TrackerConfig())
    tracker.update(*frame([box(100, 200)], features=[unit(0)]))
    with pytest.raises(ValueError, match="dimension changed from 8 to 4"):
        tracker.update(np.array([box(100, 200)]), np.ones(1), unit(0, dim=4)[None])
    with pytest.raises(ValueError, match="dimension changed from 8 to 4"):
        tracker.update(np.empty((0, 4)), np.empty(0), np.empty((0, 4)))
    with pytest.raises(ValueError, match="embedding is None"):
        tracker.update(*frame([box(100, 200)]))
    iou_only = Tracker(TrackerConfig())
    iou_only.update(*frame([box(100, 200)]))
    with pytest.raises(ValueError, match="earlier frames had none"):
        iou_only.update(*frame([box(100, 200)], features=[unit(0)]))


def test_tracker_rejects_bad_frame_rate():
    for frame_rate in (0, -5.0, float("nan"), True):
        with pytest.raises(ValueError, match="frame_rate"):
            Tracker(TrackerConfig(), frame_rate=frame_rate)
    assert Tracker(TrackerConfig(), frame_rate=np.float32(7)).max_frames_lost == 7


# --- configuration -------------------------------------------------------------------------------


def test_config_defaults_are_fairmot_and_round_trip_through_dicts():
    config = TrackerConfig()
    assert config.embedding_weight == 0.98
    assert config.gating_threshold == 9.4877
    assert config.embedding_match_threshold == 0.4
    assert config.iou_match_threshold == 0.5
    assert config.unconfirmed_match_threshold == 0.7
    assert config.track_buffer == 30 and config.feature_momentum == 0.9
    assert TrackerConfig.from_dict(config.to_dict()) == config
    assert TrackerConfig.from_dict({"det_thresh": 1, "track_buffer": 60}).det_thresh == 1.0
    with pytest.raises(AttributeError):
        config.det_thresh = 0.1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"det_tresh": 0.5}, r"TrackerConfig: unknown key\(s\) det_tresh"),
        ({"track_buffer": 2.5}, "track_buffer: expected an integer"),
        ({"track_buffer": -1}, "track_buffer must be >= 0"),
        ({"embedding_weight": 1.5}, "embedding_weight"),
        ({"feature_momentum": 1.0}, "feature_momentum"),
        ({"min_score": float("nan")}, "finite"),
        ({"det_thresh": "0.4"}, "det_thresh: expected a number"),
        ({"gating_threshold": 0}, "gating_threshold must be > 0"),
    ],
)
def test_config_rejects_bad_values(values, message):
    with pytest.raises(TrackerConfigError, match=message):
        TrackerConfig.from_dict(values)


def test_config_checks_values_built_in_code_too():
    with pytest.raises(TrackerConfigError, match="track_buffer must be an integer"):
        TrackerConfig(track_buffer=2.5)  # type: ignore[arg-type]
    with pytest.raises(TrackerConfigError, match="det_thresh must be a number"):
        TrackerConfig(det_thresh="0.4")  # type: ignore[arg-type]


def test_config_yaml_round_trip_and_errors_name_the_file(tmp_path):
    path = tmp_path / "tracker.yaml"
    TrackerConfig(track_buffer=60, embedding_weight=0.5).to_yaml(path)
    assert TrackerConfig.from_yaml(path) == TrackerConfig(track_buffer=60, embedding_weight=0.5)
    path.write_text("min_score: 0.3\nmin_score: 0.5\n")
    with pytest.raises(ConfigError, match=r"tracker\.yaml.*duplicate key 'min_score'"):
        TrackerConfig.from_yaml(path)
    path.write_text("track_buffer: -2\n")
    with pytest.raises(TrackerConfigError, match=r"tracker\.yaml: TrackerConfig: track_buffer must be >= 0"):
        TrackerConfig.from_yaml(path)


# --- package boundaries --------------------------------------------------------------------------


def test_tracker_package_never_imports_torch_student_or_teacher():
    code = (
        "import sys, tracker, tracker.evaluation, tracker.matching, tdt.boxes, tdt.detection_ap; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'student', 'teacher')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
