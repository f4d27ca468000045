"""Augmentation keeps boxes, identities, ignore flags and embeddings aligned, and pixels under boxes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from student.augment import (
    AugmentConfig,
    BoxTargets,
    augment_for_training,
    clip_and_filter,
    horizontal_flip,
    jitter_colours,
    letterbox_for_validation,
    place_image,
)

EMBEDDING_DIM = 6


def _targets_with_row_ids(boxes: np.ndarray, ignore: np.ndarray, rng: np.random.Generator) -> BoxTargets:
    """Identity i on row i, so any surviving row tells which original row it came from."""
    count = len(boxes)
    embeddings = rng.standard_normal((count, EMBEDDING_DIM)).astype(np.float32)
    embeddings[ignore] = np.nan
    return BoxTargets(boxes, np.arange(count), ignore, embeddings)


@st.composite
def scenes(draw):
    height = draw(st.integers(8, 90))
    width = draw(st.integers(8, 120))
    count = draw(st.integers(0, 12))
    corners = draw(
        st.lists(
            st.tuples(
                st.floats(0, width - 1), st.floats(0, height - 1), st.floats(1, width), st.floats(1, height)
            ),
            min_size=count,
            max_size=count,
        )
    )
    boxes = np.array(
        [[x, y, min(width, x + w), min(height, y + h)] for x, y, w, h in corners], dtype=np.float32
    ).reshape(-1, 4)
    ignore = np.array(draw(st.lists(st.booleans(), min_size=count, max_size=count)), dtype=bool)
    output_size = (draw(st.integers(8, 64)), draw(st.integers(8, 64)))
    seed = draw(st.integers(0, 2**32 - 1))
    policy = draw(st.sampled_from(["drop", "ignore"]))
    return height, width, boxes, ignore, output_size, seed, policy


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenes())
def test_rows_stay_aligned_through_flip_scale_and_crop(scene):
    height, width, boxes, ignore, output_size, seed, policy = scene
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    original = _targets_with_row_ids(boxes, ignore, rng)
    config = AugmentConfig(cut_box_policy=policy)

    result = augment_for_training(image, original, output_size, config, rng)

    out = result.targets
    assert result.image.shape == (*output_size, 3) and result.image.dtype == np.uint8
    assert len(out.boxes) == len(out.identities) == len(out.ignore) == len(out.embeddings)
    rows = out.identities
    assert len(np.unique(rows)) == len(rows), "a row was duplicated"
    np.testing.assert_array_equal(out.embeddings, original.embeddings[rows])  # NaN rows compare equal
    if policy == "drop":
        np.testing.assert_array_equal(out.ignore, original.ignore[rows])
    else:
        assert (out.ignore | ~original.ignore[rows]).all(), "an ignore region lost its flag"
    out_height, out_width = output_size
    assert (out.boxes[:, 0] >= 0).all() and (out.boxes[:, 2] <= out_width).all()
    assert (out.boxes[:, 1] >= 0).all() and (out.boxes[:, 3] <= out_height).all()
    assert (out.boxes[:, 2] - out.boxes[:, 0] >= config.min_box_size - 1e-4).all()
    assert (out.boxes[:, 3] - out.boxes[:, 1] >= config.min_box_size - 1e-4).all()

    # The placement explains every surviving box: original row mapped, then clipped.
    expected = result.placement.to_output(original.boxes[rows]).astype(np.float64)
    expected[:, 0::2] = expected[:, 0::2].clip(0, out_width)
    expected[:, 1::2] = expected[:, 1::2].clip(0, out_height)
    np.testing.assert_allclose(out.boxes, expected, atol=1e-3)

    # Dropped rows really were cut too much (or are degenerate).
    dropped = np.setdiff1d(np.arange(len(original)), rows)
    if len(dropped):
        unclipped = result.placement.to_output(original.boxes[dropped]).astype(np.float64)
        clipped = unclipped.copy()
        clipped[:, 0::2] = clipped[:, 0::2].clip(0, out_width)
        clipped[:, 1::2] = clipped[:, 1::2].clip(0, out_height)
        width_kept = clipped[:, 2] - clipped[:, 0]
        height_kept = clipped[:, 3] - clipped[:, 1]
        area = (unclipped[:, 2] - unclipped[:, 0]) * (unclipped[:, 3] - unclipped[:, 1])
        too_small = (width_kept < config.min_box_size) | (height_kept < config.min_box_size)
        mostly_cut = width_kept * height_kept < config.min_visible_fraction * area + 1e-6
        droppable = too_small | (mostly_cut & ~original.ignore[dropped] & (policy == "drop"))
        assert droppable.all()


@settings(max_examples=40, deadline=None, database=None)
@given(scenes())
def test_horizontal_flip_is_an_involution(scene):
    height, width, boxes, ignore, _, seed, _ = scene
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    targets = _targets_with_row_ids(boxes, ignore, rng)
    once_image, once = horizontal_flip(image, targets)
    twice_image, twice = horizontal_flip(once_image, once)
    np.testing.assert_array_equal(twice_image, image)
    np.testing.assert_allclose(twice.boxes, targets.boxes, atol=1e-4)
    np.testing.assert_array_equal(twice.identities, targets.identities)
    np.testing.assert_allclose(
        once.boxes[:, 2] - once.boxes[:, 0], targets.boxes[:, 2] - targets.boxes[:, 0], atol=1e-4
    )
    assert (once.boxes[:, 0] >= -1e-4).all() and (once.boxes[:, 2] <= width + 1e-4).all()


def _white_rectangle_image(height, width, box):
    image = np.zeros((height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return image


def _bright_extent(image):
    ys, xs = np.nonzero(image[..., 1] > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


@pytest.mark.parametrize("seed", range(12))
def test_pixels_move_with_their_boxes(seed):
    """A white rectangle ends where its box says, through scale, crop/pad and flip."""
    box = (140, 60, 220, 250)
    image = _white_rectangle_image(300, 400, box)
    targets = BoxTargets(np.array([box], np.float32), [7], [False], np.ones((1, 3), np.float32))
    config = AugmentConfig(photometric=False, min_visible_fraction=0.0)
    result = augment_for_training(image, targets, (160, 224), config, np.random.default_rng(seed))
    if len(result.targets) == 0:
        assert not (result.image[..., 1] > 127).any()
        return
    np.testing.assert_allclose(_bright_extent(result.image), result.targets.boxes[0], atol=1.0)


def test_validation_letterbox_round_trips_boxes_and_pads_evenly():
    box = (300, 100, 420, 380)
    image = _white_rectangle_image(576, 768, box)
    targets = BoxTargets(np.array([box], np.float32), [1], [False], np.zeros((1, 2), np.float32))
    result = letterbox_for_validation(image, targets, (432, 640))
    placement = result.placement
    assert placement.offset_x == 32 and placement.offset_y == 0 and placement.scale_x == 0.75
    np.testing.assert_allclose(_bright_extent(result.image), result.targets.boxes[0], atol=1.0)
    np.testing.assert_allclose(placement.to_source(result.targets.boxes), targets.boxes, atol=1e-3)
    assert (result.image[:, :32] == result.image[0, 0]).all() and (
        result.image[:, -32:] == result.image[0, 0]
    ).all()


def test_upscaling_placement_is_exact():
    box = (10, 6, 30, 26)
    image = _white_rectangle_image(40, 50, box)
    canvas, placement = place_image(image, 2.5, (-12, 9), (100, 120))
    expected = placement.to_output(np.array([box], np.float32))[0]
    np.testing.assert_allclose(_bright_extent(canvas), expected, atol=1.0)


def test_cut_policy_ignore_turns_sliver_into_ignore_region():
    targets = BoxTargets(
        np.array([[-90, 0, 10, 50], [20, 0, 40, 50]], np.float32), [0, 1], [False, False], np.zeros((2, 2))
    )
    dropped = clip_and_filter(targets, (60, 60), AugmentConfig(cut_box_policy="drop"))
    assert dropped.identities.tolist() == [1]
    ignored = clip_and_filter(targets, (60, 60), AugmentConfig(cut_box_policy="ignore"))
    assert ignored.identities.tolist() == [0, 1] and ignored.ignore.tolist() == [True, False]


def test_colour_jitter_is_seeded_and_keeps_shape():
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    config = AugmentConfig()
    first = jitter_colours(image, config, np.random.default_rng(5))
    again = jitter_colours(image, config, np.random.default_rng(5))
    other = jitter_colours(image, config, np.random.default_rng(6))
    assert first.shape == image.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_misaligned_targets_are_refused():
    with pytest.raises(ValueError, match="misaligned"):
        BoxTargets(np.zeros((2, 4)), [1], [False, False], np.zeros((2, 3)))


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="min_scale"):
        AugmentConfig(min_scale=2.0, max_scale=1.0)
    with pytest.raises(ValueError, match="cut_box_policy"):
        AugmentConfig(cut_box_policy="keep")  # type: ignore[arg-type]
