"""Image and box augmentation for the student, keeping every per-box array aligned.

Images are uint8 BGR arrays (H, W, 3) as cv2 decodes them; the data loader turns
the final canvas into an RGB tensor. Per-box data travels as :class:`BoxTargets`
(boxes, identities, ignore flags, teacher embeddings): every transform either
moves boxes or selects rows of all four arrays at once, never one alone.

Geometry convention: boxes are x1, y1, x2, y2 in pixel *corner* coordinates (a
box covering pixel 0 only is 0, 0, 1, 1). A :class:`Placement` maps source
corner coordinates to output ones as ``source * scale + offset`` (then an
optional horizontal flip), which is exactly what ``cv2.resize`` and the affine
warp below do to the pixels.

Randomness comes only from the ``np.random.Generator`` passed in, so an item
seeded from (seed, epoch, draw, index) is reproducible in any worker process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, get_args

import cv2
import numpy as np

from tdt.config import PlainConfig
from tdt.imagenet import IMAGENET_MEAN_BGR_UINT8

CutBoxPolicy = Literal["drop", "ignore"]


@dataclass(frozen=True)
class AugmentConfig(PlainConfig):
    """Training augmentation. Scale factors multiply the letterbox (fit) scale.

    ``min_scale`` / ``max_scale`` are drawn log-uniformly so that zooming out by
    2 is as likely as zooming in by 2. A box cut by the crop keeps its row when
    at least ``min_visible_fraction`` of its area stays visible; otherwise it is
    dropped (``cut_box_policy="drop"``) or turned into an ignore region
    (``"ignore"``: the visible sliver of a person is then neither a positive nor
    a negative). Boxes narrower or lower than ``min_box_size`` pixels after
    clipping are always dropped. Ignore regions survive any cut that leaves
    them ``min_box_size`` wide and high: a clipped crowd region is still a region
    the detector must not learn "background" from.
    """

    flip_probability: float = 0.5
    min_scale: float = 0.5
    max_scale: float = 2.0
    min_visible_fraction: float = 0.3
    min_box_size: float = 2.0
    cut_box_policy: CutBoxPolicy = "drop"
    photometric: bool = True
    hue_shift: float = 0.015  # fraction of the hue circle, +/-
    saturation_gain: float = 0.5  # multiplier drawn from [1 - g, 1 + g]
    brightness_gain: float = 0.3
    contrast_gain: float = 0.3
    pad_value_bgr: tuple[int, int, int] = IMAGENET_MEAN_BGR_UINT8

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError("flip_probability must be within [0, 1]")
        if not 0.0 < self.min_scale <= self.max_scale:
            raise ValueError("need 0 < min_scale <= max_scale")
        if not 0.0 <= self.min_visible_fraction <= 1.0:
            raise ValueError("min_visible_fraction must be within [0, 1]")
        if self.min_box_size < 0.0:
            raise ValueError("min_box_size must be >= 0")
        if self.cut_box_policy not in get_args(CutBoxPolicy):
            raise ValueError(
                f"cut_box_policy must be one of {get_args(CutBoxPolicy)}, got {self.cut_box_policy!r}"
            )
        for name in ("saturation_gain", "brightness_gain", "contrast_gain"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be within [0, 1)")
        if not 0.0 <= self.hue_shift <= 0.5:
            raise ValueError("hue_shift must be within [0, 0.5]")


@dataclass(frozen=True)
class BoxTargets:
    """Aligned per-box arrays of one image; row ``i`` of each describes the same box."""

    boxes: np.ndarray  # float32 (N, 4) x1, y1, x2, y2
    identities: np.ndarray  # int64 (N,), -1 unknown
    ignore: np.ndarray  # bool (N,)
    embeddings: np.ndarray  # float32 (N, D), NaN rows where the box has none

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        count = len(boxes)
        identities = np.asarray(self.identities, dtype=np.int64).reshape(-1)
        ignore = np.asarray(self.ignore, dtype=bool).reshape(-1)
        embeddings = np.asarray(self.embeddings, dtype=np.float32)
        if embeddings.ndim != 2:
            embeddings = embeddings.reshape(count, -1)
        if len(identities) != count or len(ignore) != count or len(embeddings) != count:
            raise ValueError(
                f"misaligned box targets: {count} boxes, {len(identities)} identities, "
                f"{len(ignore)} ignore flags, {len(embeddings)} embeddings"
            )
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "identities", identities)
        object.__setattr__(self, "ignore", ignore)
        object.__setattr__(self, "embeddings", embeddings)

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, rows: np.ndarray) -> BoxTargets:
        """The given rows (boolean mask or indices) of every array."""
        return BoxTargets(self.boxes[rows], self.identities[rows], self.ignore[rows], self.embeddings[rows])

    def with_boxes(self, boxes: np.ndarray) -> BoxTargets:
        return replace(self, boxes=boxes)


@dataclass(frozen=True)
class Placement:
    """Where a source image landed in the output canvas.

    ``output = source * scale + offset`` per axis (corner coordinates), then,
    when ``flipped``, ``x -> output_width - x``. For validation letterboxes this
    is the record needed to map detections back to original pixels.
    """

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    source_height: int
    source_width: int
    output_height: int
    output_width: int
    flipped: bool = False

    def to_output(self, boxes: np.ndarray) -> np.ndarray:
        """Source-pixel boxes -> output-pixel boxes (not clipped)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        mapped = np.empty_like(boxes)
        mapped[:, 0::2] = boxes[:, 0::2] * self.scale_x + self.offset_x
        mapped[:, 1::2] = boxes[:, 1::2] * self.scale_y + self.offset_y
        if self.flipped:
            mapped = flip_boxes(mapped, self.output_width)
        return mapped.astype(np.float32)

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Output-pixel boxes -> source-pixel boxes (e.g. detections back to the original image)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if self.flipped:
            boxes = flip_boxes(boxes, self.output_width)
        mapped = np.empty_like(boxes)
        mapped[:, 0::2] = (boxes[:, 0::2] - self.offset_x) / self.scale_x
        mapped[:, 1::2] = (boxes[:, 1::2] - self.offset_y) / self.scale_y
        return mapped.astype(np.float32)

    def for_original(self, reduction: int, original_height: int, original_width: int) -> Placement:
        """This placement of an image decoded at 1/``reduction`` size, as a map from the original pixels."""
        if reduction == 1:
            return self
        return replace(
            self,
            scale_x=self.scale_x / reduction,
            scale_y=self.scale_y / reduction,
            source_height=original_height,
            source_width=original_width,
        )

    def source_window(self) -> tuple[int, int, int, int]:
        """x0, y0, x1, y1 of the output pixels covered by the (unflipped) source image."""
        x0 = max(0, math.ceil(self.offset_x - 1e-6))
        y0 = max(0, math.ceil(self.offset_y - 1e-6))
        x1 = min(self.output_width, math.floor(self.offset_x + self.source_width * self.scale_x + 1e-6))
        y1 = min(self.output_height, math.floor(self.offset_y + self.source_height * self.scale_y + 1e-6))
        return x0, y0, max(x0, x1), max(y0, y1)


@dataclass(frozen=True)
class AugmentedImage:
    image: np.ndarray  # uint8 BGR (output_height, output_width, 3)
    targets: BoxTargets  # in output pixels
    placement: Placement


def flip_boxes(boxes: np.ndarray, image_width: float) -> np.ndarray:
    flipped = boxes.copy()
    flipped[:, 0] = image_width - boxes[:, 2]
    flipped[:, 2] = image_width - boxes[:, 0]
    return flipped


def horizontal_flip(image: np.ndarray, targets: BoxTargets) -> tuple[np.ndarray, BoxTargets]:
    """Mirror image and boxes left-right; applying it twice gives the input back."""
    width = image.shape[1]
    mirrored = cv2.flip(image, 1)
    boxes = flip_boxes(targets.boxes.astype(np.float64), width).astype(np.float32)
    return mirrored, targets.with_boxes(boxes)


def letterbox_scale(source_size: tuple[int, int], output_size: tuple[int, int]) -> float:
    """Largest scale at which a (height, width) source fits inside the output."""
    return min(output_size[0] / source_size[0], output_size[1] / source_size[1])


def shrink(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Downscale to (width, height) without aliasing, fast.

    Area averaging is many times slower than bilinear for non-integer factors,
    so exact halvings (OpenCV's fast integer path) come first while the
    remaining factor is below 1/2, then one bilinear step.
    Every stage is a whole-image, centre-aligned resize, so the composite
    corner map is exactly ``x * width / source_width`` whatever the stages.
    """
    while (
        image.shape[1] >= 2 * width
        and image.shape[0] >= 2 * height
        and image.shape[1] % 2 == 0
        and image.shape[0] % 2 == 0
    ):
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    remaining = min(width / image.shape[1], height / image.shape[0])
    interpolation = cv2.INTER_AREA if remaining < 0.5 else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def place_image(
    image: np.ndarray,
    scale: float,
    offset: tuple[int, int],
    output_size: tuple[int, int],
    pad_value: tuple[int, int, int] = IMAGENET_MEAN_BGR_UINT8,
) -> tuple[np.ndarray, Placement]:
    """Scale ``image`` and paste it with its top-left corner at integer ``offset`` (x, y).

    Parts falling outside the (height, width) canvas are cropped, uncovered
    canvas is ``pad_value``. Shrinking resizes the whole image (see
    :func:`shrink`); enlarging warps straight into the canvas so that only
    output pixels are computed.
    """
    if scale < 1.0:
        return _shrink_into_canvas(image, scale, offset, output_size, pad_value)
    source_height, source_width = image.shape[:2]
    output_height, output_width = output_size
    offset_x, offset_y = offset
    placement = Placement(
        scale_x=scale,
        scale_y=scale,
        offset_x=float(offset_x),
        offset_y=float(offset_y),
        source_height=source_height,
        source_width=source_width,
        output_height=output_height,
        output_width=output_width,
    )
    # warpAffine maps pixel *centres*: centre c = corner - 0.5, so a corner map
    # out = s * in + o becomes centre' = s * centre + o + 0.5 * s - 0.5.
    shift = 0.5 * scale - 0.5
    matrix = np.array([[scale, 0.0, offset_x + shift], [0.0, scale, offset_y + shift]], dtype=np.float64)
    canvas = cv2.warpAffine(
        image,
        matrix,
        (output_width, output_height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=pad_value,
    )
    return canvas, placement


def _shrink_into_canvas(
    image: np.ndarray,
    scale: float,
    offset: tuple[int, int],
    output_size: tuple[int, int],
    pad_value: tuple[int, int, int],
) -> tuple[np.ndarray, Placement]:
    """:func:`place_image` for ``scale`` < 1: shrink the whole image, crop it, pad around it."""
    source_height, source_width = image.shape[:2]
    output_height, output_width = output_size
    offset_x, offset_y = offset
    scaled_width = max(1, round(source_width * scale))
    scaled_height = max(1, round(source_height * scale))
    placement = Placement(
        scale_x=scaled_width / source_width,
        scale_y=scaled_height / source_height,
        offset_x=float(offset_x),
        offset_y=float(offset_y),
        source_height=source_height,
        source_width=source_width,
        output_height=output_height,
        output_width=output_width,
    )
    x0, y0, x1, y1 = placement.source_window()
    if x1 <= x0 or y1 <= y0:
        return np.full((output_height, output_width, 3), pad_value, dtype=np.uint8), placement
    visible = shrink(image, scaled_width, scaled_height)[
        y0 - offset_y : y1 - offset_y, x0 - offset_x : x1 - offset_x
    ]
    # copyMakeBorder writes the border in one native pass; numpy broadcasting a 3-tuple is far slower
    canvas = cv2.copyMakeBorder(
        visible, y0, output_height - y1, x0, output_width - x1, cv2.BORDER_CONSTANT, value=pad_value
    )
    return canvas, placement


def letterbox(
    image: np.ndarray,
    output_size: tuple[int, int],
    pad_value: tuple[int, int, int] = IMAGENET_MEAN_BGR_UINT8,
) -> tuple[np.ndarray, Placement]:
    """Deterministic letterbox: fit the whole image, keep the aspect ratio, centre it."""
    source_height, source_width = image.shape[:2]
    scale = letterbox_scale((source_height, source_width), output_size)
    scaled_width = max(1, round(source_width * scale))
    scaled_height = max(1, round(source_height * scale))
    offset = ((output_size[1] - scaled_width) // 2, (output_size[0] - scaled_height) // 2)
    return place_image(image, scale, offset, output_size, pad_value)


def clip_and_filter(targets: BoxTargets, output_size: tuple[int, int], config: AugmentConfig) -> BoxTargets:
    """Clip output-pixel boxes to the canvas and apply the visibility rules of :class:`AugmentConfig`."""
    if len(targets) == 0:
        return targets
    output_height, output_width = output_size
    boxes = targets.boxes.astype(np.float64)
    full_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0.0, output_width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0.0, output_height)
    widths = clipped[:, 2] - clipped[:, 0]
    heights = clipped[:, 3] - clipped[:, 1]
    large_enough = (widths >= config.min_box_size) & (heights >= config.min_box_size)
    visible_fraction = np.where(full_area > 0, widths * heights / np.maximum(full_area, 1e-12), 0.0)
    mostly_visible = visible_fraction >= config.min_visible_fraction
    result = targets.with_boxes(clipped.astype(np.float32))
    if config.cut_box_policy == "ignore":
        turned_to_ignore = large_enough & ~mostly_visible & ~result.ignore
        result = replace(result, ignore=result.ignore | turned_to_ignore)
        return result.select(large_enough)
    return result.select(large_enough & (mostly_visible | result.ignore))


def jitter_colours(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random hue shift and saturation / brightness / contrast gains in HSV, through lookup tables."""
    hue_shift = rng.uniform(-config.hue_shift, config.hue_shift) * 180.0
    saturation = rng.uniform(1.0 - config.saturation_gain, 1.0 + config.saturation_gain)
    brightness = rng.uniform(1.0 - config.brightness_gain, 1.0 + config.brightness_gain)
    contrast = rng.uniform(1.0 - config.contrast_gain, 1.0 + config.contrast_gain)
    hue, sat, value = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
    levels = np.arange(256, dtype=np.float32)
    hue_table = np.mod(levels + hue_shift, 180.0).astype(np.uint8)
    saturation_table = np.clip(levels * saturation, 0, 255).astype(np.uint8)
    mean_value = cv2.mean(value)[0]
    value_table = np.clip(((levels - mean_value) * contrast + mean_value) * brightness, 0, 255).astype(
        np.uint8
    )
    jittered = cv2.merge(
        (cv2.LUT(hue, hue_table), cv2.LUT(sat, saturation_table), cv2.LUT(value, value_table))
    )
    return cv2.cvtColor(jittered, cv2.COLOR_HSV2BGR)


def random_scale_factor(config: AugmentConfig, rng: np.random.Generator) -> float:
    return float(np.exp(rng.uniform(np.log(config.min_scale), np.log(config.max_scale))))


def training_scale(
    source_size: tuple[int, int],
    output_size: tuple[int, int],
    config: AugmentConfig,
    rng: np.random.Generator,
) -> float:
    """Random source -> output scale: the letterbox fit times a log-uniform factor.

    Drawn before decoding so that a loader can decode JPEGs at a reduced size
    when the image will be shrunk anyway (see ``student.data``).
    """
    return letterbox_scale(source_size, output_size) * random_scale_factor(config, rng)


def augment_for_training(
    image: np.ndarray,
    targets: BoxTargets,
    output_size: tuple[int, int],
    config: AugmentConfig,
    rng: np.random.Generator,
    *,
    scale: float | None = None,
) -> AugmentedImage:
    """Random scale (relative to the letterbox fit), random crop / pad placement,
    colour jitter on the image part of the canvas, and horizontal flip.

    ``scale`` (image pixels -> output pixels) is drawn with :func:`training_scale`
    unless given. The placement offset is uniform over every position where
    the scaled image either covers the canvas (crop) or lies inside it (pad),
    per axis.
    """
    source_height, source_width = image.shape[:2]
    output_height, output_width = output_size
    if scale is None:
        scale = training_scale((source_height, source_width), output_size, config, rng)
    scaled_width = source_width * scale if scale >= 1.0 else max(1, round(source_width * scale))
    scaled_height = source_height * scale if scale >= 1.0 else max(1, round(source_height * scale))
    spare_x = output_width - scaled_width
    spare_y = output_height - scaled_height
    offset_x = int(rng.integers(math.floor(min(0.0, spare_x)), math.ceil(max(0.0, spare_x)) + 1))
    offset_y = int(rng.integers(math.floor(min(0.0, spare_y)), math.ceil(max(0.0, spare_y)) + 1))
    canvas, placement = place_image(image, scale, (offset_x, offset_y), output_size, config.pad_value_bgr)
    if config.photometric:
        x0, y0, x1, y1 = placement.source_window()
        if x1 > x0 and y1 > y0:
            canvas[y0:y1, x0:x1] = jitter_colours(canvas[y0:y1, x0:x1], config, rng)
    moved = clip_and_filter(targets.with_boxes(placement.to_output(targets.boxes)), output_size, config)
    if rng.random() < config.flip_probability:
        canvas, moved = horizontal_flip(canvas, moved)
        placement = replace(placement, flipped=True)
    return AugmentedImage(canvas, moved, placement)


def letterbox_for_validation(
    image: np.ndarray,
    targets: BoxTargets,
    output_size: tuple[int, int],
    pad_value: tuple[int, int, int] = IMAGENET_MEAN_BGR_UINT8,
) -> AugmentedImage:
    """Deterministic letterbox; every box is kept (only scaled and shifted, never cut)."""
    canvas, placement = letterbox(image, output_size, pad_value)
    return AugmentedImage(canvas, targets.with_boxes(placement.to_output(targets.boxes)), placement)
