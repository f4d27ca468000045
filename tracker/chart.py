"""The comparison chart (``results.png``), drawn with cv2 because matplotlib is not a dependency.

Left panel: MOTA, IDF1 and AP@0.5 (%) of every tracker over all sequences; right panel: each
tracker's frames per second on a log scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from tracker.report import format_percent
from tracker.scoring import Scores, TrackerResult
from tracker.sources import SourceError

CHART_SIZE = (1200, 560)  # width, height
# Bars of the accuracy panel: legend name, Scores.to_dict key, BGR colour.
ACCURACY_BARS = (
    ("HOTA", "hota", (189, 103, 148)),
    ("MOTA", "mota", (180, 119, 31)),
    ("IDF1", "idf1", (14, 127, 255)),
    ("AP@0.5", "ap50", (44, 160, 44)),
)
_FPS_COLOUR = (40, 39, 214)
_INK = (30, 30, 30)
_GRID = (215, 215, 215)


def write_chart(path: Path, results: Sequence[TrackerResult], *, synthetic: bool = False) -> None:
    """Draw the chart of ``results`` and write it as an image to ``path``."""
    if not cv2.imwrite(str(path), draw_chart(results, synthetic=synthetic)):
        raise SourceError(f"{path}: cv2 could not write the chart")


def draw_chart(results: Sequence[TrackerResult], *, synthetic: bool = False) -> np.ndarray:
    """Left: MOTA, IDF1, AP@0.5 (%) per tracker; right: FPS per tracker on a log scale.

    ``synthetic``: every sequence was generated; a line under the panels says so.
    """
    width, height = CHART_SIZE
    canvas = np.full((height, width, 3), 255, np.uint8)
    top, bottom = 60, height - 70
    if synthetic:
        # Under the FPS panel, clear of the accuracy panel's legend.
        notice = "SYNTHETIC sequences (python -m pipeline.synth), not real footage"
        _text(canvas, notice, (width // 2 + 60, height - 22), 0.5)
    _draw_accuracy_panel(canvas, results, left=60, right=width // 2 - 20, top=top, bottom=bottom)
    _draw_fps_panel(canvas, results, left=width // 2 + 130, right=width - 40, top=top, bottom=bottom)
    return canvas


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.45, colour=_INK) -> None:
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _centred_text(canvas: np.ndarray, text: str, centre_x: int, y: int, scale: float = 0.45) -> None:
    (width, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    _text(canvas, text, (centre_x - width // 2, y), scale)


def _draw_accuracy_panel(
    canvas: np.ndarray, results: Sequence[TrackerResult], *, left: int, right: int, top: int, bottom: int
) -> None:
    _text(canvas, "accuracy (%), all sequences", (left, top - 30), 0.6)
    for tick in range(0, 101, 20):
        y = bottom - round((bottom - top) * tick / 100)
        cv2.line(canvas, (left, y), (right, y), _GRID, 1)
        _text(canvas, str(tick), (left - 35, y + 5))
    group_width = (right - left) / max(len(results), 1)
    bar_width = max(int(group_width / (len(ACCURACY_BARS) + 1)), 2)
    for index, result in enumerate(results):
        group_left = left + round(index * group_width + bar_width / 2)
        _draw_accuracy_bars(canvas, result.overall, group_left, bar_width, top=top, bottom=bottom)
        _centred_text(canvas, result.key, round(left + (index + 0.5) * group_width), bottom + 20)
    for slot, (name, _, colour) in enumerate(ACCURACY_BARS):
        x = left + slot * 110
        cv2.rectangle(canvas, (x, bottom + 35), (x + 14, bottom + 49), colour, cv2.FILLED)
        _text(canvas, name, (x + 20, bottom + 48))


def _draw_accuracy_bars(
    canvas: np.ndarray, scores: Scores, group_left: int, bar_width: int, *, top: int, bottom: int
) -> None:
    values = scores.to_dict()
    for slot, (_, key, colour) in enumerate(ACCURACY_BARS):
        value = values[key]
        x = group_left + slot * bar_width
        shown = 0.0 if math.isnan(value) else min(max(value, 0.0), 1.0)
        y = bottom - round((bottom - top) * shown)
        cv2.rectangle(canvas, (x, y), (x + bar_width - 3, bottom), colour, cv2.FILLED)
        _centred_text(canvas, format_percent(value), x + bar_width // 2, y - 5, 0.35)


def _draw_fps_panel(
    canvas: np.ndarray, results: Sequence[TrackerResult], *, left: int, right: int, top: int, bottom: int
) -> None:
    _text(canvas, "frames per second (log scale), all sequences", (left - 110, top - 30), 0.6)
    rates = [result.overall.timing.fps for result in results]
    finite = [rate for rate in rates if math.isfinite(rate) and rate > 0]
    low = math.floor(math.log10(min(finite))) if finite else -1
    high = max(math.ceil(math.log10(max(finite))), low + 1) if finite else 1
    row_height = (bottom - top) / max(len(results), 1)
    for exponent in range(low, high + 1):
        x = left + round((right - left) * (exponent - low) / (high - low))
        cv2.line(canvas, (x, top), (x, bottom), _GRID, 1)
        _centred_text(canvas, f"{10.0**exponent:g}", x, bottom + 20)
    for index, (result, rate) in enumerate(zip(results, rates, strict=True)):
        y = top + round(index * row_height + row_height * 0.2)
        bar_height = max(round(row_height * 0.6), 2)
        (label_width, _), _ = cv2.getTextSize(result.key, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        _text(canvas, result.key, (left - 8 - label_width, y + bar_height // 2 + 5))
        if not (math.isfinite(rate) and rate > 0):
            _text(canvas, "n/a", (left + 5, y + bar_height // 2 + 5))
            continue
        fraction = (math.log10(rate) - low) / (high - low)
        x = left + max(round((right - left) * fraction), 2)
        cv2.rectangle(canvas, (left, y), (x, y + bar_height), _FPS_COLOUR, cv2.FILLED)
        _text(canvas, f"{rate:.2f}", (min(x + 5, right - 50), y + bar_height // 2 + 5))
