"""Detection AP@0.5 (VOC all-point interpolation) on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tdt.boxes import box_iou
from tdt.detection_ap import ImageDetections, ImageGroundTruth, average_precision

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 0.0, 30.0, 10.0]
C = [40.0, 0.0, 50.0, 10.0]
FAR = [100.0, 100.0, 110.0, 110.0]


def dets(boxes, scores):
    return ImageDetections(np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(scores, np.float32))


def gts(boxes, ignore=None):
    tlbr = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    return ImageGroundTruth(tlbr, None if ignore is None else np.array(ignore, dtype=bool))


def test_perfect_detections_give_one():
    assert average_precision([dets([A, B], [0.9, 0.8])], [gts([A, B])]) == 1.0


def test_half_recall_gives_half():
    assert average_precision([dets([A], [0.9])], [gts([A, B])]) == pytest.approx(0.5)


def test_false_positive_ranked_above_the_true_one_halves_precision():
    # ranking FP (0.9), TP (0.8): precision 1/2 at recall 1
    assert average_precision([dets([FAR, A], [0.9, 0.8])], [gts([A])]) == pytest.approx(0.5)
    # ranking TP (0.9), FP (0.8): precision 1 reached at full recall before the FP
    assert average_precision([dets([FAR, A], [0.8, 0.9])], [gts([A])]) == pytest.approx(1.0)


def test_all_point_interpolation_uses_the_precision_envelope():
    # ranking: TP, FP, TP over 2 gt: P/R points (1, .5), (.5, .5), (2/3, 1) -> .5*1 + .5*2/3
    detections = [dets([A, FAR, B], [0.9, 0.8, 0.7])]
    assert average_precision(detections, [gts([A, B])]) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_duplicate_detection_is_a_false_positive():
    shifted = [0.5, 0.0, 10.5, 10.0]
    assert average_precision([dets([A, shifted], [0.9, 0.95])], [gts([A])]) == pytest.approx(1.0)
    assert average_precision([dets([A, shifted], [0.9, 0.95]), dets([B], [0.99])], [gts([A]), gts([])]) == (
        pytest.approx(0.5)
    )


def test_detection_on_an_ignore_box_counts_neither_way():
    # the ignored gt is not in the recall denominator and the detection on it is no FP
    with_ignore = [dets([A, B], [0.9, 0.95])]
    assert average_precision(with_ignore, [gts([A, B], [False, True])]) == pytest.approx(1.0)
    # without the ignore flag the same detections are both true positives
    assert average_precision(with_ignore, [gts([A, B], [False, False])]) == pytest.approx(1.0)
    # a detection on nothing is a false positive, ranked first -> precision 1/2
    assert average_precision([dets([A, C], [0.9, 0.95])], [gts([A, B], [False, True])]) == pytest.approx(0.5)


def test_detection_prefers_a_real_box_to_an_overlapping_ignore_box():
    person = [0.0, 0.0, 10.0, 20.0]
    crowd = [0.0, 0.0, 10.0, 16.0]
    detection = [0.0, 0.0, 10.0, 17.0]  # IoU 0.94 with the ignore box, 0.85 with the person
    detections = [dets([detection], [0.9])]
    assert average_precision(detections, [gts([crowd, person], [True, False])]) == 1.0


def test_iou_threshold_is_inclusive():
    half = [0.0, 0.0, 10.0, 10.0]
    overlapping = [0.0, 0.0, 10.0, 20.0]  # IoU exactly 0.5
    assert box_iou([half], [overlapping])[0, 0] == 0.5
    assert average_precision([dets([half], [1.0])], [gts([overlapping])]) == 1.0


def test_multiple_images_are_ranked_together():
    detections = [dets([A], [0.9]), dets([FAR], [0.95]), dets([], [])]
    ground_truth = [gts([A]), gts([]), gts([B])]
    # ranking FP (0.95), TP (0.9) with 2 positives: area 0.5 * 0.5
    assert average_precision(detections, ground_truth) == pytest.approx(0.25)


def test_degenerate_inputs():
    assert math.isnan(average_precision([dets([A], [0.9])], [gts([A], [True])]))
    assert math.isnan(average_precision([], []))
    assert average_precision([dets([], [])], [gts([A])]) == 0.0
    with pytest.raises(ValueError, match="2 detection entries for 1"):
        average_precision([dets([A], [1.0])] * 2, [gts([A])])
    with pytest.raises(ValueError, match="score has shape"):
        average_precision([(np.array([A]), np.array([0.1, 0.2]))], [gts([A])])
    with pytest.raises(ValueError, match="ignore must be a bool array"):
        average_precision([dets([A], [1.0])], [(np.array([A]), np.array([0]))])
    with pytest.raises(ValueError, match="NaN"):
        average_precision([dets([[0, 0, np.nan, 1]], [1.0])], [gts([A])])


def test_inputs_are_not_modified():
    boxes = np.array([A, B], dtype=np.float32)
    scores = np.array([0.3, 0.9], dtype=np.float32)
    before = boxes.copy(), scores.copy()
    average_precision([(boxes, scores)], [(boxes, None)])
    np.testing.assert_array_equal(boxes, before[0])
    np.testing.assert_array_equal(scores, before[1])
