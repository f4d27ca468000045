"""MOT evaluation: motmetrics parity on TUD, MOTChallenge preprocessing, frame accounting.

Parity of every number with TrackEval's own pipeline: tests/test_evaluation_trackeval.py.
"""

from __future__ import annotations

from pathlib import Path

import motmetrics
import numpy as np
import pytest

from tracker.evaluation import (
    OVERALL,
    MotBenchmark,
    evaluate_sequences,
    format_summary,
    prepare_sequence,
    summarize,
)
from tracker.mot_format import read_mot_file

MOTMETRICS_DATA = Path(motmetrics.__file__).resolve().parent / "data"


def tud_sequences() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    sequences = {}
    for name in ("TUD-Campus", "TUD-Stadtmitte"):
        folder = MOTMETRICS_DATA / name
        if not folder.is_dir():
            pytest.skip(f"motmetrics' bundled {name} data not found at {folder}")
        sequences[name] = (read_mot_file(folder / "gt.txt"), read_mot_file(folder / "test.txt"))
    return sequences


def printed(value: float) -> float:
    return round(100 * value, 1)


def test_tud_campus_reproduces_the_motmetrics_readme_row():
    results = evaluate_sequences(tud_sequences(), MotBenchmark.MOT15)
    campus = results["TUD-Campus"]
    # README:  IDF1   IDP   IDR  Rcll  Prcn GT MT PT ML FP  FN IDs  FM  MOTA  MOTP
    #         55.8% 73.0% 45.1% 58.2% 94.1%  8  1  6  1 13 150   7   7 52.6% 0.277
    assert printed(campus.idf1) == 55.8
    assert printed(campus.idp) == 73.0
    assert printed(campus.idr) == 45.1
    assert printed(campus.recall) == 58.2
    assert printed(campus.precision) == 94.1
    assert campus.num_objects == 8
    assert (campus.mostly_tracked, campus.partially_tracked, campus.mostly_lost) == (1, 6, 1)
    assert (campus.false_positives, campus.false_negatives) == (13, 150)
    assert (campus.id_switches, campus.fragmentations) == (7, 7)
    assert printed(campus.mota) == 52.6
    assert round(campus.motp, 3) == 0.277
    # MOTChallenge devkit row of the same README: MOTP 72.3
    assert printed(campus.motchallenge_motp) == 72.3
    assert campus.num_frames == 71


def test_tud_stadtmitte_and_overall_match_motmetrics_own_test_values():
    results = evaluate_sequences(tud_sequences(), "MOT15")
    stadtmitte, overall = results["TUD-Stadtmitte"], results[OVERALL]
    # README: 64.5% 82.0% 53.1% 60.9% 94.0% 10 5 4 1 45 452 7 6 56.4% 0.346
    assert [printed(stadtmitte.idf1), printed(stadtmitte.mota), round(stadtmitte.motp, 3)] == [
        64.5,
        56.4,
        0.346,
    ]
    assert (stadtmitte.false_positives, stadtmitte.false_negatives, stadtmitte.id_switches) == (45, 452, 7)
    # motmetrics' test_motchallenge_files OVERALL row
    np.testing.assert_allclose(
        [
            overall.idf1,
            overall.idp,
            overall.idr,
            overall.recall,
            overall.precision,
            overall.mota,
            overall.motp,
        ],
        [0.624296, 0.799176, 0.512211, 0.602640, 0.940268, 0.555116, 0.330177],
        atol=1e-6,
    )
    assert (overall.num_objects, overall.mostly_tracked, overall.partially_tracked, overall.mostly_lost) == (
        18,
        6,
        10,
        2,
    )
    assert (overall.false_positives, overall.false_negatives, overall.id_switches) == (58, 602, 14)
    table = format_summary(results)
    assert "TUD-Campus" in table and "52.6" in table and "72.3" in table


def test_a_prediction_at_exactly_the_iou_threshold_matches_and_below_it_does_not():
    gt = np.array([[1, 1, 0.0, 0.0, 10.0, 10.0, 1, 1, 1.0]])
    at_half = evaluate_sequences({"s": (gt, np.array([[1, 7, 0.0, 0.0, 10.0, 20.0, 1, -1, -1, -1]]))})["s"]
    assert (at_half.num_matches, at_half.false_positives) == (1, 0)
    assert at_half.motchallenge_motp == pytest.approx(0.5)
    below = evaluate_sequences({"s": (gt, np.array([[1, 7, 0.0, 0.0, 10.0, 21.0, 1, -1, -1, -1]]))})["s"]
    assert (below.num_matches, below.false_positives, below.false_negatives) == (0, 1, 1)


def gt_row(frame, track_id, x, y, mark=1, cls=1, visibility=1.0, w=20.0, h=50.0):
    return [frame, track_id, x, y, w, h, mark, cls, visibility]


def result_row(frame, track_id, x, y, w=20.0, h=50.0):
    return [frame, track_id, x, y, w, h, 1.0, -1, -1, -1]


def test_every_ground_truth_frame_counts_even_without_predictions():
    gt = np.array([gt_row(frame, 1, 100, 100) for frame in (1, 2, 3, 4)])
    predictions = np.array([result_row(1, 7, 100, 100), result_row(2, 7, 101, 100)])
    metrics = evaluate_sequences({"seq": (gt, predictions)}, "MOT17")["seq"]
    assert metrics.num_frames == 4
    assert metrics.false_negatives == 2 and metrics.num_matches == 2
    assert metrics.mota == pytest.approx(0.5)
    # frames named explicitly count too (here: frames with neither gt nor predictions)
    prepared = prepare_sequence(gt, predictions, "MOT17", frames=range(1, 11))
    assert summarize({"seq": prepared})["seq"].num_frames == 10
    # a tracker that output nothing at all
    nothing = evaluate_sequences({"seq": (gt, np.empty((0, 10)))}, "MOT17")["seq"]
    assert (nothing.false_negatives, nothing.mota, nothing.num_frames) == (4, 0.0, 4)


def test_predictions_on_frames_without_ground_truth_are_false_positives():
    gt = np.array([gt_row(1, 1, 100, 100)])
    predictions = np.array([result_row(1, 1, 100, 100), result_row(5, 1, 100, 100)])
    metrics = evaluate_sequences({"seq": (gt, predictions)}, "MOT17")["seq"]
    assert (metrics.false_positives, metrics.num_frames) == (1, 2)


def test_mot17_removes_only_predictions_matched_to_distractor_classes():
    gt = np.array(
        [
            gt_row(1, 1, 100, 100),  # pedestrian target
            gt_row(1, 2, 112, 100, mark=0, cls=7),  # static person overlapping the target
            gt_row(1, 3, 300, 100, mark=0, cls=2),  # person on vehicle
            gt_row(1, 4, 400, 100, mark=0, cls=3),  # car, mark 0
            gt_row(1, 5, 500, 100, mark=0, cls=1),  # pedestrian marked "do not consider"
            gt_row(1, 6, 600, 100, mark=0, cls=8),  # distractor
        ]
    )
    predictions = np.array(
        [
            result_row(1, 10, 101, 100),  # on the target
            result_row(1, 11, 112, 100),  # on the static person next to it
            result_row(1, 12, 301, 101),  # on the person on vehicle
            result_row(1, 13, 401, 100),  # on the mark-0 car: not a distractor, a false positive
            result_row(1, 14, 500, 101),  # on the mark-0 pedestrian: a false positive too
            result_row(1, 15, 620, 100),  # beside the distractor, IoU < 0.5: stays a false positive
            result_row(1, 16, 900, 100),  # on nothing
        ]
    )
    metrics = evaluate_sequences({"seq": (gt, predictions)}, "MOT17")["seq"]
    assert metrics.num_objects == 1
    assert metrics.num_matches == 1 and metrics.false_negatives == 0
    assert metrics.false_positives == 4
    frame = prepare_sequence(gt, predictions, "MOT17")[0]
    assert frame.gt_ids.tolist() == [1]
    assert frame.predicted_ids.tolist() == [10, 13, 14, 15, 16]


def test_mot20_also_treats_non_mot_vehicles_as_distractors():
    gt = np.array([gt_row(1, 1, 100, 100), gt_row(1, 2, 300, 100, mark=1, cls=6)])
    predictions = np.array([result_row(1, 1, 100, 100), result_row(1, 2, 300, 100)])
    assert evaluate_sequences({"s": (gt, predictions)}, "MOT17")["s"].false_positives == 1
    assert evaluate_sequences({"s": (gt, predictions)}, "MOT20")["s"].false_positives == 0


def test_mot15_drops_zero_flagged_ground_truth_and_removes_no_prediction():
    # MOT15 gt: frame, id, x, y, w, h, flag, wx, wy, wz (no class column)
    gt = np.array(
        [
            [1, 1, 100, 100, 20, 50, 1, -1, -1, -1],
            [1, 2, 300, 100, 20, 50, 0, -1, -1, -1],
            [1, 3, 500, 100, 20, 50, 1, 7, 7, -1],
        ]
    )
    predictions = np.array([result_row(1, 1, 100, 100), result_row(1, 2, 300, 100)])
    metrics = evaluate_sequences({"s": (gt, predictions)}, "MOT15")["s"]
    assert metrics.num_objects == 2
    assert (metrics.num_matches, metrics.false_negatives, metrics.false_positives) == (1, 1, 1)


def test_mot17_mini_ground_truth_scored_against_itself(mot17_mini_dir):
    for sequence in ("MOT17-02-FRCNN", "MOT17-04-FRCNN"):
        gt = read_mot_file(mot17_mini_dir / sequence / "gt" / "gt.txt")
        targets = (gt[:, 6] == 1) & (gt[:, 7] == 1)
        distractors = np.isin(gt[:, 7], [2, 7, 8, 12])
        assert targets.any() and distractors.any() and (~targets & ~distractors).any()
        # the targets and the distractors submitted as tracks: a perfect score
        kept = gt[targets | distractors]
        predictions = np.concatenate([kept[:, :6], np.full((len(kept), 4), -1.0)], axis=1)
        predictions[:, 1] += 10_000 * kept[:, 7]  # unique ids across classes
        metrics = evaluate_sequences({sequence: (gt, predictions)}, "MOT17")[sequence]
        assert metrics.num_matches == int(targets.sum())
        assert (metrics.false_positives, metrics.false_negatives, metrics.id_switches) == (0, 0, 0)
        assert metrics.mota == 1.0 and metrics.idf1 == 1.0 and metrics.motp == pytest.approx(0.0)
        assert metrics.hota == pytest.approx(1.0) and metrics.assa == pytest.approx(1.0)
        # every gt row submitted: cars, occluders and mark-0 rows are false positives
        predictions = np.concatenate([gt[:, :6], np.full((len(gt), 4), -1.0)], axis=1)
        predictions[:, 1] += 10_000 * gt[:, 7]
        metrics = evaluate_sequences({sequence: (gt, predictions)}, "MOT17")[sequence]
        assert metrics.false_positives == int((~targets & ~distractors).sum())
        assert (metrics.false_negatives, metrics.id_switches) == (0, 0)


def test_invalid_rows_are_rejected():
    gt = np.array([gt_row(1, 1, 100, 100)])
    with pytest.raises(ValueError, match="repeated"):
        evaluate_sequences({"s": (gt, np.array([result_row(1, 1, 0, 0), result_row(1, 1, 5, 5)]))})
    with pytest.raises(ValueError, match=">= 8 columns"):
        evaluate_sequences({"s": (gt[:, :6], np.array([result_row(1, 1, 0, 0)]))}, "MOT17")
    with pytest.raises(ValueError, match="NaN"):
        evaluate_sequences({"s": (gt, np.array([result_row(1, 1, np.nan, 0)]))})
    with pytest.raises(ValueError, match="MOT19"):
        evaluate_sequences({"s": (gt, np.empty((0, 10)))}, "MOT19")
    with pytest.raises(ValueError, match="reserved"):
        summarize({OVERALL: prepare_sequence(gt, np.empty((0, 10)))})
    with pytest.raises(ValueError, match="unknown sequence"):
        evaluate_sequences({"s": (gt, np.empty((0, 10)))}, frames={"t": range(3)})
