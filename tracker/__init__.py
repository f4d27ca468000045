"""Association, MOT output and evaluation on plain numpy arrays.

Never imports torch, ``student`` or ``teacher`` (only the frame-source adapters
may). ``tracker.evaluation`` (TrackEval's metric classes, scipy) is imported on its own so that
importing the tracker or :func:`average_precision` stays light.
"""

from tracker.association import FrameTracks, Tracker, TrackState
from tracker.config import TrackerConfig, TrackerConfigError
from tracker.metrics import ImageDetections, ImageGroundTruth, average_precision
from tracker.mot_format import (
    frame_tracks_to_mot_rows,
    read_mot_file,
    stack_mot_rows,
    write_mot_results,
)

__all__ = [
    "FrameTracks",
    "ImageDetections",
    "ImageGroundTruth",
    "TrackState",
    "Tracker",
    "TrackerConfig",
    "TrackerConfigError",
    "average_precision",
    "frame_tracks_to_mot_rows",
    "read_mot_file",
    "stack_mot_rows",
    "write_mot_results",
]
