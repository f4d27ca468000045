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


def _reference_chain(crop_bgr: np.ndarray) -> torch.Tensor:
    """torchreid's FeatureExtractor on one BGR crop: RGB, PIL bilinear, ToTensor, Normalize."""
    resized = np.asarray(Image.fromarray(crop_bgr[..., ::-1].copy()).resize((128, 256), Image.BILINEAR))
    tensor = torch.from_numpy(resized.copy()).permute(2, 0, 1).float().div(255)
    return tensor.sub(torch.tensor(IMAGENET_MEAN).view(3, 1, 1)).div(torch.tensor(IMAGENET_STD).view(3, 1, 1))


def test_crops_at_every_image_edge_match_the_reference_chain() -> None:
    image = np.random.default_rng(7).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    boxes = np.array(
        [
            [0, 0, 90, 60],  # the whole image
            [85, 52, 90, 60],  # bottom-right corner: the crop ends with the image's last byte
            [0, 59, 1, 60],  # one pixel in the last row
            [89, 0, 90, 60],  # the last column
            [10.4, 20.6, 40.5, 59.5],  # rounded edges
        ]
    )
    batch = Preprocessor((256, 128), IMAGENET_MEAN, IMAGENET_STD).crops(image, boxes)
    windows, _ = crop_windows(boxes, 90, 60)
    for crop, (x1, y1, x2, y2) in zip(batch, windows, strict=True):
        assert torch.equal(crop, _reference_chain(image[y1:y2, x1:x2]))
    assert batch.is_contiguous(memory_format=torch.channels_last)


def test_a_strided_view_of_an_image_is_cropped_like_a_copy() -> None:
    image = np.random.default_rng(8).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    view = image[5:45, ::-1]  # neither C-contiguous nor starting at the buffer's beginning
    boxes = np.array([[3, 2, 30, 38], [50, 0, 80, 40]])
    preprocessor = Preprocessor((256, 128), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(preprocessor.crops(view, boxes), preprocessor.crops(view.copy(), boxes))


def test_real_crops_match_the_reference_chain(pets_dir) -> None:
    import cv2

    gt = np.loadtxt(pets_dir / "gt" / "gt.txt", delimiter=",")
    preprocessor = Preprocessor((256, 128), IMAGENET_MEAN, IMAGENET_STD)
    for frame in (1, 200, 397):
        image = cv2.imread(str(pets_dir / "img1" / f"{frame:06d}.jpg"))
        rows = gt[gt[:, 0] == frame]
        boxes = np.column_stack([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]])
        windows, non_empty = crop_windows(boxes, image.shape[1], image.shape[0])
        batch = preprocessor.crops(image, boxes[non_empty])
        for crop, (x1, y1, x2, y2) in zip(batch, windows[non_empty], strict=True):
            assert torch.equal(crop, _reference_chain(image[y1:y2, x1:x2]))


def test_normalising_by_table_equals_the_float_operations_for_every_value() -> None:
    preprocessor = Preprocessor((256, 128), IMAGENET_MEAN, IMAGENET_STD)
    rng = np.random.default_rng(9)
    pixels = torch.from_numpy(rng.integers(0, 256, (3, 256, 128, 3), dtype=np.uint8))
    pixels[0, 0, :, :] = torch.arange(128, dtype=torch.uint8).view(128, 1)  # every value in every channel
    pixels[0, 1, :, :] = torch.arange(128, 256, dtype=torch.uint8).view(128, 1)
    expected = pixels.permute(0, 3, 1, 2).float().div(255)
    expected = expected.sub(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)).div(
        torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    )

    by_table = preprocessor.normalise(pixels)
    assert torch.equal(by_table, expected)
    assert by_table.is_contiguous(memory_format=torch.channels_last)
    # The look-up other devices run (a gather), here on the CPU: the same values.
    assert torch.equal(preprocessor.normalise_by_gather(pixels), expected)
    assert preprocessor.normalise(pixels[:0]).shape == (0, 3, 256, 128)
    with pytest.raises(ValueError, match="uint8"):
        preprocessor.normalise(pixels.float())
