"""Association, MOT output and evaluation on plain numpy arrays.

Never imports torch, ``student`` or ``teacher`` (only the frame-source adapters
in :mod:`tracker.sources` and the CLI helpers in :mod:`tracker.cli` may, inside
functions). ``tracker.evaluation`` (TrackEval's metric classes, scipy) is imported on
its own so that importing the tracker stays light. :func:`average_precision` lives in
:mod:`tdt.detection_ap` (the student's evaluation uses it too) and is exported
here as part of the tracker's API.
"""

from tdt.detection_ap import ImageDetections, ImageGroundTruth, average_precision
from tracker.association import FrameTracks, Tracker, TrackState
from tracker.config import TrackerConfig, TrackerConfigError
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
