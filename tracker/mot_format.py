"""MOTChallenge text rows: ``frame,id,x,y,w,h,score,-1,-1,-1`` (tracker results).

Rows are kept as ``float64 (R, 10)`` arrays. Coordinates are written exactly as
the tracker produced them (the detector's pixel convention); no 1-based shift.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tdt.boxes import tlbr_to_tlwh
from tracker.association import FrameTracks

MOT_RESULT_COLUMNS = 10

FloatArray = npt.NDArray[np.float64]


class MotFormatError(ValueError):
    """A malformed MOTChallenge text file: names the file and line."""


def frame_tracks_to_mot_rows(frame: int, tracks: FrameTracks) -> FloatArray:
    """One frame's tracks as ``(K, 10)`` MOT rows (frame numbers are 1-based in MOT files)."""
    rows = np.full((len(tracks), MOT_RESULT_COLUMNS), -1.0)
    rows[:, 0] = frame
    rows[:, 1] = tracks.track_ids
    rows[:, 2:6] = tlbr_to_tlwh(tracks.tlbr)
    rows[:, 6] = tracks.scores
    return rows


def stack_mot_rows(per_frame: Iterable[FloatArray]) -> FloatArray:
    chunks = [np.asarray(rows, dtype=np.float64).reshape(-1, MOT_RESULT_COLUMNS) for rows in per_frame]
    if not chunks:
        return np.empty((0, MOT_RESULT_COLUMNS))
    return np.concatenate(chunks)


def write_mot_results(path: str | Path, rows: npt.ArrayLike) -> None:
    """Write ``(R, 10)`` rows; the file is written under a temporary name, then renamed."""
    table = np.asarray(rows, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != MOT_RESULT_COLUMNS:
        raise ValueError(f"MOT result rows must have shape (R, 10), got {table.shape}")
    if not np.isfinite(table).all():
        raise ValueError("MOT result rows contain NaN or infinite values")
    lines = [
        f"{int(row[0])},{int(row[1])},{row[2]:.2f},{row[3]:.2f},{row[4]:.2f},{row[5]:.2f},"
        f"{_format_number(row[6])},{_format_number(row[7])},{_format_number(row[8])},"
        f"{_format_number(row[9])}\n"
        for row in table
    ]
    destination = Path(path)
    temporary = destination.with_name(destination.name + ".partial")
    temporary.write_text("".join(lines))
    temporary.replace(destination)


def read_mot_file(path: str | Path, min_columns: int = 6) -> FloatArray:
    """Read a comma-separated MOT file (gt, det or results) into a float64 array.

    Every row must have the same number of columns (at least ``min_columns``);
    an empty file gives ``(0, min_columns)``.
    """
    source = Path(path)
    rows: list[list[float]] = []
    for line_number, line in enumerate(source.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        try:
            values = [float(field) for field in fields]
        except ValueError as error:
            raise MotFormatError(f"{source}:{line_number}: non-numeric field ({error})") from error
        if rows and len(values) != len(rows[0]):
            raise MotFormatError(
                f"{source}:{line_number}: {len(values)} columns, earlier rows have {len(rows[0])}"
            )
        if len(values) < min_columns:
            raise MotFormatError(
                f"{source}:{line_number}: {len(values)} columns, need at least {min_columns}"
            )
        if not all(math.isfinite(value) for value in values):
            raise MotFormatError(f"{source}:{line_number}: NaN or infinite value")
        rows.append(values)
    if not rows:
        return np.empty((0, min_columns))
    return np.asarray(rows, dtype=np.float64)


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"
