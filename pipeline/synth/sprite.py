"""Sprites (an RGBA patch standing on the ground) and a painter that draws body-relative shapes into one.

The painter works in units of the sprite's height with y pointing up from its ground point, so a
figure or prop is described once and drawn at any size. Colour is stored premultiplied by alpha
(shapes are drawn over black), which makes compositing a single multiply-add.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

SHIFT = 3  # cv2 fixed-point bits: sub-pixel placement keeps small figures smooth
ONE = 1 << SHIFT

Point = tuple[float, float]
Color = tuple[float, float, float]


@dataclass
class Sprite:
    rgb: np.ndarray  # uint8 (h, w, 3), premultiplied by alpha
    alpha: np.ndarray  # uint8 (h, w)
    anchor_x: float  # ground point inside the patch, pixels
    anchor_y: float
    head_box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 inside the patch


class Painter:
    def __init__(self, size_px: float, width_units: float, top_units: float, bottom_units: float = 0.06):
        self.scale = size_px
        margin = 2
        self.width = int(np.ceil(width_units * size_px)) + 2 * margin
        self.height = int(np.ceil((top_units + bottom_units) * size_px)) + 2 * margin
        self.origin_x = self.width / 2
        self.origin_y = margin + top_units * size_px
        self.rgb = np.zeros((self.height, self.width, 3), np.uint8)
        self.alpha = np.zeros((self.height, self.width), np.uint8)

    def px(self, point: Point) -> tuple[float, float]:
        return self.origin_x + point[0] * self.scale, self.origin_y - point[1] * self.scale

    def _fixed(self, point: Point) -> tuple[int, int]:
        x, y = self.px(point)
        return int(round(x * ONE)), int(round(y * ONE))

    def _size(self, units: float) -> int:
        return max(1, int(round(units * self.scale)))

    def line(self, a: Point, b: Point, thickness: float, color: Color) -> None:
        width = max(1, int(round(thickness * self.scale)))
        pa, pb = self._fixed(a), self._fixed(b)
        cv2.line(self.rgb, pa, pb, color, width, cv2.LINE_AA, SHIFT)
        cv2.line(self.alpha, pa, pb, 255, width, cv2.LINE_AA, SHIFT)

    def limb(self, points: Sequence[Point], thickness: Sequence[float], color: Color) -> None:
        """A chain of tapered segments with rounded joints (arm, leg)."""
        for (a, b), width in zip(zip(points[:-1], points[1:], strict=True), thickness, strict=True):
            self.line(a, b, width, color)

    def polygon(self, points: Sequence[Point], color: Color) -> None:
        fixed = np.array([self._fixed(p) for p in points], np.int32)[None]
        cv2.fillPoly(self.rgb, fixed, color, cv2.LINE_AA, SHIFT)
        cv2.fillPoly(self.alpha, fixed, 255, cv2.LINE_AA, SHIFT)

    def ellipse(
        self,
        center: Point,
        axes: tuple[float, float],
        color: Color,
        angle: float = 0.0,
        start: float = 0.0,
        end: float = 360.0,
    ) -> None:
        c = self._fixed(center)
        ax = (max(1, int(round(axes[0] * self.scale * ONE))), max(1, int(round(axes[1] * self.scale * ONE))))
        cv2.ellipse(self.rgb, c, ax, angle, start, end, color, -1, cv2.LINE_AA, SHIFT)
        cv2.ellipse(self.alpha, c, ax, angle, start, end, 255, -1, cv2.LINE_AA, SHIFT)

    def textured_polygon(
        self, points: Sequence[Point], texture: Callable[[np.ndarray, np.ndarray], np.ndarray]
    ) -> None:
        """Fill a polygon with ``texture(xs, ys)`` (coordinates in body units) -> float BGR (h, w, 3)."""
        fixed = np.array([self._fixed(p) for p in points], np.int32)
        x0, y0 = np.maximum(fixed.min(axis=0) // ONE - 1, 0)
        x1, y1 = np.minimum(fixed.max(axis=0) // ONE + 2, (self.width, self.height))
        if x1 <= x0 or y1 <= y0:
            return
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, (fixed - np.array([x0, y0]) * ONE)[None], 255, cv2.LINE_AA, SHIFT)
        xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - self.origin_x) / self.scale
        ys = (self.origin_y - np.arange(y0, y1, dtype=np.float32) - 0.5) / self.scale
        colors = texture(xs[None, :], ys[:, None])
        cover = mask.astype(np.float32)[..., None] / 255.0
        region = self.rgb[y0:y1, x0:x1].astype(np.float32)
        self.rgb[y0:y1, x0:x1] = np.clip(region * (1 - cover) + colors * cover, 0, 255).astype(np.uint8)
        alpha = self.alpha[y0:y1, x0:x1].astype(np.float32)
        self.alpha[y0:y1, x0:x1] = np.clip(alpha * (1 - cover[..., 0]) + 255 * cover[..., 0], 0, 255).astype(
            np.uint8
        )

    def sprite(self, head_box_units: tuple[float, float, float, float] | None = None) -> Sprite:
        head = None
        if head_box_units is not None:
            (hx1, hy1), (hx2, hy2) = self.px(head_box_units[:2]), self.px(head_box_units[2:])
            head = (min(hx1, hx2), min(hy1, hy2), max(hx1, hx2), max(hy1, hy2))
        return Sprite(self.rgb, self.alpha, self.origin_x, self.origin_y, head)


def shade(color: Color, factor: float) -> Color:
    return (min(color[0] * factor, 255.0), min(color[1] * factor, 255.0), min(color[2] * factor, 255.0))
