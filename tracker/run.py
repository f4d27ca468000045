"""Run the association over a frame source: MOT rows, every scored detection and stage times.

Shared by ``tracker.track`` (one input) and ``tracker.compare`` (every tracker on every
sequence): :func:`run_sequence` decodes a sequence, runs a detection stage on each frame and
associates with a fresh :class:`~tracker.association.Tracker`; :func:`track_frames` does the
association part for any iterable of :class:`~tracker.sources.SourceFrame`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tracker.association import FrameTracks, Tracker
from tracker.config import TrackerConfig
from tracker.mot_format import frame_tracks_to_mot_rows, stack_mot_rows
from tracker.sequence import FrameRange, InputSequence, SequenceError
from tracker.sources import DetectionStage, FrameDetections, SourceFrame, source_frames
from tracker.timing import FrameTiming, TimingSummary

FrameCallback = Callable[[SourceFrame, FrameTracks], None]


@dataclass(frozen=True)
class TrackingRun:
    """One sequence tracked: MOT rows, every scored detection per frame (AP) and stage times."""

    sequence: str
    frame_numbers: tuple[int, ...]
    mot_rows: npt.NDArray[np.float64]  # (R, 10)
    scored_detections: tuple[FrameDetections, ...]  # one per frame, without embeddings
    timings: tuple[FrameTiming, ...]
    dropped_detections: int

    @property
    def timing(self) -> TimingSummary:
        return TimingSummary.of(self.timings)


def run_sequence(
    sequence: InputSequence,
    stage: DetectionStage,
    tracker_config: TrackerConfig,
    frame_range: FrameRange | None = None,
    *,
    show_progress: bool = False,
    progress_label: str | None = None,
    on_frame: FrameCallback | None = None,
) -> TrackingRun:
    """Track ``sequence`` (within ``frame_range``) with detections from ``stage``."""
    numbers = sequence.frame_numbers(frame_range)
    if numbers is not None and not numbers:
        wanted = "all" if frame_range is None else f"{frame_range.first}..{frame_range.last}"
        raise SequenceError(f"{sequence.name}: no frames in range {wanted}")
    frames = progress(
        source_frames(sequence, stage, frame_range),
        None if numbers is None else len(numbers),
        progress_label or sequence.name,
        enabled=show_progress,
    )
    tracker = Tracker(tracker_config, frame_rate=sequence.frame_rate)
    return track_frames(sequence.name, frames, tracker, on_frame)


def track_frames(
    sequence_name: str,
    frames: Iterable[SourceFrame],
    tracker: Tracker,
    on_frame: FrameCallback | None = None,
) -> TrackingRun:
    """Associate every frame's detections; times ``Tracker.update`` as the association stage."""
    numbers: list[int] = []
    rows: list[npt.NDArray[np.float64]] = []
    scored: list[FrameDetections] = []
    timings: list[FrameTiming] = []
    dropped = 0
    for frame in frames:
        detections = frame.detections
        started = time.perf_counter()
        tracks = tracker.update(detections.tlbr, detections.score, detections.embedding)
        association_seconds = time.perf_counter() - started
        numbers.append(frame.number)
        rows.append(frame_tracks_to_mot_rows(frame.number, tracks))
        scored.append(frame.scored_detections)
        timings.append(
            FrameTiming(
                decode_seconds=frame.timing.decode_seconds,
                model_seconds=frame.timing.model_seconds,
                teacher_seconds=frame.timing.teacher_seconds,
                association_seconds=association_seconds,
            )
        )
        dropped += frame.dropped
        if on_frame is not None:
            on_frame(frame, tracks)
    return TrackingRun(
        sequence=sequence_name,
        frame_numbers=tuple(numbers),
        mot_rows=stack_mot_rows(rows),
        scored_detections=tuple(scored),
        timings=tuple(timings),
        dropped_detections=dropped,
    )


def progress(
    frames: Iterable[SourceFrame], total: int | None, label: str, enabled: bool
) -> Iterable[SourceFrame]:
    """A tqdm progress bar on stderr around ``frames`` (or ``frames`` itself when disabled)."""
    if not enabled:
        return frames
    from tqdm import tqdm

    return tqdm(frames, total=total, desc=label, unit="frame", leave=False, file=sys.stderr)
