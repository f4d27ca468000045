"""Every number tracker.evaluation prints equals TrackEval's, on real sequences and tracker outputs.

The reference is TrackEval's own MOTChallenge pipeline (tests/trackeval_reference.py):
its file reader, its preprocessing and its HOTA / CLEAR / Identity classes.
"""

from __future__ import annotations

from pathlib import Path

import motmetrics
import numpy as np
import pytest
from trackeval_reference import trackeval_results

from tracker import Tracker, TrackerConfig
from tracker.evaluation import OVERALL, MotMetrics, evaluate_sequences, prepare_sequence
from tracker.mot_format import frame_tracks_to_mot_rows, read_mot_file, stack_mot_rows
from tracker.sequence import open_sequence

MOTMETRICS_DATA = Path(motmetrics.__file__).resolve().parent / "data"
TOLERANCE = 1e-4


def assert_parity(
    sequences: dict[str, tuple[np.ndarray, np.ndarray]], benchmark: str
) -> dict[str, MotMetrics]:
    lengths = {
        name: int(max(gt[:, 0].max(), results[:, 0].max())) for name, (gt, results) in sequences.items()
    }
    reference = trackeval_results(sequences, benchmark, lengths)
    ours = evaluate_sequences(
        sequences, benchmark, frames={name: range(1, length + 1) for name, length in lengths.items()}
    )
    for name in [*sequences, OVERALL]:
        expected = reference["COMBINED_SEQ" if name == OVERALL else name]
        got = ours[name]
        where = f"{benchmark} {name}"
        hota = expected["HOTA"]
        for field, key in [("hota", "HOTA"), ("deta", "DetA"), ("assa", "AssA"), ("loca", "LocA")]:
            assert getattr(got, field) == pytest.approx(float(np.mean(hota[key])), abs=TOLERANCE), where
        for field, key in [
            ("det_re", "DetRe"),
            ("det_pr", "DetPr"),
            ("ass_re", "AssRe"),
            ("ass_pr", "AssPr"),
        ]:
            assert getattr(got, field) == pytest.approx(float(np.mean(hota[key])), abs=TOLERANCE), where
        clear, identity = expected["CLEAR"], expected["Identity"]
        assert got.mota == pytest.approx(clear["MOTA"], abs=TOLERANCE), where
        assert got.motchallenge_motp == pytest.approx(clear["MOTP"], abs=TOLERANCE), where
        assert got.idf1 == pytest.approx(identity["IDF1"], abs=TOLERANCE), where
        assert got.id_switches == clear["IDSW"], where
        assert (got.false_positives, got.false_negatives) == (clear["CLR_FP"], clear["CLR_FN"]), where
        assert (got.mostly_tracked, got.mostly_lost) == (clear["MT"], clear["ML"]), where
    return ours


def test_tud_campus_and_stadtmitte_match_trackeval():
    sequences = {}
    for name in ("TUD-Campus", "TUD-Stadtmitte"):
        folder = MOTMETRICS_DATA / name
        if not folder.is_dir():
            pytest.skip(f"motmetrics' bundled {name} data not found at {folder}")
        sequences[name] = (read_mot_file(folder / "gt.txt"), read_mot_file(folder / "test.txt"))
    ours = assert_parity(sequences, "MOT15")
    assert round(100 * ours["TUD-Campus"].hota, 1) == 39.1  # TrackEval's printed value
    assert 0.0 < ours[OVERALL].assa < 1.0 and ours[OVERALL].id_switches == 14


def track_boxes(rows: np.ndarray, config: TrackerConfig, frame_rate: float, seed: int) -> np.ndarray:
    """The project's tracker (IoU + motion) on ``rows``' boxes, thinned, jittered and randomly scored."""
    rng = np.random.default_rng(seed)
    tracker = Tracker(config, frame_rate=frame_rate)
    results = []
    for frame in range(1, int(rows[:, 0].max()) + 1):
        tlbr = rows[rows[:, 0] == frame, 2:6].copy()
        tlbr[:, 2:] += tlbr[:, :2]
        tlbr = tlbr[rng.random(len(tlbr)) >= 0.2]
        size = np.concatenate([tlbr[:, 2:] - tlbr[:, :2]] * 2, axis=1)
        tlbr += rng.normal(0.0, 0.05, tlbr.shape) * size
        tlbr[:, 2:] = np.maximum(tlbr[:, 2:], tlbr[:, :2] + 1.0)
        tracks = tracker.update(tlbr, rng.uniform(0.2, 1.0, len(tlbr)))
        results.append(frame_tracks_to_mot_rows(frame, tracks))
    return stack_mot_rows(results)


@pytest.mark.parametrize("association", ["fairmot", "byte"])
def test_pets09_tracker_output_matches_trackeval(pets_dir, association):
    sequence = open_sequence(pets_dir)
    ground_truth = sequence.read_ground_truth()
    assert ground_truth is not None and ground_truth.benchmark == "MOT15"
    config = TrackerConfig(association=association)
    targets = ground_truth.rows[ground_truth.is_target]
    results = track_boxes(targets, config, sequence.frame_rate, seed=0)
    ours = assert_parity({sequence.name: (ground_truth.rows, results)}, "MOT15")
    metrics = ours[sequence.name]
    assert metrics.id_switches > 0 and 0.2 < metrics.hota < 0.95, "a tracker output with errors to score"


@pytest.mark.parametrize("protocol", ["MOT17", "MOT20"])
def test_mot17_mini_tracker_output_on_every_class_matches_trackeval(mot17_mini_dir, protocol):
    sequences = {}
    for name in ("MOT17-02-FRCNN", "MOT17-04-FRCNN"):
        gt = read_mot_file(mot17_mini_dir / name / "gt" / "gt.txt")
        if protocol == "MOT20":
            gt[gt[:, 7] == 3, 7] = 6  # cars become non-MOT vehicles: distractors on MOT20 only
        # boxes of every class are tracked: the output hits distractors, cars and occluders
        results = track_boxes(gt, TrackerConfig(), frame_rate=30.0, seed=1)
        kept = sum(len(frame.predicted_ids) for frame in prepare_sequence(gt, results, protocol))
        assert kept < len(results), "some output lies on distractors and is removed"
        sequences[name] = (gt, results)
    ours = assert_parity(sequences, protocol)
    assert ours[OVERALL].false_positives > 0 and ours[OVERALL].num_matches > 0
