"""Every threshold of the association in one typed, frozen dataclass.

Defaults are FairMOT's (``conf_thres`` 0.4, ``track_buffer`` 30, λ 0.98, cosine
threshold 0.4, IoU distances 0.5 / 0.7, duplicate IoU distance 0.15, feature
EMA 0.9, Kalman noise weights 1/20 and 1/160). Dicts and YAML files are read by
the project's one strict loader (:class:`tdt.config.PlainConfig`): missing keys
take these defaults, an unknown key or a wrongly typed value is a
:class:`TrackerConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from tdt.config import ConfigError, PlainConfig
from tracker.kalman import CHI2_95_4DOF


class TrackerConfigError(ConfigError):
    """An invalid tracker configuration key or value."""


@dataclass(frozen=True)
class TrackerConfig(PlainConfig):
    error_type: ClassVar[type[ConfigError]] = TrackerConfigError

    # Detections scoring below this are dropped before any matching.
    min_score: float = 0.4
    # An unmatched detection starts a new track only when its score reaches this.
    det_thresh: float = 0.4
    # Step 1: cost = λ·cosine distance + (1 − λ)·squared Mahalanobis distance.
    embedding_weight: float = 0.98
    # Pairs farther than this squared Mahalanobis distance cannot match (χ² 0.95, 4 dof).
    gating_threshold: float = CHI2_95_4DOF
    embedding_match_threshold: float = 0.4
    # Step 1 when detections carry no embeddings: gated IoU distance of tracked + lost tracks.
    motion_iou_match_threshold: float = 0.5
    # Step 2: IoU distance of still-unmatched tracked (not lost) tracks.
    iou_match_threshold: float = 0.5
    # Step 3: IoU distance of unconfirmed (single-detection) tracks.
    unconfirmed_match_threshold: float = 0.7
    # Frames a lost track is kept, at 30 fps; scaled by frame_rate / 30.
    track_buffer: int = 30
    # smoothed = momentum · smoothed + (1 − momentum) · new, then re-normalised.
    feature_momentum: float = 0.9
    # A tracked and a lost track closer than this IoU distance are duplicates.
    duplicate_iou_distance: float = 0.15
    kalman_std_weight_position: float = 1.0 / 20
    kalman_std_weight_velocity: float = 1.0 / 160

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = int if field.type in (int, "int") else float
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TrackerConfigError(f"{field.name} must be a number, got {value!r}")
            if expected is int and not isinstance(value, int):
                raise TrackerConfigError(f"{field.name} must be an integer, got {value!r}")
            if not math.isfinite(value):
                raise TrackerConfigError(f"{field.name} must be finite, got {value!r}")
        if not 0.0 <= self.embedding_weight <= 1.0:
            raise TrackerConfigError(f"embedding_weight must be in [0, 1], got {self.embedding_weight}")
        if not 0.0 <= self.feature_momentum < 1.0:
            raise TrackerConfigError(f"feature_momentum must be in [0, 1), got {self.feature_momentum}")
        if self.track_buffer < 0:
            raise TrackerConfigError(f"track_buffer must be >= 0, got {self.track_buffer}")
        positive = (
            "gating_threshold",
            "kalman_std_weight_position",
            "kalman_std_weight_velocity",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise TrackerConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        non_negative = (
            "embedding_match_threshold",
            "motion_iou_match_threshold",
            "iou_match_threshold",
            "unconfirmed_match_threshold",
            "duplicate_iou_distance",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise TrackerConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def max_frames_lost(self, frame_rate: float) -> int:
        """How many frames a lost track survives at ``frame_rate`` (FairMOT's buffer_size)."""
        return int(frame_rate / 30.0 * self.track_buffer)
