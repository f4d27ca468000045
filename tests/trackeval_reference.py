"""TrackEval's own MOTChallenge pipeline as the reference for the evaluation's parity tests.

Runs ``trackeval.Evaluator`` with its ``MotChallenge2DBox`` dataset class on files
written to a temporary folder in TrackEval's layout, exactly as its
``run_mot_challenge.py`` script would: TrackEval reads the files, applies its
own preprocessing and computes HOTA, CLEAR and Identity.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

TRACKER_NAME = "under-test"


def trackeval_results(
    sequences: Mapping[str, tuple[np.ndarray, np.ndarray]], benchmark: str, lengths: Mapping[str, int]
) -> dict[str, dict[str, Any]]:
    """``{sequence or 'COMBINED_SEQ': {'HOTA': ..., 'CLEAR': ..., 'Identity': ...}}`` as TrackEval computes them."""
    trackeval = pytest.importorskip("trackeval", reason="TrackEval is the parity reference (make install)")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name, (gt, results) in sequences.items():
            gt_file = root / "gt" / name / "gt" / "gt.txt"
            gt_file.parent.mkdir(parents=True)
            np.savetxt(gt_file, gt, delimiter=",", fmt="%.6f")
            result_file = root / "trackers" / TRACKER_NAME / "data" / f"{name}.txt"
            result_file.parent.mkdir(parents=True, exist_ok=True)
            np.savetxt(result_file, results, delimiter=",", fmt="%.6f")
        dataset_config = {
            "GT_FOLDER": str(root / "gt"),
            "TRACKERS_FOLDER": str(root / "trackers"),
            "TRACKERS_TO_EVAL": [TRACKER_NAME],
            "BENCHMARK": benchmark,
            "SKIP_SPLIT_FOL": True,
            "SEQ_INFO": dict(lengths),
            "PRINT_CONFIG": False,
        }
        eval_config = {
            "USE_PARALLEL": False,
            "PRINT_RESULTS": False,
            "PRINT_CONFIG": False,
            "TIME_PROGRESS": False,
            "OUTPUT_SUMMARY": False,
            "OUTPUT_DETAILED": False,
            "PLOT_CURVES": False,
            "LOG_ON_ERROR": None,
        }
        quiet = {"PRINT_CONFIG": False}
        metrics = [
            trackeval.metrics.HOTA(),
            trackeval.metrics.CLEAR(quiet),
            trackeval.metrics.Identity(quiet),
        ]
        with contextlib.redirect_stdout(io.StringIO()):
            results, _ = trackeval.Evaluator(eval_config).evaluate(
                [trackeval.datasets.MotChallenge2DBox(dataset_config)], metrics
            )
    per_sequence = results["MotChallenge2DBox"][TRACKER_NAME]
    return {name: classes["pedestrian"] for name, classes in per_sequence.items()}
