"""Inference-side image preparation, identical to the data loader's validation path.

The letterbox itself is :func:`student.augment.letterbox` (shared with training
so both see the same geometry): the image is resized with its aspect ratio
kept to fit the network input, centred, and the border filled with the
ImageNet mean colour (about zero after the model's normalisation). Here we only
add the BGR -> RGB [0, 1] tensor conversion and the way back for boxes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .augment import Placement, letterbox


def bgr_to_rgb_tensor(image_bgr: np.ndarray) -> Tensor:
    """H x W x 3 uint8 BGR -> (3, H, W) float32 RGB in [0, 1] (the model normalises)."""
    rgb_planes = np.ascontiguousarray(image_bgr[:, :, ::-1].transpose(2, 0, 1))
    return torch.from_numpy(rgb_planes).to(torch.float32) / 255.0


def bgr_to_input_tensor(image_bgr: np.ndarray, input_size: tuple[int, int]) -> tuple[Tensor, Placement]:
    """cv2 BGR uint8 image -> letterboxed (3, H, W) RGB [0, 1] tensor and its placement."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 BGR image, got {image_bgr.shape} {image_bgr.dtype}")
    canvas, placement = letterbox(image_bgr, input_size)
    return bgr_to_rgb_tensor(canvas), placement


def boxes_to_original(placement: Placement, boxes: np.ndarray) -> np.ndarray:
    """Input-pixel x1, y1, x2, y2 boxes -> original-image pixels, clipped to the image."""
    original = placement.to_source(boxes)
    limits = np.array([placement.source_width, placement.source_height] * 2, dtype=np.float32)
    return np.clip(original, 0, limits).astype(np.float32)


def detections_to_original(placement: Placement, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Input-pixel detections -> (original-pixel boxes, which of them to keep).

    A box that lies entirely on the letterbox border collapses to zero width or
    height once clipped to the image: it covers no image pixel and is dropped.
    """
    original = boxes_to_original(placement, boxes)
    has_area = (original[:, 2] > original[:, 0]) & (original[:, 3] > original[:, 1])
    return original[has_area], has_area
