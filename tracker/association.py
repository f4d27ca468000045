"""Model-free online tracker with FairMOT/JDE association, batched over tracks.

Per frame (``Tracker.update``):

1. tracked + lost tracks are Kalman-predicted; cosine distance between their
   smoothed embeddings and the detections is fused with the squared Mahalanobis
   distance (λ = 0.98), pairs outside the χ² gate are forbidden, Hungarian with
   cost ≤ 0.4. Without embeddings this step uses the gated IoU distance instead.
2. still-unmatched *tracked* (not lost) tracks vs remaining detections on IoU
   distance ≤ 0.5. With ``association: byte`` (ByteTrack), the tracked tracks
   still unmatched then meet the low-score detections (``low_score_threshold``
   ≤ score < ``min_score``) on IoU distance ≤ 0.5: an occluded person's weak
   detection keeps the track alive. Tracked tracks left over become lost.
3. unconfirmed tracks (one detection so far) vs remaining detections on IoU
   distance ≤ 0.7; unconfirmed tracks left over are removed.
4. remaining detections scoring ≥ ``det_thresh`` start tracks, confirmed at
   once only on the tracker's first frame.
5. lost tracks older than the buffer are removed, then duplicates between
   tracked and lost tracks (IoU distance < 0.15) lose their younger member.

Steps 1–4 see only detections scoring ≥ ``min_score``. The confirmed tracked
tracks are output, by default only those FairMOT would write (area > 100,
width / height ≤ 1.6).

Track state lives in arrays (one row per track, rows in creation order), so the
Kalman prediction, gating and correction run once per frame for all tracks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from numbers import Real
from typing import Self

import numpy as np
import numpy.typing as npt

from tdt.boxes import tlbr_to_xyah, xyah_to_tlbr
from tracker.config import TrackerConfig
from tracker.kalman import KalmanFilterXYAH
from tracker.matching import (
    embedding_distance,
    fuse_motion,
    iou_distance,
    linear_assignment,
    plausible_person_boxes,
    split_by_score,
)

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]


class TrackState(IntEnum):
    TRACKED = 1
    LOST = 2


@dataclass(frozen=True)
class FrameTracks:
    """Confirmed, currently tracked objects of one frame (read-only arrays).

    ``tlbr`` is the Kalman-corrected box, ``score`` the score of the detection
    that last updated the track.
    """

    track_ids: npt.NDArray[np.int64]
    tlbr: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.track_ids)


@dataclass
class _TrackTable:
    """Struct-of-arrays state of all live tracks; row order is creation order."""

    track_id: npt.NDArray[np.int64]
    mean: FloatArray
    covariance: FloatArray
    # (K, D) unit-norm smoothed embeddings, float32 as the detector emits them (half the memory
    # traffic of float64 in the cosine-distance products); D = 0 without embeddings.
    feature: npt.NDArray[np.float32]
    score: FloatArray
    state: npt.NDArray[np.int8]
    is_activated: npt.NDArray[np.bool_]
    last_frame: npt.NDArray[np.int64]
    start_frame: npt.NDArray[np.int64]
    tracklet_len: npt.NDArray[np.int64]

    @classmethod
    def empty(cls, feature_dim: int) -> Self:
        return cls(
            track_id=np.empty(0, dtype=np.int64),
            mean=np.empty((0, 8)),
            covariance=np.empty((0, 8, 8)),
            feature=np.empty((0, feature_dim), dtype=np.float32),
            score=np.empty(0),
            state=np.empty(0, dtype=np.int8),
            is_activated=np.empty(0, dtype=bool),
            last_frame=np.empty(0, dtype=np.int64),
            start_frame=np.empty(0, dtype=np.int64),
            tracklet_len=np.empty(0, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.track_id)

    def tlbr(self, rows: IndexArray | slice = slice(None)) -> FloatArray:
        return xyah_to_tlbr(self.mean[rows, :4])

    def select(self, keep: npt.NDArray[np.bool_]) -> _TrackTable:
        return _TrackTable(**{name: values[keep] for name, values in vars(self).items()})

    def concatenate(self, other: _TrackTable) -> _TrackTable:
        return _TrackTable(
            **{name: np.concatenate([values, getattr(other, name)]) for name, values in vars(self).items()}
        )


@dataclass(frozen=True)
class _Detections:
    tlbr: FloatArray
    xyah: FloatArray
    score: FloatArray
    feature: npt.NDArray[np.float32]  # unit-norm copies, (N, D); D = 0 without embeddings

    def take(self, rows: IndexArray | slice) -> _Detections:
        return _Detections(
            tlbr=self.tlbr[rows],
            xyah=self.xyah[rows],
            score=self.score[rows],
            feature=self.feature[rows],
        )


@dataclass(frozen=True)
class _FrameMatches:
    """The outcome of one frame's matching steps (track rows and detection indices)."""

    track_rows: IndexArray  # matched track rows, pairwise with ``detections``
    detections: IndexArray
    newly_lost: IndexArray  # tracked rows left unmatched: they become lost
    failed_unconfirmed: IndexArray  # unconfirmed rows left unmatched: they are removed
    leftover_detections: IndexArray  # candidates for new tracks


class Tracker:
    """Online multi-object tracker over per-frame detection arrays.

    One instance tracks one video: IDs start at 1 per instance and are never
    reused. ``frame_rate`` scales how long lost tracks are kept.
    """

    def __init__(self, config: TrackerConfig | None = None, frame_rate: float = 30.0) -> None:
        valid_number = isinstance(frame_rate, Real) and not isinstance(frame_rate, bool)
        if not valid_number or not math.isfinite(frame_rate) or frame_rate <= 0:
            raise ValueError(f"frame_rate must be a positive finite number, got {frame_rate!r}")
        self.config = config if config is not None else TrackerConfig()
        self.frame_rate = float(frame_rate)
        self.max_frames_lost = self.config.max_frames_lost(self.frame_rate)
        self.kalman_filter = KalmanFilterXYAH(
            std_weight_position=self.config.kalman_std_weight_position,
            std_weight_velocity=self.config.kalman_std_weight_velocity,
        )
        self.frame_index = 0
        self._next_track_id = 1
        # None until the first non-empty frame decides: 0 = no embeddings, else their dimension.
        self._embedding_dim: int | None = None
        self._tracks = _TrackTable.empty(0)

    @property
    def num_tracked(self) -> int:
        return int(np.count_nonzero(self._tracks.state == TrackState.TRACKED))

    @property
    def num_lost(self) -> int:
        return int(np.count_nonzero(self._tracks.state == TrackState.LOST))

    def update(
        self,
        tlbr: npt.ArrayLike,
        score: npt.ArrayLike,
        embedding: npt.ArrayLike | None = None,
    ) -> FrameTracks:
        """Associate one frame's detections; returns the confirmed tracked objects.

        ``tlbr (N, 4)`` x1, y1, x2, y2 pixels, ``score (N,)``, ``embedding (N, D)``
        or None. Inputs are copied, never modified.
        """
        detections = self._validated_detections(tlbr, score, embedding)
        self.frame_index += 1
        config = self.config
        high, low = split_by_score(
            detections.score,
            config.min_score,
            config.low_score_threshold if config.association == "byte" else None,
        )
        # From here on the high-score detections are rows 0..len(high) - 1, the low-score ones follow.
        detections = detections.take(np.concatenate([high, low]))
        tracks = self._tracks
        was_lost = tracks.state == TrackState.LOST
        confirmed_tracked = (tracks.state == TrackState.TRACKED) & tracks.is_activated
        pool = np.flatnonzero(confirmed_tracked | was_lost)
        unconfirmed = np.flatnonzero((tracks.state == TrackState.TRACKED) & ~tracks.is_activated)

        # Lost tracks keep moving but stop growing or shrinking (height velocity zeroed).
        pool_mean = tracks.mean[pool]
        pool_mean[was_lost[pool], 7] = 0.0
        tracks.mean[pool], tracks.covariance[pool] = self.kalman_filter.predict(
            pool_mean, tracks.covariance[pool]
        )

        matches = self._match(pool, unconfirmed, detections, num_high=len(high))
        self._apply_matches(matches.track_rows, matches.detections, detections, was_lost)
        tracks.state[matches.newly_lost] = TrackState.LOST

        remove = (
            was_lost
            & (tracks.state == TrackState.LOST)
            & (self.frame_index - tracks.last_frame > self.max_frames_lost)
        )
        remove[matches.failed_unconfirmed] = True
        tracks = tracks.select(~remove)

        leftover = matches.leftover_detections
        births = leftover[detections.score[leftover] >= config.det_thresh]
        tracks = tracks.concatenate(self._new_tracks(births, detections))
        self._tracks = self._without_duplicates(tracks)
        return self._output()

    def _match(
        self, pool: IndexArray, unconfirmed: IndexArray, detections: _Detections, *, num_high: int
    ) -> _FrameMatches:
        """FairMOT's three matching steps (plus BYTE's), each on what the previous one left unmatched.

        Detection rows ``0..num_high - 1`` score at least ``min_score``; the rows after
        them are BYTE's low-score detections (none in fairmot mode).
        1. tracked + lost tracks (``pool``) by embedding + motion cost (IoU + motion without
           embeddings); 2. still-unmatched *tracked* tracks by IoU; BYTE: the tracked tracks
           still unmatched by IoU to the low-score detections; 3. unconfirmed tracks by IoU.
        Low-score detections never reach step 3, so they never start a track.
        """
        tracks, config = self._tracks, self.config
        high_detections = np.arange(num_high)
        low_detections = np.arange(num_high, len(detections.score))
        first_matches, unmatched_pool, unmatched_detections = linear_assignment(
            self._first_step_cost(pool, detections.take(slice(0, num_high))), self._first_step_threshold()
        )
        matched_rows = [pool[first_matches[:, 0]]]
        matched_detections = [high_detections[first_matches[:, 1]]]

        remaining_pool = pool[unmatched_pool]
        remaining_tracked = remaining_pool[tracks.state[remaining_pool] == TrackState.TRACKED]
        second_detections = high_detections[unmatched_detections]
        second_matches, unmatched_tracked, unmatched_detections = linear_assignment(
            iou_distance(tracks.tlbr(remaining_tracked), detections.tlbr[second_detections]),
            config.iou_match_threshold,
        )
        matched_rows.append(remaining_tracked[second_matches[:, 0]])
        matched_detections.append(second_detections[second_matches[:, 1]])

        still_tracked = remaining_tracked[unmatched_tracked]
        low_matches, still_unmatched, _ = linear_assignment(
            iou_distance(tracks.tlbr(still_tracked), detections.tlbr[low_detections]),
            config.low_score_match_threshold,
        )
        matched_rows.append(still_tracked[low_matches[:, 0]])
        matched_detections.append(low_detections[low_matches[:, 1]])

        third_detections = second_detections[unmatched_detections]
        third_matches, unmatched_unconfirmed, unmatched_detections = linear_assignment(
            iou_distance(tracks.tlbr(unconfirmed), detections.tlbr[third_detections]),
            config.unconfirmed_match_threshold,
        )
        matched_rows.append(unconfirmed[third_matches[:, 0]])
        matched_detections.append(third_detections[third_matches[:, 1]])
        return _FrameMatches(
            track_rows=np.concatenate(matched_rows),
            detections=np.concatenate(matched_detections),
            newly_lost=still_tracked[still_unmatched],
            failed_unconfirmed=unconfirmed[unmatched_unconfirmed],
            leftover_detections=third_detections[unmatched_detections],
        )

    def _first_step_cost(self, pool: IndexArray, detections: _Detections) -> FloatArray:
        tracks = self._tracks
        gating = self.kalman_filter.gating_distance(
            tracks.mean[pool], tracks.covariance[pool], detections.xyah
        )
        if self._uses_appearance():
            return fuse_motion(
                embedding_distance(tracks.feature[pool], detections.feature),
                gating,
                appearance_weight=self.config.embedding_weight,
                gating_threshold=self.config.gating_threshold,
            )
        cost = iou_distance(tracks.tlbr(pool), detections.tlbr)
        cost[gating > self.config.gating_threshold] = np.inf
        return cost

    def _first_step_threshold(self) -> float:
        if self._uses_appearance():
            return self.config.embedding_match_threshold
        return self.config.motion_iou_match_threshold

    def _uses_appearance(self) -> bool:
        # embedding_weight 0 asks for motion alone: the IoU path, as without embeddings. The fused
        # cost would be a squared Mahalanobis distance held to the embedding threshold (0.4),
        # which almost no pair passes.
        return bool(self._embedding_dim) and self.config.embedding_weight > 0

    def _apply_matches(
        self,
        rows: IndexArray,
        detection_indices: IndexArray,
        detections: _Detections,
        was_lost: npt.NDArray[np.bool_],
    ) -> None:
        """Kalman-correct and refresh every matched track in one batch."""
        if len(rows) == 0:
            return
        tracks = self._tracks
        tracks.mean[rows], tracks.covariance[rows] = self.kalman_filter.update(
            tracks.mean[rows], tracks.covariance[rows], detections.xyah[detection_indices]
        )
        # A re-found lost track restarts its tracklet length (FairMOT's re_activate).
        tracks.tracklet_len[rows] = np.where(was_lost[rows], 0, tracks.tracklet_len[rows] + 1)
        tracks.state[rows] = TrackState.TRACKED
        tracks.is_activated[rows] = True
        tracks.last_frame[rows] = self.frame_index
        tracks.score[rows] = detections.score[detection_indices]
        if self._embedding_dim:
            momentum = self.config.feature_momentum
            smoothed = (
                momentum * tracks.feature[rows] + (1.0 - momentum) * detections.feature[detection_indices]
            )
            tracks.feature[rows] = smoothed / np.linalg.norm(smoothed, axis=1, keepdims=True)

    def _new_tracks(self, indices: IndexArray, detections: _Detections) -> _TrackTable:
        count = len(indices)
        mean, covariance = self.kalman_filter.initiate(detections.xyah[indices])
        track_ids = np.arange(self._next_track_id, self._next_track_id + count, dtype=np.int64)
        self._next_track_id += count
        return _TrackTable(
            track_id=track_ids,
            mean=mean,
            covariance=covariance,
            feature=detections.feature[indices],
            score=detections.score[indices],
            state=np.full(count, TrackState.TRACKED, dtype=np.int8),
            is_activated=np.full(count, self.frame_index == 1),
            last_frame=np.full(count, self.frame_index, dtype=np.int64),
            start_frame=np.full(count, self.frame_index, dtype=np.int64),
            tracklet_len=np.zeros(count, dtype=np.int64),
        )

    def _without_duplicates(self, tracks: _TrackTable) -> _TrackTable:
        """Drop the younger of each tracked/lost pair that overlaps almost entirely."""
        tracked = np.flatnonzero(tracks.state == TrackState.TRACKED)
        lost = np.flatnonzero(tracks.state == TrackState.LOST)
        if len(tracked) == 0 or len(lost) == 0:
            return tracks
        distance = iou_distance(tracks.tlbr(tracked), tracks.tlbr(lost))
        tracked_pair, lost_pair = np.nonzero(distance < self.config.duplicate_iou_distance)
        if len(tracked_pair) == 0:
            return tracks
        age = tracks.last_frame - tracks.start_frame
        tracked_rows = tracked[tracked_pair]
        lost_rows = lost[lost_pair]
        lost_is_younger = age[tracked_rows] > age[lost_rows]
        drop = np.zeros(len(tracks), dtype=bool)
        drop[lost_rows[lost_is_younger]] = True
        drop[tracked_rows[~lost_is_younger]] = True
        return tracks.select(~drop)

    def _output(self) -> FrameTracks:
        tracks = self._tracks
        shown = np.flatnonzero((tracks.state == TrackState.TRACKED) & tracks.is_activated)
        tlbr = tracks.tlbr(shown)
        if self.config.filter_output:
            plausible = plausible_person_boxes(
                tlbr, self.config.min_output_area, self.config.max_output_aspect_ratio
            )
            shown, tlbr = shown[plausible], tlbr[plausible]
        result = FrameTracks(
            track_ids=tracks.track_id[shown].copy(),
            tlbr=tlbr.astype(np.float32),
            scores=tracks.score[shown].astype(np.float32),
        )
        for array in (result.track_ids, result.tlbr, result.scores):
            array.setflags(write=False)
        return result

    def _validated_detections(
        self, tlbr: npt.ArrayLike, score: npt.ArrayLike, embedding: npt.ArrayLike | None
    ) -> _Detections:
        boxes = _real_array(tlbr, "tlbr")
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"tlbr must have shape (N, 4), got {boxes.shape}")
        count = len(boxes)
        scores = _real_array(score, "score")
        if scores.shape != (count,):
            raise ValueError(f"score must have shape ({count},) to match tlbr, got {scores.shape}")
        if not np.isfinite(boxes).all():
            raise ValueError("tlbr contains NaN or infinite values")
        if not np.isfinite(scores).all():
            raise ValueError("score contains NaN or infinite values")
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        degenerate = np.flatnonzero((widths <= 0) | (heights <= 0))
        if len(degenerate):
            first = degenerate[0]
            raise ValueError(
                f"tlbr has {len(degenerate)} box(es) with non-positive width or height "
                f"(first: row {first}, {boxes[first].tolist()}); expected x1 < x2 and y1 < y2"
            )
        features = self._validated_features(embedding, count)
        return _Detections(tlbr=boxes, xyah=tlbr_to_xyah(boxes), score=scores, feature=features)

    def _validated_features(self, embedding: npt.ArrayLike | None, count: int) -> npt.NDArray[np.float32]:
        if embedding is None:
            if count == 0:
                return np.empty((0, self._embedding_dim or 0), dtype=np.float32)
            if self._embedding_dim:
                raise ValueError(
                    f"embedding is None but earlier frames had {self._embedding_dim}-d embeddings; "
                    "a tracker cannot switch between embedding and IoU-only association"
                )
            self._set_embedding_dim(0)
            return np.empty((count, 0), dtype=np.float32)
        features = _real_array(embedding, "embedding")
        if features.ndim != 2 or len(features) != count:
            raise ValueError(f"embedding must have shape ({count}, D) to match tlbr, got {features.shape}")
        dim = features.shape[1]
        if dim == 0:
            raise ValueError("embedding has zero dimensions; pass embedding=None for IoU-only tracking")
        if self._embedding_dim == 0 and count > 0:
            raise ValueError(
                "embedding given but earlier frames had none; a tracker cannot switch between "
                "IoU-only and embedding association"
            )
        if self._embedding_dim is not None and self._embedding_dim != 0 and dim != self._embedding_dim:
            raise ValueError(
                f"embedding dimension changed from {self._embedding_dim} to {dim} between frames"
            )
        if not np.isfinite(features).all():
            raise ValueError("embedding contains NaN or infinite values")
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError(
                f"embedding has {int((norms == 0).sum())} all-zero row(s), which cannot be normalised"
            )
        if self._embedding_dim == 0:
            return np.empty((0, 0), dtype=np.float32)  # an empty frame of an IoU-only tracker
        self._set_embedding_dim(dim)
        return (features / norms).astype(np.float32)

    def _set_embedding_dim(self, dim: int) -> None:
        if self._embedding_dim is None:
            self._embedding_dim = dim
            self._tracks = _TrackTable.empty(dim)


def _real_array(values: npt.ArrayLike, name: str) -> FloatArray:
    """A float64 copy; rejects non-numeric input with a message naming the argument."""
    array = np.asarray(values)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be a real numeric array, got dtype {array.dtype}")
    return array.astype(np.float64, copy=True)
