"""The comparison's reports: ``results.md`` (tables), ``results.csv`` and ``results.json``.

Which metrics the table and the CSV show is defined once, in :data:`METRIC_COLUMNS` (the
accuracy metrics, by their :meth:`tracker.scoring.Scores.to_dict` names) and the timing
columns after them; the JSON file holds every value of ``Scores.to_dict``. A new metric is
one :class:`MetricColumn` entry (plus its value in ``Scores.to_dict``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tracker.config import TrackerConfig
from tracker.evaluation import OVERALL
from tracker.scoring import Scores, TrackerResult
from tracker.timing import STAGES


def format_percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def format_number(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


@dataclass(frozen=True)
class MetricColumn:
    """A value of :meth:`Scores.to_dict` shown in the reports."""

    key: str  # the Scores.to_dict name, also the CSV column name
    heading: str | None = None  # results.md table heading; None: CSV only
    format: Callable[[Any], str] = str  # how results.md shows the value


# Accuracy metrics, in CSV order; those with a heading are also table columns, in this order.
METRIC_COLUMNS: tuple[MetricColumn, ...] = (
    MetricColumn("hota", "HOTA", format_percent),
    MetricColumn("mota", "MOTA", format_percent),
    MetricColumn("idf1", "IDF1", format_percent),
    MetricColumn("deta", "DetA", format_percent),
    MetricColumn("assa", "AssA", format_percent),
    MetricColumn("loca"),
    MetricColumn("det_re"),
    MetricColumn("det_pr"),
    MetricColumn("ass_re"),
    MetricColumn("ass_pr"),
    MetricColumn("id_switches", "IDs"),
    MetricColumn("false_positives", "FP"),
    MetricColumn("false_negatives", "FN"),
    MetricColumn("precision"),
    MetricColumn("recall"),
    MetricColumn("mostly_tracked"),
    MetricColumn("mostly_lost"),
    MetricColumn("ap50", "AP@0.5", format_percent),
)
# Speed: the table's timing columns follow the metrics; the CSV has every stage and the frame count.
TABLE_TIMING_COLUMNS: tuple[MetricColumn, ...] = (
    MetricColumn("fps", "FPS", partial(format_number, digits=2)),
    MetricColumn("model_ms", "model ms", format_number),
    MetricColumn("teacher_ms", "teacher ms", format_number),
    MetricColumn("association_ms", "assoc. ms", partial(format_number, digits=2)),
    MetricColumn("decode_ms", "decode ms", format_number),
)
CSV_TIMING_COLUMNS: tuple[str, ...] = ("fps", *(f"{stage}_ms" for stage in STAGES), "frames")


def table_columns() -> tuple[MetricColumn, ...]:
    return (*(column for column in METRIC_COLUMNS if column.heading), *TABLE_TIMING_COLUMNS)


def csv_header() -> list[str]:
    return ["tracker", "label", "sequence", *(column.key for column in METRIC_COLUMNS), *CSV_TIMING_COLUMNS]


@dataclass(frozen=True)
class ComparisonSettings:
    """How the comparison was run; written into results.md and results.json."""

    sequences: tuple[str, ...]  # the folders as given
    frames: tuple[int, int] | None  # inclusive range; None: all frames
    benchmarks: str  # "name: protocol" per sequence
    tracker_config: TrackerConfig
    device: str
    threads: int | None
    notes: tuple[str, ...]

    @property
    def frames_description(self) -> str:
        return "all" if self.frames is None else f"{self.frames[0]}..{self.frames[1]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequences": list(self.sequences),
            "frames": None if self.frames is None else list(self.frames),
            "frames_description": self.frames_description,
            "benchmarks": self.benchmarks,
            "tracker_config": self.tracker_config.to_dict(),
            "device": self.device,
            "threads": self.threads,
            "notes": list(self.notes),
        }


def write_reports(out: Path, results: Sequence[TrackerResult], settings: ComparisonSettings) -> str:
    """Write results.md, results.csv and results.json to ``out``; returns the markdown report."""
    report = markdown_report(results, settings)
    (out / "results.md").write_text(report)
    write_csv(out / "results.csv", results)
    write_json(out / "results.json", results, settings)
    return report


# ---- results.md ---------------------------------------------------------------------------------


def markdown_report(results: Sequence[TrackerResult], settings: ComparisonSettings) -> str:
    sequence_names = [name for name in results[0].per_sequence if name != OVERALL]
    lines = [
        "# Tracker comparison",
        "",
        f"Sequences: {', '.join(sequence_names)}; frames: {settings.frames_description}.",
        "MOTA, IDF1 and AP@0.5 in %; FPS counts model + teacher + association (ms per frame), "
        "not image decoding; the first frame of each run is not timed.",
        "",
        "## All sequences",
        "",
        *markdown_table([(result.label, result.overall) for result in results]),
    ]
    if len(sequence_names) > 1:
        for name in sequence_names:
            lines += ["", f"## {name}", ""]
            lines += markdown_table([(result.label, result.per_sequence[name]) for result in results])
    lines += ["", "## Trackers", ""]
    for result in results:
        dropped = result.overall.dropped_detections
        extra = f" ({dropped} detections without a usable crop/embedding skipped)" if dropped else ""
        lines.append(f"- **{result.label}** (`{result.key}`): {result.description}{extra}")
    lines += [
        "",
        "## Settings",
        "",
        f"- protocol: {settings.benchmarks}",
        f"- tracker config: `{json.dumps(settings.tracker_config.to_dict())}`",
    ]
    lines += [f"- note: {note}" for note in settings.notes]
    return "\n".join(lines) + "\n"


def markdown_table(rows: Sequence[tuple[str, Scores]]) -> list[str]:
    """A table with a ``Tracker`` column, then :func:`table_columns`; one row per (label, scores)."""
    columns = table_columns()
    lines = [
        "| " + " | ".join(["Tracker", *(column.heading or column.key for column in columns)]) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|",
    ]
    for label, scores in rows:
        values = scores.to_dict()
        cells = [label, *(column.format(values[column.key]) for column in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ---- results.csv / results.json -----------------------------------------------------------------


def write_csv(path: Path, results: Sequence[TrackerResult]) -> None:
    """One row per tracker and sequence (OVERALL included), the columns of :func:`csv_header`."""
    header = csv_header()
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        for result in results:
            for sequence_name, scores in result.per_sequence.items():
                values = scores.to_dict()
                writer.writerow(
                    [result.key, result.label, sequence_name, *(values[name] for name in header[3:])]
                )


def write_json(path: Path, results: Sequence[TrackerResult], settings: ComparisonSettings) -> None:
    """Everything: the settings and, per tracker and sequence, every value of ``Scores.to_dict``."""
    payload = {
        "settings": settings.to_dict(),
        "trackers": [
            {
                "key": result.key,
                "label": result.label,
                "description": result.description,
                "results": {name: scores.to_dict() for name, scores in result.per_sequence.items()},
            }
            for result in results
        ],
    }
    path.write_text(json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n")


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value
