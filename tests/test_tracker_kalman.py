"""The batched Kalman filter and Tracker equal plain one-track-at-a-time computations."""

from __future__ import annotations

import numpy as np
import pytest

from tdt.boxes import box_iou, tlbr_to_xyah, xyah_to_tlbr
from tracker import Tracker, TrackerConfig
from tracker.kalman import CHI2_95_4DOF, KalmanFilterXYAH
from tracker.matching import linear_assignment

POSITION_WEIGHT = 1.0 / 20
VELOCITY_WEIGHT = 1.0 / 160


# --- scalar reference: textbook formulas for a single track, no batching ---------------------


def reference_initiate(xyah):
    mean = np.concatenate([xyah, np.zeros(4)])
    h = xyah[3]
    std = [
        2 * POSITION_WEIGHT * h,
        2 * POSITION_WEIGHT * h,
        1e-2,
        2 * POSITION_WEIGHT * h,
        10 * VELOCITY_WEIGHT * h,
        10 * VELOCITY_WEIGHT * h,
        1e-5,
        10 * VELOCITY_WEIGHT * h,
    ]
    return mean, np.diag(np.square(std))


def reference_transition():
    transition = np.eye(8)
    for i in range(4):
        transition[i, 4 + i] = 1.0
    return transition


def reference_predict(mean, covariance):
    h = mean[3]
    std = [
        POSITION_WEIGHT * h,
        POSITION_WEIGHT * h,
        1e-2,
        POSITION_WEIGHT * h,
        VELOCITY_WEIGHT * h,
        VELOCITY_WEIGHT * h,
        1e-5,
        VELOCITY_WEIGHT * h,
    ]
    transition = reference_transition()
    return transition @ mean, transition @ covariance @ transition.T + np.diag(np.square(std))


def reference_project(mean, covariance):
    h = mean[3]
    observation = np.eye(4, 8)
    noise = np.diag(np.square([POSITION_WEIGHT * h, POSITION_WEIGHT * h, 1e-1, POSITION_WEIGHT * h]))
    return observation @ mean, observation @ covariance @ observation.T + noise


def reference_update(mean, covariance, xyah):
    projected_mean, projected_covariance = reference_project(mean, covariance)
    observation = np.eye(4, 8)
    gain = covariance @ observation.T @ np.linalg.inv(projected_covariance)
    new_mean = mean + gain @ (xyah - projected_mean)
    new_covariance = covariance - gain @ projected_covariance @ gain.T
    return new_mean, new_covariance


def reference_gating(mean, covariance, xyah):
    projected_mean, projected_covariance = reference_project(mean, covariance)
    residual = xyah - projected_mean
    return float(residual @ np.linalg.solve(projected_covariance, residual))


# --- fixtures ----------------------------------------------------------------------------------


def random_measurements(rng, count):
    height = rng.uniform(40, 300, count)
    return np.stack(
        [rng.uniform(0, 1920, count), rng.uniform(0, 1080, count), rng.uniform(0.3, 0.6, count), height],
        axis=1,
    )


@pytest.fixture()
def tracks():
    """Twelve tracks with varied, non-trivial states (a few predict/update rounds each)."""
    rng = np.random.default_rng(7)
    start = random_measurements(rng, 12)
    means, covariances = [], []
    for xyah in start:
        mean, covariance = reference_initiate(xyah)
        for _ in range(int(rng.integers(1, 5))):
            mean, covariance = reference_predict(mean, covariance)
            noisy = mean[:4] + rng.normal(0, [3, 3, 0.01, 3])
            mean, covariance = reference_update(mean, covariance, noisy)
        means.append(mean)
        covariances.append(covariance)
    return np.array(means), np.array(covariances)


def test_initiate_matches_reference():
    rng = np.random.default_rng(0)
    xyah = random_measurements(rng, 9)
    mean, covariance = KalmanFilterXYAH().initiate(xyah)
    for k in range(9):
        expected_mean, expected_covariance = reference_initiate(xyah[k])
        np.testing.assert_allclose(mean[k], expected_mean)
        np.testing.assert_allclose(covariance[k], expected_covariance)


def test_predict_matches_reference(tracks):
    means, covariances = tracks
    before = means.copy(), covariances.copy()
    predicted_mean, predicted_covariance = KalmanFilterXYAH().predict(means, covariances)
    for k in range(len(means)):
        expected_mean, expected_covariance = reference_predict(means[k], covariances[k])
        np.testing.assert_allclose(predicted_mean[k], expected_mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(predicted_covariance[k], expected_covariance, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(means, before[0])
    np.testing.assert_array_equal(covariances, before[1])


def test_update_matches_reference(tracks):
    means, covariances = tracks
    rng = np.random.default_rng(1)
    measurements = means[:, :4] + rng.normal(0, [4, 4, 0.02, 4], (len(means), 4))
    new_mean, new_covariance = KalmanFilterXYAH().update(means, covariances, measurements)
    for k in range(len(means)):
        expected_mean, expected_covariance = reference_update(means[k], covariances[k], measurements[k])
        np.testing.assert_allclose(new_mean[k], expected_mean, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(new_covariance[k], expected_covariance, rtol=1e-7, atol=1e-9)


def test_gating_distance_matches_reference(tracks):
    means, covariances = tracks
    rng = np.random.default_rng(2)
    near = means[:, :4] + rng.normal(0, [5, 5, 0.02, 5], (len(means), 4))
    measurements = np.concatenate([near, random_measurements(rng, 20)])
    distances = KalmanFilterXYAH().gating_distance(means, covariances, measurements)
    assert distances.shape == (len(means), len(measurements))
    expected = np.array(
        [[reference_gating(means[k], covariances[k], z) for z in measurements] for k in range(len(means))]
    )
    np.testing.assert_allclose(distances, expected, rtol=1e-7, atol=1e-6)
    # the gate decision agrees everywhere, including the nearby measurements that pass
    np.testing.assert_array_equal(distances <= CHI2_95_4DOF, expected <= CHI2_95_4DOF)
    assert (np.diag(distances[:, : len(means)]) <= CHI2_95_4DOF).any()


def test_empty_batches():
    kalman = KalmanFilterXYAH()
    mean, covariance = kalman.initiate(np.empty((0, 4)))
    assert mean.shape == (0, 8) and covariance.shape == (0, 8, 8)
    predicted = kalman.predict(mean, covariance)
    assert predicted[0].shape == (0, 8)
    assert kalman.gating_distance(mean, covariance, np.ones((3, 4))).shape == (0, 3)
    one_mean, one_covariance = kalman.initiate(np.array([[10.0, 10.0, 0.5, 50.0]]))
    assert kalman.gating_distance(one_mean, one_covariance, np.empty((0, 4))).shape == (1, 0)


# --- reference tracker: FairMOT's JDETracker.update written track by track ------------------
#
# Plain lists of track objects and the scalar Kalman functions above, following the order of
# operations of FairMOT's multitracker (predict pool, embedding + motion, IoU on tracked,
# IoU on unconfirmed, births, expiry, duplicate removal). The batched Tracker must produce the
# same identities and boxes frame by frame.

TRACKED, LOST = "tracked", "lost"


class ReferenceTrack:
    def __init__(self, tlbr, score, feature):
        self.detection_xyah = tlbr_to_xyah(tlbr)
        self.score = float(score)
        self.feature = None if feature is None else feature / np.linalg.norm(feature)
        self.smooth_feature = self.feature
        self.mean = None
        self.covariance = None
        self.state = None
        self.is_activated = False
        self.track_id = 0
        self.frame_id = 0
        self.start_frame = 0

    @property
    def tlbr(self):
        xyah = self.detection_xyah if self.mean is None else self.mean[:4]
        return xyah_to_tlbr(xyah)

    def activate(self, track_id, frame_id):
        self.track_id = track_id
        self.mean, self.covariance = reference_initiate(self.detection_xyah)
        self.state = TRACKED
        self.is_activated = frame_id == 1
        self.frame_id = self.start_frame = frame_id

    def update(self, detection, frame_id, momentum):
        self.mean, self.covariance = reference_update(self.mean, self.covariance, detection.detection_xyah)
        self.state = TRACKED
        self.is_activated = True
        self.frame_id = frame_id
        self.score = detection.score
        if detection.feature is not None:
            smooth = momentum * self.smooth_feature + (1 - momentum) * detection.feature
            self.smooth_feature = smooth / np.linalg.norm(smooth)


class ReferenceTracker:
    def __init__(self, config, frame_rate=30.0):
        self.config = config
        self.max_time_lost = int(frame_rate / 30.0 * config.track_buffer)
        self.frame_id = 0
        self.next_id = 1
        self.tracked = []
        self.lost = []

    def update(self, tlbr, score, embedding):
        config = self.config
        self.frame_id += 1
        keep = score >= config.min_score
        features = [None] * len(tlbr) if embedding is None else list(embedding)
        detections = [ReferenceTrack(tlbr[i], score[i], features[i]) for i in np.flatnonzero(keep)]
        unconfirmed = [t for t in self.tracked if not t.is_activated]
        confirmed = [t for t in self.tracked if t.is_activated]
        pool = confirmed + self.lost
        for track in pool:
            mean = track.mean.copy()
            if track.state != TRACKED:
                mean[7] = 0
            track.mean, track.covariance = reference_predict(mean, track.covariance)

        cost = np.zeros((len(pool), len(detections)))
        for row, track in enumerate(pool):
            for col, det in enumerate(detections):
                gate = reference_gating(track.mean, track.covariance, det.detection_xyah)
                if embedding is not None:
                    appearance = max(0.0, 1.0 - float(track.smooth_feature @ det.feature))
                    value = config.embedding_weight * appearance + (1 - config.embedding_weight) * gate
                else:
                    value = 1.0 - box_iou(track.tlbr[None], det.tlbr[None])[0, 0]
                cost[row, col] = np.inf if gate > config.gating_threshold else value
        threshold = (
            config.embedding_match_threshold if embedding is not None else config.motion_iou_match_threshold
        )
        matches, unmatched_pool, unmatched_dets = linear_assignment(cost, threshold)
        for row, col in matches:
            pool[row].update(detections[col], self.frame_id, config.feature_momentum)

        detections = [detections[i] for i in unmatched_dets]
        remaining = [pool[i] for i in unmatched_pool if pool[i].state == TRACKED]
        matches, unmatched_tracks, unmatched_dets = linear_assignment(
            self._iou_cost(remaining, detections), config.iou_match_threshold
        )
        for row, col in matches:
            remaining[row].update(detections[col], self.frame_id, config.feature_momentum)
        for row in unmatched_tracks:
            remaining[row].state = LOST

        detections = [detections[i] for i in unmatched_dets]
        matches, unmatched_unconfirmed, unmatched_dets = linear_assignment(
            self._iou_cost(unconfirmed, detections), config.unconfirmed_match_threshold
        )
        for row, col in matches:
            unconfirmed[row].update(detections[col], self.frame_id, config.feature_momentum)
        removed = {id(unconfirmed[row]) for row in unmatched_unconfirmed}

        for col in unmatched_dets:
            if detections[col].score >= config.det_thresh:
                detections[col].activate(self.next_id, self.frame_id)
                self.next_id += 1
                self.tracked.append(detections[col])
        for track in self.lost:
            if track.state == LOST and self.frame_id - track.frame_id > self.max_time_lost:
                removed.add(id(track))

        everyone = [t for t in self.tracked + self.lost if id(t) not in removed]
        everyone = list({id(t): t for t in everyone}.values())
        tracked = [t for t in everyone if t.state == TRACKED]
        lost = [t for t in everyone if t.state == LOST]
        distance = self._iou_cost(tracked, lost)
        drop = set()
        for p, q in zip(*np.nonzero(distance < config.duplicate_iou_distance), strict=True):
            age_p = tracked[p].frame_id - tracked[p].start_frame
            age_q = lost[q].frame_id - lost[q].start_frame
            drop.add(id(lost[q]) if age_p > age_q else id(tracked[p]))
        self.tracked = [t for t in tracked if id(t) not in drop]
        self.lost = [t for t in lost if id(t) not in drop]
        shown = sorted((t for t in self.tracked if t.is_activated), key=lambda t: t.track_id)
        return (
            np.array([t.track_id for t in shown], dtype=np.int64),
            np.array([t.tlbr for t in shown]).reshape(-1, 4),
        )

    @staticmethod
    def _iou_cost(tracks, detections):
        if not tracks or not detections:
            return np.zeros((len(tracks), len(detections)))
        return 1.0 - box_iou(np.array([t.tlbr for t in tracks]), np.array([d.tlbr for d in detections]))


def crowded_scene(seed, *, num_frames, embedding_dim):
    """People crossing, leaving, occluded for a while, plus clutter of varied scores."""
    rng = np.random.default_rng(seed)
    count = 14
    height = rng.uniform(60, 140, count)
    width = height * 0.4
    start = np.stack([rng.uniform(50, 700, count), rng.uniform(80, 500, count)], axis=1)
    velocity = rng.normal(0, 4, (count, 2))
    appear = rng.integers(0, num_frames // 2, count)
    appear[:5] = 0
    disappear = appear + rng.integers(num_frames // 3, num_frames, count)
    occluded_from = rng.integers(5, num_frames, count)
    occluded_for = rng.integers(0, 12, count)
    base = rng.normal(size=(count, max(embedding_dim, 1)))
    frames = []
    for t in range(num_frames):
        boxes, scores, features = [], [], []
        for i in range(count):
            hidden = occluded_from[i] <= t < occluded_from[i] + occluded_for[i]
            if not appear[i] <= t < disappear[i] or hidden or rng.random() < 0.05:
                continue
            centre = start[i] + velocity[i] * t + rng.normal(0, 1.5, 2)
            boxes.append(
                [*(centre - [width[i] / 2, height[i] / 2]), *(centre + [width[i] / 2, height[i] / 2])]
            )
            scores.append(rng.uniform(0.3, 1.0))
            features.append(base[i] + rng.normal(0, 0.5, base.shape[1]))
        for _ in range(rng.integers(0, 3)):
            corner = rng.uniform(0, 800, 2)
            boxes.append([*corner, *(corner + rng.uniform(20, 120, 2))])
            scores.append(rng.uniform(0.1, 0.9))
            features.append(rng.normal(size=base.shape[1]))
        order = rng.permutation(len(boxes))
        tlbr = np.array(boxes, dtype=np.float32).reshape(-1, 4)[order]
        score = np.array(scores, dtype=np.float32)[order]
        embedding = np.array(features, dtype=np.float32).reshape(len(boxes), -1)[order]
        frames.append((tlbr, score, embedding if embedding_dim else None))
    return frames


@pytest.mark.parametrize(
    ("embedding_dim", "frame_rate", "seed"),
    [(16, 30.0, 3), (0, 30.0, 4), (16, 10.0, 5)],
)
def test_batched_tracker_matches_per_track_reference(embedding_dim, frame_rate, seed):
    config = TrackerConfig(min_score=0.35, det_thresh=0.5)
    tracker = Tracker(config, frame_rate=frame_rate)
    reference = ReferenceTracker(config, frame_rate=frame_rate)
    most_lost = reappearances = 0
    last_seen: dict[int, int] = {}
    for frame_number, (tlbr, score, embedding) in enumerate(
        crowded_scene(seed, num_frames=70, embedding_dim=embedding_dim), start=1
    ):
        expected_ids, expected_boxes = reference.update(
            tlbr.astype(np.float64), score.astype(np.float64), embedding
        )
        result = tracker.update(tlbr, score, embedding)
        order = np.argsort(result.track_ids)
        np.testing.assert_array_equal(result.track_ids[order], expected_ids, err_msg=f"frame {frame_number}")
        np.testing.assert_allclose(
            result.tlbr[order], expected_boxes, rtol=0, atol=1e-3, err_msg=f"frame {frame_number}"
        )
        assert (tracker.num_tracked, tracker.num_lost) == (len(reference.tracked), len(reference.lost))
        most_lost = max(most_lost, tracker.num_lost)
        for track_id in result.track_ids.tolist():
            reappearances += last_seen.get(track_id, frame_number - 1) < frame_number - 1
            last_seen[track_id] = frame_number
    assert most_lost > 0 and reappearances > 0, "the scene must exercise lost and re-found tracks"


def duplicate_scene(dim=8):
    """Scripted frames that make FairMOT's duplicate removal fire in both directions."""
    identity = np.eye(dim, dtype=np.float32) + 0.05

    def person(cx, cy):
        return [cx - 50, cy - 125, cx + 50, cy + 125]

    frames = []
    for t in range(1, 41):
        boxes, features = [], []
        # A stands still; missed at frame 11, then seen with a foreign look (12-14): the new
        # tracks born on top of lost A are younger and dropped. A's own look returns at 15.
        if t != 11:
            boxes.append(person(400, 300))
            features.append(identity[5] if 12 <= t <= 14 else identity[0])
        # B (younger than A) walks towards A and is missed from frame 9 on: its lost,
        # still-moving prediction slides onto A and is dropped as the younger duplicate.
        if 3 <= t <= 8:
            boxes.append(person(150 + 10 * t, 300))
            features.append(identity[1])
        tlbr = np.array(boxes, dtype=np.float32).reshape(-1, 4)
        frames.append((tlbr, np.full(len(tlbr), 0.9, np.float32), np.array(features).reshape(-1, dim)))
    return frames


def test_duplicate_removal_matches_reference_in_both_directions():
    config = TrackerConfig()
    tracker = Tracker(config)
    reference = ReferenceTracker(config)
    counts = []
    for frame_number, (tlbr, score, embedding) in enumerate(duplicate_scene(), start=1):
        expected_ids, _ = reference.update(tlbr.astype(np.float64), score, embedding)
        result = tracker.update(tlbr, score, embedding)
        np.testing.assert_array_equal(
            np.sort(result.track_ids), expected_ids, err_msg=f"frame {frame_number}"
        )
        counts.append((tracker.num_tracked, tracker.num_lost))
        assert counts[-1] == (len(reference.tracked), len(reference.lost)), f"frame {frame_number}"
    # frames 12-14: a track is born on lost A each frame (ids 3, 4, 5) and dropped at once
    assert counts[11:14] == [(0, 2)] * 3
    assert counts[14] == (1, 1), "A re-found by its own look at frame 15, B still lost"
    # B, lost since frame 9, is dropped on reaching A, long before its 30-frame buffer ends
    b_dropped_at = next(frame for frame, (_, lost) in enumerate(counts, start=1) if frame > 15 and lost == 0)
    assert b_dropped_at < 9 + 30
    assert result.track_ids.tolist() == [1]
