"""Crops to teacher input, identical in effect to ``torchreid.utils.FeatureExtractor``.

FeatureExtractor turns an RGB array into a PIL image, applies torchvision ``Resize`` (on a PIL
image that is ``Image.resize(..., BILINEAR)``: bilinear whose filter widens with the shrink
factor, i.e. antialiased), then ``ToTensor`` (/255) and ``Normalize``. We call the same PIL resize,
so pixels match exactly; cv2 ``INTER_LINEAR`` does not (no antialiasing when shrinking).
PIL swaps BGR to RGB while it unpacks the crop, and the float normalisation is a table look-up
that reproduces ToTensor and Normalize bit for bit (see :meth:`Preprocessor.normalise`).

Crop rule: every box edge is rounded to the nearest pixel edge (halves up) and clipped to the
image; x2, y2 are exclusive. A box whose window is empty after that is degenerate: the crop
functions refuse it, :func:`crop_windows` reports it so callers can skip it beforehand.
"""

from __future__ import annotations

import functools
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

PREPROCESSING_VERSION = 1
PREPROCESSING_DESCRIPTION = (
    "crop: box edges rounded to nearest pixel (halves up), clipped to image; "
    "BGR->RGB; PIL bilinear resize (antialiased) to input_size; /255; (x-mean)/std "
    "(= torchreid FeatureExtractor)"
)


def crop_windows(
    boxes_tlbr: np.ndarray, image_width: int, image_height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixel windows ``int64 (N,4)`` x1,y1,x2,y2 (x2, y2 exclusive) and ``bool (N,)`` non-empty."""
    windows = np.floor(as_boxes(boxes_tlbr) + 0.5)
    windows[:, 0::2] = np.clip(windows[:, 0::2], 0, image_width)
    windows[:, 1::2] = np.clip(windows[:, 1::2], 0, image_height)
    windows = windows.astype(np.int64)
    non_empty = (windows[:, 2] > windows[:, 0]) & (windows[:, 3] > windows[:, 1])
    return windows, non_empty


def as_boxes(boxes_tlbr: np.ndarray) -> np.ndarray:
    """Checked float64 copy of boxes ``(N, 4)`` x1,y1,x2,y2 (the caller's array is never modified)."""
    boxes = np.array(boxes_tlbr, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) x1,y1,x2,y2, got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError("boxes contain NaN or infinite coordinates")
    return boxes


@dataclass(frozen=True)
class Preprocessor:
    """BGR uint8 crops to the teacher's normalised float32 batch ``(N, 3, H, W)`` (channels-last).

    Two steps, which may run in different processes: :meth:`pixels` crops and resizes on the CPU
    into RGB uint8 ``(N, H, W, 3)`` (4x smaller to ship than floats), :meth:`normalise` turns
    those into floats on any device.
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def crops(self, image_bgr: np.ndarray, boxes_tlbr: np.ndarray) -> torch.Tensor:
        """Crop ``boxes_tlbr`` out of ``image_bgr`` (see the crop rule) and preprocess them."""
        return self.normalise(torch.from_numpy(self.pixels(image_bgr, boxes_tlbr)))

    def images(self, crops_bgr: Sequence[np.ndarray]) -> torch.Tensor:
        """Preprocess whole BGR crops (each already cut to its box)."""
        for index, crop in enumerate(crops_bgr):
            _check_bgr_image(crop, f"crop {index}")
        height, width = self.input_size
        rgb = np.empty((len(crops_bgr), height, width, 3), np.uint8)
        for slot, crop in zip(rgb, crops_bgr, strict=True):
            crop = np.ascontiguousarray(crop)
            self._resize_into(slot, crop, (0, 0, crop.shape[1], crop.shape[0]))
        return self.normalise(torch.from_numpy(rgb))

    def pixels(
        self,
        image_bgr: np.ndarray,
        boxes_tlbr: np.ndarray,
        stage_seconds: MutableMapping[str, float] | None = None,
    ) -> np.ndarray:
        """Crop and resize: RGB uint8 ``(N, H, W, 3)``, the input of :meth:`normalise`.

        ``stage_seconds``, if given, accumulates the seconds spent in ``"crop"`` and ``"resize"``.
        """
        _check_bgr_image(image_bgr, "image")
        height, width = image_bgr.shape[:2]
        windows, non_empty = crop_windows(boxes_tlbr, width, height)
        if not non_empty.all():
            bad = np.flatnonzero(~non_empty)
            raise ValueError(
                f"{len(bad)} boxes are empty after rounding and clipping to the {width}x{height} image "
                f"(indices {bad[:5].tolist()}); skip them using teacher.crop_windows(...)[1]"
            )
        image_bgr = np.ascontiguousarray(image_bgr)
        rgb = np.empty((len(windows), *self.input_size, 3), np.uint8)
        for slot, window in zip(rgb, windows.tolist(), strict=True):
            self._resize_into(slot, image_bgr, window, stage_seconds)
        return rgb

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """RGB uint8 ``(N, H, W, 3)`` on any device to float32 ``(N, 3, H, W)`` channels-last there.

        Each channel value maps through a 256-entry table computed with ToTensor's and Normalize's
        float32 operations (/255, -mean, /std, in that order), so the result equals running those
        operations on every pixel, bit for bit, on every device; one table look-up per value
        instead of three passes over the batch.
        """
        if (
            pixels.dtype != torch.uint8
            or pixels.ndim != 4
            or tuple(pixels.shape[1:]) != (*self.input_size, 3)
        ):
            raise ValueError(
                f"pixels must be uint8 (N, {self.input_size[0]}, {self.input_size[1]}, 3), "
                f"got {pixels.dtype} {tuple(pixels.shape)}"
            )
        table = self._table()
        if pixels.numel() == 0:
            values = torch.empty(pixels.shape, dtype=torch.float32, device=pixels.device)
        elif pixels.device.type == "cpu":
            source = pixels.contiguous().numpy().reshape(-1, self.input_size[1], 3)
            values = torch.from_numpy(cv2.LUT(source, table.numpy().reshape(1, 256, 3)))
        else:
            return self.normalise_by_gather(pixels)
        # (N,H,W,3) permuted to (N,3,H,W) is channels-last in memory, the layout the model runs fastest in.
        return values.view(pixels.shape).permute(0, 3, 1, 2)

    def normalise_by_gather(self, pixels: torch.Tensor) -> torch.Tensor:
        """:meth:`normalise` as a gather from the same table, on the pixels' device (used off the CPU)."""
        offsets = torch.arange(3, device=pixels.device) * 256
        values = self._table().t().reshape(-1).to(pixels.device)[pixels.long() + offsets]
        return values.permute(0, 3, 1, 2)

    def _table(self) -> torch.Tensor:
        """float32 ``(256, 3)``: channel value -> normalised value, per RGB channel."""
        return _normalisation_table(self.mean, self.std)

    def _resize_into(
        self,
        slot: np.ndarray,
        image_bgr: np.ndarray,
        window: Sequence[int],
        stage_seconds: MutableMapping[str, float] | None = None,
    ) -> None:
        """Resize ``window`` x1,y1,x2,y2 of a C-contiguous BGR image into ``slot`` (H, W, 3) as RGB."""
        started = time.perf_counter()
        x1, y1, x2, y2 = window
        row_bytes = image_bgr.shape[1] * 3
        # PIL reads the window straight out of the image (its row stride skips the rest of each
        # row) and swaps BGR to RGB while unpacking: no crop copy, no colour conversion pass.
        # The bilinear filter treats channels independently, so swapping first changes nothing.
        source = memoryview(image_bgr).cast("B")[y1 * row_bytes + x1 * 3 :]
        crop = Image.frombuffer("RGB", (x2 - x1, y2 - y1), source, "raw", "BGR", row_bytes, 1)
        cropped = time.perf_counter()
        height, width = self.input_size
        # .resize takes (width, height); on a PIL image BILINEAR is antialiased when shrinking.
        slot[...] = np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR))
        if stage_seconds is not None:
            stage_seconds["crop"] = stage_seconds.get("crop", 0.0) + cropped - started
            stage_seconds["resize"] = stage_seconds.get("resize", 0.0) + time.perf_counter() - cropped


@functools.cache
def _normalisation_table(mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    values = torch.arange(256, dtype=torch.uint8).view(256, 1).expand(256, 3)
    mean_row = torch.tensor(mean, dtype=torch.float32).view(1, 3)
    std_row = torch.tensor(std, dtype=torch.float32).view(1, 3)
    return values.to(torch.float32).div_(255).sub_(mean_row).div_(std_row).contiguous()


def _check_bgr_image(array: np.ndarray, what: str) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        description = (
            f"{array.dtype} array of shape {array.shape}" if isinstance(array, np.ndarray) else type(array)
        )
        raise ValueError(f"{what} must be a uint8 BGR array (H, W, 3), got {description}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {array.shape})")
