"""The comparison's report columns and the tracker CLIs' arguments -> typed configs (no models run)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from tracker import compare, report, track
from tracker.comparison import ComparisonConfig
from tracker.config import TrackerConfig, TrackerConfigError
from tracker.evaluation import OVERALL, MotMetrics
from tracker.report import MetricColumn, format_percent, markdown_table, write_csv
from tracker.scoring import Scores, TrackerResult
from tracker.sequence import FrameRange
from tracker.sources import OraclePerturbation, SourceError
from tracker.timing import FrameTiming, TimingSummary
from tracker.tracking import TrackingJob


def scores(mota: float, idp: float) -> Scores:
    metrics = MotMetrics(
        num_frames=3,
        num_objects=2,
        num_matches=5,
        mota=mota,
        motp=0.2,
        idf1=0.5,
        idp=idp,
        idr=0.4,
        precision=0.9,
        recall=0.8,
        id_switches=1,
        false_positives=2,
        false_negatives=3,
        fragmentations=0,
        mostly_tracked=1,
        partially_tracked=1,
        mostly_lost=0,
        hota=0.45,
        deta=0.5,
        assa=0.4,
        loca=0.8,
        det_re=0.6,
        det_pr=0.7,
        ass_re=0.5,
        ass_pr=0.6,
    )
    timing = TimingSummary.of([FrameTiming(model_seconds=0.05, association_seconds=0.01)] * 3)
    return Scores(metrics, ap50=0.75, timing=timing, dropped_detections=0)


def test_table_and_csv_columns_come_from_one_definition(monkeypatch, tmp_path):
    rows = markdown_table([("a tracker", scores(0.5, 0.6))])
    assert rows[0] == (
        "| Tracker | HOTA | MOTA | IDF1 | DetA | AssA | IDs | FP | FN | AP@0.5 | FPS | model ms | teacher ms "
        "| assoc. ms | decode ms |"
    )
    assert rows[2].startswith(
        "| a tracker | 45.0 | 50.0 | 50.0 | 50.0 | 40.0 | 1 | 2 | 3 | 75.0 | 16.67 | 50.0 | 0.0 | 10.00 |"
    )

    # One new entry adds a metric to the table (after the existing ones) and to the CSV.
    extended = (*report.METRIC_COLUMNS, MetricColumn("idp", "IDP", format_percent))
    monkeypatch.setattr(report, "METRIC_COLUMNS", extended)
    rows = markdown_table([("a tracker", scores(math.nan, 0.25))])
    assert rows[0].startswith(
        "| Tracker | HOTA | MOTA | IDF1 | DetA | AssA | IDs | FP | FN | AP@0.5 | IDP | FPS |"
    )
    assert rows[2].startswith(
        "| a tracker | 45.0 | n/a | 50.0 | 50.0 | 40.0 | 1 | 2 | 3 | 75.0 | 25.0 | 16.67 |"
    )
    result = TrackerResult("key", "a tracker", "stub", {"SEQ": scores(0.5, 0.25), OVERALL: scores(0.5, 0.25)})
    write_csv(tmp_path / "results.csv", [result])
    with open(tmp_path / "results.csv") as stream:
        written = list(csv.DictReader(stream))
    assert [row["sequence"] for row in written] == ["SEQ", OVERALL]
    assert float(written[0]["idp"]) == 0.25 and list(written[0])[-8:-6] == ["ap50", "idp"]


def test_compare_arguments_become_a_typed_config(tmp_path, monkeypatch):
    monkeypatch.delenv("TDT_TEACHER_WEIGHTS", raising=False)
    config_file = tmp_path / "tracker.yaml"
    config_file.write_text("track_buffer: 60\n")
    arguments = ["--sequences", "a", "b", "--out", str(tmp_path), "--oracle", "--oracle-jitter", "0.1"]
    arguments += ["--frames", "2", "9", "--tracker-config", str(config_file), "--no-progress"]
    config = compare.config_from_args(compare.build_parser().parse_args(arguments))
    assert isinstance(config, ComparisonConfig)
    assert config.sequences == (Path("a"), Path("b")) and config.frame_range == FrameRange(2, 9)
    assert config.oracle_perturbation == OraclePerturbation(jitter=0.1)
    assert config.tracker_config == TrackerConfig(track_buffer=60)
    assert config.needs_teacher and config.teacher is not None and config.teacher.weights is None
    assert not config.show_progress and config.threads is None

    def parsed(*extra: str):
        return compare.build_parser().parse_args(["--sequences", "a", "--out", "o", *extra])

    with pytest.raises(SourceError, match="nothing to compare"):
        compare.config_from_args(parsed())
    with pytest.raises(SourceError, match="oracle jitter"):
        compare.config_from_args(parsed("--oracle", "--oracle-jitter", "2"))
    with pytest.raises(SourceError, match="torch threads must be >= 1"):
        compare.config_from_args(parsed("--oracle", "--threads", "0"))
    config_file.write_text("track_buffer: -1\n")
    with pytest.raises(TrackerConfigError, match="tracker.yaml: TrackerConfig: track_buffer"):
        compare.config_from_args(parsed("--oracle", "--tracker-config", str(config_file)))


def test_track_arguments_become_a_typed_job(tmp_path, monkeypatch):
    monkeypatch.setenv("TDT_TEACHER_WEIGHTS", str(tmp_path / "from-env.pth"))
    base = ["--input", "clip.mp4", "--checkpoint", "c.pt", "--out", str(tmp_path)]
    job = track.job_from_args(track.build_parser().parse_args([*base, "--mode", "two-stage", "--fps", "7"]))
    assert isinstance(job, TrackingJob)
    assert job.mode == "two-stage" and job.frame_rate == 7.0 and job.frame_range is None
    assert job.teacher.weights == tmp_path / "from-env.pth" and not job.teacher_weights_given
    job = track.job_from_args(track.build_parser().parse_args([*base, "--teacher-weights", "w.pth"]))
    assert job.teacher.weights == Path("w.pth") and job.teacher_weights_given
    with pytest.raises(SourceError, match="--trail-length must be >= 0"):
        track.job_from_args(track.build_parser().parse_args([*base, "--trail-length", "-1"]))


def test_tracker_config_option_is_the_same_in_both_commands():
    def option(parser):
        return next(action for action in parser._actions if "--tracker-config" in action.option_strings)

    track_option, compare_option = option(track.build_parser()), option(compare.build_parser())
    assert track_option.help == compare_option.help and track_option.type is compare_option.type
