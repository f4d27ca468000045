"""Rendering tracks onto frames and into an mp4 (cv2 ``VideoWriter``, ``mp4v`` codec).

Each track gets a stable colour from its ID, a box, an ID label and a short
trail of its recent foot points (bottom centre of the box), which shows
identity switches at a glance: a trail that jumps between people. A track that
is lost keeps its trail for ``trail_length`` frames (drawn again if re-found).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np
import numpy.typing as npt

from tracker.association import FrameTracks

DEFAULT_TRAIL_LENGTH = 20
MP4_CODEC = "mp4v"
# Hues stepped by the golden ratio stay far apart for consecutive IDs.
_GOLDEN_RATIO_CONJUGATE = 0.618033988749895


class RenderError(OSError):
    """The video cannot be written (codec or path); one line for CLIs."""


def track_colour(track_id: int) -> tuple[int, int, int]:
    """A bright BGR colour, the same for an ID in every frame and every run."""
    hue = int(180 * ((track_id * _GOLDEN_RATIO_CONJUGATE) % 1.0))
    pixel = np.array([[[hue, 220, 255]]], dtype=np.uint8)
    blue, green, red = cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0]
    return int(blue), int(green), int(red)


class TrackPainter:
    """Draws boxes, IDs and trails; remembers each track's recent foot points."""

    def __init__(self, trail_length: int = DEFAULT_TRAIL_LENGTH, banner: str = "") -> None:
        if trail_length < 0:
            raise ValueError(f"trail length must be >= 0, got {trail_length}")
        self.trail_length = trail_length
        self.banner = banner
        self._trails: dict[int, deque[tuple[int, int, int]]] = {}  # id -> (frame, x, y)

    def draw(
        self, image_bgr: npt.NDArray[np.uint8], tracks: FrameTracks, frame: int
    ) -> npt.NDArray[np.uint8]:
        """An annotated copy of ``image_bgr`` (the input is not modified)."""
        canvas = image_bgr.copy()
        scale = max(canvas.shape[0] / 720.0, 0.5)
        thickness = max(1, round(2 * scale))
        self._remember(tracks, frame)
        for track_id in tracks.track_ids.tolist():
            trail = self._trails.get(track_id, ())
            if len(trail) > 1:
                points = np.array([(x, y) for _, x, y in trail], dtype=np.int32)
                cv2.polylines(canvas, [points], False, track_colour(track_id), thickness, cv2.LINE_AA)
        for track_id, box in zip(tracks.track_ids.tolist(), tracks.tlbr, strict=True):
            colour = track_colour(track_id)
            x1, y1, x2, y2 = (round(float(v)) for v in box)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
            _label(canvas, str(track_id), (x1, y1), colour, scale)
        heading = f"frame {frame}  tracks {len(tracks)}"
        _label(
            canvas,
            f"{self.banner}  {heading}" if self.banner else heading,
            (0, 0),
            (40, 40, 40),
            scale,
            below=True,
        )
        return canvas

    def _remember(self, tracks: FrameTracks, frame: int) -> None:
        for track_id, box in zip(tracks.track_ids.tolist(), tracks.tlbr, strict=True):
            trail = self._trails.setdefault(track_id, deque(maxlen=max(self.trail_length, 1)))
            trail.append((frame, round(float(box[0] + box[2]) / 2), round(float(box[3]))))
        stale = [
            track_id
            for track_id, trail in self._trails.items()
            if self.trail_length == 0 or frame - trail[-1][0] > self.trail_length
        ]
        for track_id in stale:
            del self._trails[track_id]


def _label(
    canvas: np.ndarray,
    text: str,
    corner: tuple[int, int],
    colour: tuple[int, int, int],
    scale: float,
    *,
    below: bool = False,
) -> None:
    font_scale = 0.5 * scale
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
    x, y = corner
    top = y if below else max(y - height - baseline - 2, 0)
    cv2.rectangle(canvas, (x, top), (x + width + 4, top + height + baseline + 2), colour, cv2.FILLED)
    cv2.putText(
        canvas,
        text,
        (x + 2, top + height + 1),
        cv2.FONT_HERSHEY_SIMPLEX,
        font_scale,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )


def write_still(path: Path, drawn_bgr: npt.NDArray[np.uint8]) -> None:
    """Save one rendered frame as an image (format from the suffix, e.g. .png)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), drawn_bgr):
        raise RenderError(f"{path}: cv2 cannot write this image")


class TrackVideoWriter:
    """Writes annotated frames to an mp4; the writer opens on the first frame (its size)."""

    def __init__(
        self, path: Path, frame_rate: float, trail_length: int = DEFAULT_TRAIL_LENGTH, banner: str = ""
    ) -> None:
        self.path = Path(path)
        self.frame_rate = frame_rate
        self.painter = TrackPainter(trail_length, banner)
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self.frames_written = 0

    def write(
        self, image_bgr: npt.NDArray[np.uint8], tracks: FrameTracks, frame: int
    ) -> npt.NDArray[np.uint8]:
        """Draw and append one frame; returns the drawn frame (e.g. to save it as a still)."""
        height, width = image_bgr.shape[:2]
        writer = self._writer if self._writer is not None else self._open((width, height))
        if self._size != (width, height):
            raise RenderError(f"{self.path}: frame {frame} is {width}x{height}, the video is {self._size}")
        drawn = self.painter.draw(image_bgr, tracks, frame)
        writer.write(drawn)
        self.frames_written += 1
        return drawn

    def _open(self, size: tuple[int, int]) -> cv2.VideoWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fourcc = cv2.VideoWriter.fourcc(*MP4_CODEC)
        writer = cv2.VideoWriter(str(self.path), fourcc, self.frame_rate, size)
        if not writer.isOpened():
            raise RenderError(f"{self.path}: cv2 cannot write an {MP4_CODEC} video here")
        self._writer, self._size = writer, size
        return writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> TrackVideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
