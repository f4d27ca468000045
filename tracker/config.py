"""Every threshold of the association in one typed, frozen dataclass.

Defaults are FairMOT's (``conf_thres`` 0.4, ``track_buffer`` 30, λ 0.98, cosine
threshold 0.4, IoU distances 0.5 / 0.7, duplicate IoU distance 0.15, feature
EMA 0.9, Kalman noise weights 1/20 and 1/160, output boxes with area > 100 and
width / height <= 1.6). ``association: byte`` adds ByteTrack's second pass over
low-score detections (low threshold 0.1, IoU distance 0.5, as ByteTrack). Dicts
and YAML files are read by the project's one strict loader
(:class:`tdt.config.PlainConfig`): missing keys take these defaults, an unknown
key or a wrongly typed value is a :class:`TrackerConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from tdt.config import ConfigError, PlainConfig
from tracker.kalman import CHI2_95_4DOF

ASSOCIATION_MODES = ("fairmot", "byte")


class TrackerConfigError(ConfigError):
    """An invalid tracker configuration key or value."""


@dataclass(frozen=True)
class TrackerConfig(PlainConfig):
    error_type: ClassVar[type[ConfigError]] = TrackerConfigError

    # Detections scoring below this are dropped before any matching.
    min_score: float = 0.4
    # An unmatched detection starts a new track only when its score reaches this.
    det_thresh: float = 0.4
    # Step 1: cost = λ·cosine distance + (1 − λ)·squared Mahalanobis distance. 0: appearance is
    # not used, and step 1 is the gated IoU of detections without embeddings (below).
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
    # "fairmot": detections scoring below min_score are dropped. "byte" (ByteTrack's BYTE):
    # those scoring in [low_score_threshold, min_score) get one more step: matched by IoU to
    # the tracked tracks the high-score detections left, they keep occluded people's tracks
    # alive; they never start a track.
    association: str = "fairmot"
    low_score_threshold: float = 0.1
    # BYTE's low-score step: IoU distance of still-unmatched tracked tracks.
    low_score_match_threshold: float = 0.5
    # FairMOT writes only boxes with area > min_output_area px² and width / height <=
    # max_output_aspect_ratio (wider boxes are rarely one standing person); the tracker keeps
    # the others internally. Off: every confirmed track is output.
    filter_output: bool = True
    min_output_area: float = 100.0
    max_output_aspect_ratio: float = 1.6

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in (str, "str"):
                if not isinstance(value, str):
                    raise TrackerConfigError(f"{field.name} must be a string, got {value!r}")
                continue
            if field.type in (bool, "bool"):
                if not isinstance(value, bool):
                    raise TrackerConfigError(f"{field.name} must be true or false, got {value!r}")
                continue
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
        if self.association not in ASSOCIATION_MODES:
            raise TrackerConfigError(
                f"association must be one of {', '.join(ASSOCIATION_MODES)}, got {self.association!r}"
            )
        if self.association == "byte" and not 0.0 <= self.low_score_threshold <= self.min_score:
            raise TrackerConfigError(
                f"low_score_threshold must be in [0, min_score = {self.min_score}], got {self.low_score_threshold}"
            )
        positive = (
            "gating_threshold",
            "kalman_std_weight_position",
            "kalman_std_weight_velocity",
            "max_output_aspect_ratio",
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
            "low_score_match_threshold",
            "min_output_area",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise TrackerConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def lowest_used_score(self) -> float:
        """The lowest detection score the association looks at (a source may skip the rest)."""
        return self.low_score_threshold if self.association == "byte" else self.min_score

    def max_frames_lost(self, frame_rate: float) -> int:
        """How many frames a lost track survives at ``frame_rate`` (FairMOT's buffer_size)."""
        return int(frame_rate / 30.0 * self.track_buffer)
