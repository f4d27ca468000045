"""Crop windows and pixel preprocessing (no network involved)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from teacher import IMAGENET_MEAN, IMAGENET_STD, crop_windows
from teacher.preprocess import Preprocessor


def test_box_edges_round_to_nearest_pixel_and_clip_to_the_image() -> None:
    boxes = np.array(
        [
            [0.4, 0.5, 10.5, 20.49],  # halves round up
            [-5.0, -3.0, 1000.0, 1000.0],  # clipped to the 100x50 image
            [120.0, 10.0, 130.0, 20.0],  # entirely right of the image
            [10.2, 10.0, 10.4, 30.0],  # narrower than a pixel
        ]
    )
    windows, non_empty = crop_windows(boxes, 100, 50)
    assert windows.dtype == np.int64
    np.testing.assert_array_equal(windows[:2], [[0, 1, 11, 20], [0, 0, 100, 50]])
    np.testing.assert_array_equal(non_empty, [True, True, False, False])
    np.testing.assert_array_equal(boxes[0], [0.4, 0.5, 10.5, 20.49])  # caller's array untouched


def test_crop_windows_rejects_malformed_boxes() -> None:
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        crop_windows(np.zeros((3, 5)), 10, 10)
    with pytest.raises(ValueError, match="NaN"):
        crop_windows(np.array([[0, 0, np.nan, 4]]), 10, 10)
    windows, non_empty = crop_windows(np.zeros((0, 4)), 10, 10)
    assert windows.shape == (0, 4) and non_empty.shape == (0,)


@pytest.mark.parametrize("crop_shape", [(700, 300), (37, 15), (256, 128)], ids=["shrink", "grow", "same"])
def test_pixels_match_pil_bilinear_then_to_tensor_and_normalize(crop_shape: tuple[int, int]) -> None:
    crop_bgr = np.random.default_rng(5).integers(0, 256, (*crop_shape, 3), dtype=np.uint8)
    preprocessor = Preprocessor((256, 128), IMAGENET_MEAN, IMAGENET_STD)

    batch = preprocessor.images([crop_bgr])

    # The reference chain torchreid's FeatureExtractor runs, written out step by step.
    resized = np.asarray(Image.fromarray(crop_bgr[..., ::-1].copy()).resize((128, 256), Image.BILINEAR))
    tensor = torch.from_numpy(resized.copy()).permute(2, 0, 1).float().div(255)
    expected = tensor.sub(torch.tensor(IMAGENET_MEAN).view(3, 1, 1)).div(
        torch.tensor(IMAGENET_STD).view(3, 1, 1)
    )
    assert torch.equal(batch[0], expected)
