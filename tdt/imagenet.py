"""ImageNet channel statistics: the input normalisation of every ImageNet-pretrained network here.

The student's backbones and the re-ID teachers were pretrained on images normalised
with these per-channel means and standard deviations (RGB, pixel values in [0, 1]).
"""

from __future__ import annotations

IMAGENET_MEAN_RGB: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB: tuple[float, float, float] = (0.229, 0.224, 0.225)
# The mean as a uint8 BGR colour (cv2's channel order): padding filled with it becomes
# about zero after normalisation, so it reads as "no signal" rather than as a black wall.
IMAGENET_MEAN_BGR_UINT8: tuple[int, int, int] = (  # (104, 116, 124)
    round(255 * IMAGENET_MEAN_RGB[2]),
    round(255 * IMAGENET_MEAN_RGB[1]),
    round(255 * IMAGENET_MEAN_RGB[0]),
)

__all__ = ["IMAGENET_MEAN_BGR_UINT8", "IMAGENET_MEAN_RGB", "IMAGENET_STD_RGB"]
