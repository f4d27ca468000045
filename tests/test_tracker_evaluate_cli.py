"""python -m tracker.evaluate: file and folder forms, JSON, and one-line errors naming the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import motmetrics
import numpy as np
import pytest
from conftest import REPO_ROOT

from tracker.evaluate import main
from tracker.evaluation import OVERALL, evaluate_sequences
from tracker.mot_format import read_mot_file, write_mot_results

TUD_CAMPUS = Path(motmetrics.__file__).resolve().parent / "data" / "TUD-Campus"


@pytest.fixture
def tud_campus() -> Path:
    if not TUD_CAMPUS.is_dir():
        pytest.skip(f"motmetrics' bundled TUD-Campus data not found at {TUD_CAMPUS}")
    return TUD_CAMPUS


def test_file_form_prints_the_sequence_and_the_combined_line(tud_campus, capsys):
    assert main(["--gt", str(tud_campus / "gt.txt"), "--results", str(tud_campus / "test.txt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "protocol: test MOT15"
    assert lines[1].split()[:5] == ["HOTA", "DetA", "AssA", "MOTA", "IDF1"]
    assert lines[2].split()[:6] == ["test", "39.1", "41.8", "36.9", "52.6", "55.8"]
    assert lines[3].split()[0] == OVERALL and len(lines) == 4


def write_results_folder(mot17_mini_dir: Path, folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each MOT17-mini sequence's targets shifted by 3 px and with one identity swapped, as results."""
    sequences = {}
    for name in ("MOT17-02-FRCNN", "MOT17-04-FRCNN"):
        gt = read_mot_file(mot17_mini_dir / name / "gt" / "gt.txt")
        targets = gt[(gt[:, 6] == 1) & (gt[:, 7] == 1)]
        results = np.full((len(targets), 10), -1.0)
        results[:, :6] = targets[:, :6]
        results[:, 2] += 3.0
        results[:, 6] = 1.0
        swap = results[:, 0] >= 3
        results[swap & (results[:, 1] == targets[0, 1]), 1] = 9999
        write_mot_results(folder / f"{name}.txt", results)
        sequences[name] = (gt, results)
    return sequences


def test_folder_form_as_json_in_a_fresh_process_matches_the_library(mot17_mini_dir, tmp_path):
    sequences = write_results_folder(mot17_mini_dir, tmp_path)
    command = [sys.executable, "-m", "tracker.evaluate", "--gt-root", str(mot17_mini_dir)]
    command += ["--results-root", str(tmp_path), "--protocol", "mot17", "--json"]
    finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout)  # nothing but JSON on stdout
    assert report["protocols"] == {"MOT17-02-FRCNN": "MOT17", "MOT17-04-FRCNN": "MOT17"}
    expected = evaluate_sequences(sequences, "MOT17")
    assert set(report["metrics"]) == {"MOT17-02-FRCNN", "MOT17-04-FRCNN", OVERALL}
    for name, metrics in expected.items():
        got = report["metrics"][name]
        for field in ("hota", "deta", "assa", "mota", "idf1", "id_switches", "false_positives"):
            assert got[field] == pytest.approx(getattr(metrics, field)), (name, field)
    assert report["metrics"][OVERALL]["id_switches"] >= 1 and report["metrics"][OVERALL]["hota"] < 1.0


def run_error(arguments: list[str], capsys) -> str:
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    return error


def test_bad_files_give_one_line_errors_naming_file_and_line(tud_campus, tmp_path, capsys):
    gt = str(tud_campus / "gt.txt")
    missing = tmp_path / "nothing.txt"
    assert f"{missing}: no such results file" in run_error(["--gt", gt, "--results", str(missing)], capsys)
    assert f"{missing}: no such ground truth file" in run_error(
        ["--gt", str(missing), "--results", gt], capsys
    )
    malformed = tmp_path / "malformed.txt"
    malformed.write_text("1,1,10,10,20,40,1,-1,-1,-1\n1,2,10,abc,20,40,1,-1,-1,-1\n")
    assert f"{malformed}:2: non-numeric field" in run_error(["--gt", gt, "--results", str(malformed)], capsys)
    short = tmp_path / "short.txt"
    short.write_text("1,1,10,10\n")
    assert f"{short}:1: 4 columns, need at least 6" in run_error(
        ["--gt", gt, "--results", str(short)], capsys
    )
    repeated = tmp_path / "repeated.txt"
    repeated.write_text(
        "1,1,10,10,20,40,1,-1,-1,-1\n2,5,10,10,20,40,1,-1,-1,-1\n2,5,50,10,20,40,1,-1,-1,-1\n"
    )
    assert f"{repeated}: id 5 appears more than once in frame 2" in run_error(
        ["--gt", gt, "--results", str(repeated)], capsys
    )
    assert "no row of class 1" in run_error(
        ["--gt", gt, "--results", str(tud_campus / "test.txt"), "--protocol", "mot17"], capsys
    )


def test_bad_folders_and_option_mixes(mot17_mini_dir, tmp_path, capsys):
    (tmp_path / "MOT17-02-FRCNN.txt").write_text("1,1,10,10,20,40,1,-1,-1,-1\n")
    error = run_error(["--gt-root", str(mot17_mini_dir), "--results-root", str(tmp_path)], capsys)
    assert f"no results for 1 of 2 sequence(s): {tmp_path / 'MOT17-04-FRCNN.txt'}" in error
    assert "no <sequence>/gt/gt.txt" in run_error(
        ["--gt-root", str(tmp_path), "--results-root", str(tmp_path)], capsys
    )
    for arguments in (
        ["--gt", "a.txt"],
        ["--gt", "a.txt", "--results", "b.txt", "--gt-root", "c"],
        ["--gt-root", "c"],
        [],
        ["--gt", "a.txt", "--results", "b.txt", "--protocol", "mot19"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(arguments)
        assert exit_info.value.code == 2
