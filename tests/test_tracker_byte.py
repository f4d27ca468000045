"""BYTE association mode and FairMOT's output filter on small hand-made scenes."""

from __future__ import annotations

import numpy as np
import pytest

from tracker import FrameTracks, Tracker, TrackerConfig, TrackerConfigError
from tracker.matching import plausible_person_boxes, split_by_score

DIM = 8


def box(cx: float, cy: float, width: float = 40.0, height: float = 100.0) -> list[float]:
    return [cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2]


def unit(index: int) -> np.ndarray:
    vector = np.full(DIM, 0.05, dtype=np.float32)
    vector[index] = 1.0
    return vector


def update(tracker: Tracker, boxes, scores, identities=None) -> FrameTracks:
    tlbr = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    embedding = None if identities is None else np.stack([unit(i) for i in identities]).reshape(-1, DIM)
    return tracker.update(tlbr, np.array(scores, dtype=np.float32), embedding)


def walk(tracker: Tracker, scores: list[float], with_embeddings: bool = True) -> list[set[int]]:
    """One person walking right 5 px per frame with the given detection score per frame."""
    shown = []
    for step, score in enumerate(scores):
        tracks = update(tracker, [box(100 + 5 * step, 200)], [score], [0] if with_embeddings else None)
        shown.append({int(track_id) for track_id in tracks.track_ids})
    return shown


@pytest.mark.parametrize("with_embeddings", [True, False])
def test_low_score_detections_keep_a_track_alive_in_byte_mode_only(with_embeddings):
    scores = [0.9, 0.9, 0.9, 0.2, 0.25, 0.2, 0.9]
    byte = walk(Tracker(TrackerConfig(association="byte")), scores, with_embeddings)
    assert byte == [{1}] * 7, "the occluded frames keep track 1"
    fairmot = walk(Tracker(TrackerConfig(association="fairmot")), scores, with_embeddings)
    assert fairmot[:3] == [{1}] * 3 and fairmot[3:6] == [set()] * 3, "weak detections are dropped"


def test_byte_low_score_detections_never_start_or_revive_tracks():
    tracker = Tracker(TrackerConfig(association="byte"))
    for _ in range(3):
        assert len(update(tracker, [box(500, 300)], [0.3], [1])) == 0
    assert tracker.num_tracked == 0 and tracker.num_lost == 0
    walk(tracker, [0.9, 0.9])
    update(tracker, np.empty((0, 4)), [], None)  # the person is missed: the track becomes lost
    assert tracker.num_lost == 1
    lost_again = update(tracker, [box(115, 200)], [0.3], [0])
    assert len(lost_again) == 0 and tracker.num_lost == 1, "BYTE's second step serves tracked tracks only"


def test_byte_ignores_detections_below_the_low_threshold_and_prefers_high_scores():
    config = TrackerConfig(association="byte", low_score_threshold=0.2)
    assert walk(Tracker(config), [0.9, 0.9, 0.15]) == [{1}, {1}, set()]
    tracker = Tracker(config)
    walk(tracker, [0.9, 0.9])
    # a strong and a weak detection on the same person: the strong one updates the track
    tracks = update(tracker, [box(112, 200), box(110, 204)], [0.3, 0.8], [0, 0])
    assert tracks.track_ids.tolist() == [1] and tracks.scores.tolist() == pytest.approx([0.8])


def test_fairmot_output_filter_hides_implausible_boxes_but_keeps_their_tracks():
    boxes = [box(100, 200), box(400, 200, width=90, height=50), box(700, 200, width=8, height=12)]
    default = Tracker(TrackerConfig())
    unfiltered = Tracker(TrackerConfig(filter_output=False))
    for step in range(3):
        moved = [[x1 + step, y1, x2 + step, y2] for x1, y1, x2, y2 in boxes]
        shown = update(default, moved, [0.9] * 3, [0, 1, 2])
        everything = update(unfiltered, moved, [0.9] * 3, [0, 1, 2])
    assert shown.track_ids.tolist() == [1], "a 90x50 box (w/h 1.8) and an 8x12 box (area 96) are not written"
    assert sorted(everything.track_ids.tolist()) == [1, 2, 3]
    assert default.num_tracked == 3


def test_split_by_score_and_plausible_boxes():
    scores = np.array([0.05, 0.1, 0.39, 0.4, 0.9])
    high, low = split_by_score(scores, 0.4, 0.1)
    assert high.tolist() == [3, 4] and low.tolist() == [1, 2]
    high, low = split_by_score(scores, 0.4)
    assert high.tolist() == [3, 4] and low.tolist() == []
    tlbr = np.array([[0, 0, 16, 10], [0, 0, 17, 10], [0, 0, 10, 10], [0, 0, 10, 11]])
    assert plausible_person_boxes(tlbr, 100.0, 1.6).tolist() == [True, False, False, True]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"association": "bytetrack"}, "association must be one of fairmot, byte"),
        ({"association": 1}, "association: expected a string"),
        ({"association": "byte", "low_score_threshold": 0.5}, "low_score_threshold must be in"),
        ({"association": "byte", "low_score_threshold": -0.1}, "low_score_threshold must be in"),
        ({"low_score_match_threshold": -1}, "low_score_match_threshold must be >= 0"),
        ({"filter_output": "yes"}, "filter_output: expected true or false"),
        ({"max_output_aspect_ratio": 0}, "max_output_aspect_ratio must be > 0"),
        ({"min_output_area": -5}, "min_output_area must be >= 0"),
    ],
)
def test_config_rejects_bad_byte_and_filter_values(values, message):
    with pytest.raises(TrackerConfigError, match=message):
        TrackerConfig.from_dict(values)


def test_config_defaults_and_the_lowest_score_a_source_must_deliver():
    config = TrackerConfig()
    assert (config.association, config.filter_output) == ("fairmot", True)
    assert (config.min_output_area, config.max_output_aspect_ratio) == (100.0, 1.6)
    assert config.lowest_used_score == 0.4
    byte = TrackerConfig.from_dict({"association": "byte", "low_score_threshold": 0})
    assert byte.low_score_threshold == 0.0 and byte.lowest_used_score == 0.0
    assert TrackerConfig.from_dict(byte.to_dict()) == byte


# --- oracle scores for measuring BYTE: the visible share of each ground-truth box -----------------


def test_visible_share_counts_only_boxes_nearer_the_camera():
    from tracker.sources import visible_share

    boxes = np.array([[0, 0, 10, 20], [5, 0, 15, 25], [100, 100, 110, 120], [0, 0, 10, 20]], float)
    # box 1 (bottom edge 25) hides the right half of boxes 0 and 3; boxes 0 and 3 tie and hide nothing
    np.testing.assert_allclose(visible_share(boxes), [0.5, 1.0, 1.0, 0.5])
    assert visible_share(np.empty((0, 4))).shape == (0,)


def test_oracle_visibility_scores_follow_the_kept_boxes():
    from tracker.sources import OraclePerturbation

    boxes = np.array([[0, 0, 10, 20], [5, 0, 15, 25], [100, 100, 110, 120]], float)
    kept, scores = OraclePerturbation(visibility_scores=True).detections(3, boxes)
    np.testing.assert_array_equal(kept, boxes)
    np.testing.assert_allclose(scores, [0.5, 1.0, 1.0])
    perturbation = OraclePerturbation(jitter=0.05, drop_rate=0.4, seed=2, visibility_scores=True)
    moved, scores = perturbation.detections(3, boxes)
    plain, ones = OraclePerturbation(jitter=0.05, drop_rate=0.4, seed=2).detections(3, boxes)
    np.testing.assert_array_equal(moved, plain)  # same boxes kept and moved, only the scores differ
    assert len(scores) == len(moved) and ones.tolist() == [1.0] * len(plain)
    assert set(np.round(scores, 3)) <= {0.5, 1.0}
