"""One frame: background, ground shadows, sprites pasted far-to-near, camera effects, visibility.

Drawing happens on a canvas ``SUPERSAMPLE`` times the output size and is averaged down, which
anti-aliases every edge. An owner map records which sprite covers each canvas pixel last, so a
person's visibility is the share of their silhouette that is still theirs after everything in
front has been drawn, and parts outside the image count as hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.synth.sprite import Sprite

SUPERSAMPLE = 2
NOBODY = 0


@dataclass(frozen=True)
class CameraLook:
    """Per-scene lighting and sensor: colour balance, vignette, lens blur, noise."""

    gains: tuple[float, float, float]
    contrast: float
    vignette: float
    blur_sigma: float
    noise_sigma: float


@dataclass(frozen=True)
class Placed:
    """Where a pasted sprite ended up, in output pixels (full silhouette, may leave the image)."""

    owner: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 of the whole silhouette
    head_box: tuple[float, float, float, float] | None
    area: float  # silhouette area in canvas pixels


def sample_look(rng: np.random.Generator) -> CameraLook:
    warm = rng.normal(0, 0.05)
    return CameraLook(
        gains=(float(1 - warm + rng.normal(0, 0.02)), float(1 + rng.normal(0, 0.02)), float(1 + warm)),
        contrast=float(rng.uniform(0.85, 1.1)),
        vignette=float(rng.uniform(0.0, 0.25)),
        blur_sigma=float(rng.uniform(0.35, 0.8)),
        noise_sigma=float(rng.uniform(1.5, 4.0)),
    )


def upsample_background(background: np.ndarray) -> np.ndarray:
    h, w = background.shape[:2]
    return cv2.resize(background, (w * SUPERSAMPLE, h * SUPERSAMPLE), interpolation=cv2.INTER_LINEAR)


class Frame:
    def __init__(self, background_canvas: np.ndarray):
        self.canvas = background_canvas.astype(np.float32, copy=True)
        self.owner = np.zeros(self.canvas.shape[:2], np.uint16)

    def shadow(self, x: float, y: float, width: float, strength: float = 0.45) -> None:
        """Darken a soft ellipse on the ground under a sprite (drawn before any sprite)."""
        rx, ry = max(width / 2, 1.0), max(width / 7, 1.0)
        x0, y0 = int(x - rx * 1.6), int(y - ry * 2.2)
        x1, y1 = int(x + rx * 1.6) + 1, int(y + ry * 2.2) + 1
        h, w = self.owner.shape
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            return
        mask = np.zeros((y1 - y0, x1 - x0), np.float32)
        cv2.ellipse(mask, (int(x - x0), int(y - y0)), (int(rx), int(ry)), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
        mask = cv2.GaussianBlur(mask, (0, 0), max(ry * 0.6, 0.8))
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        sub = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0, None]
        self.canvas[cy0:cy1, cx0:cx1] *= 1 - strength * sub

    def paste(self, sprite: Sprite, x: float, y: float, owner: int) -> Placed:
        """Composite ``sprite`` with its ground point at canvas (x, y); returns its full silhouette box."""
        left, top = int(round(x - sprite.anchor_x)), int(round(y - sprite.anchor_y))
        solid = sprite.alpha >= 128
        rows, cols = np.flatnonzero(solid.any(axis=1)), np.flatnonzero(solid.any(axis=0))
        s = float(SUPERSAMPLE)
        if len(rows) == 0:
            return Placed(owner, (left / s, top / s, left / s, top / s), None, 0.0)
        box = (
            (left + cols[0]) / s,
            (top + rows[0]) / s,
            (left + cols[-1] + 1) / s,
            (top + rows[-1] + 1) / s,
        )
        head = None
        if sprite.head_box is not None:
            hx1, hy1, hx2, hy2 = sprite.head_box
            head = ((left + hx1) / s, (top + hy1) / s, (left + hx2) / s, (top + hy2) / s)
        h, w = self.owner.shape
        ph, pw = sprite.alpha.shape
        cx0, cy0 = max(left, 0), max(top, 0)
        cx1, cy1 = min(left + pw, w), min(top + ph, h)
        if cx1 > cx0 and cy1 > cy0:
            sy, sx = slice(cy0 - top, cy1 - top), slice(cx0 - left, cx1 - left)
            alpha = sprite.alpha[sy, sx].astype(np.float32)[..., None] * (1 / 255)
            region = self.canvas[cy0:cy1, cx0:cx1]
            region *= 1 - alpha
            region += sprite.rgb[sy, sx]
            self.owner[cy0:cy1, cx0:cx1][solid[sy, sx]] = owner
        return Placed(owner, box, head, float(solid.sum()))

    def visible_area(self) -> np.ndarray:
        """Canvas pixels each owner id still covers (index = id)."""
        return np.bincount(self.owner.ravel())

    def visible_box(self, placed: Placed) -> tuple[float, float, float, float] | None:
        s = SUPERSAMPLE
        h, w = self.owner.shape
        x0, y0 = max(int(placed.box[0] * s), 0), max(int(placed.box[1] * s), 0)
        x1, y1 = min(int(np.ceil(placed.box[2] * s)), w), min(int(np.ceil(placed.box[3] * s)), h)
        if x1 <= x0 or y1 <= y0:
            return None
        mine = self.owner[y0:y1, x0:x1] == placed.owner
        rows, cols = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
        if len(rows) == 0:
            return None
        return ((x0 + cols[0]) / s, (y0 + rows[0]) / s, (x0 + cols[-1] + 1) / s, (y0 + rows[-1] + 1) / s)

    def visible_share(self, placed: Placed, box: tuple[float, float, float, float] | None) -> float:
        """Share of ``box`` (output pixels) that is still this owner's, e.g. for the head."""
        if box is None:
            return 0.0
        s = SUPERSAMPLE
        h, w = self.owner.shape
        x0, y0 = max(int(box[0] * s), 0), max(int(box[1] * s), 0)
        x1, y1 = min(int(np.ceil(box[2] * s)), w), min(int(np.ceil(box[3] * s)), h)
        full = max((box[2] - box[0]) * (box[3] - box[1]) * s * s, 1.0)
        if x1 <= x0 or y1 <= y0:
            return 0.0
        return float((self.owner[y0:y1, x0:x1] == placed.owner).sum()) / full

    def finish(self, look: CameraLook, rng: np.random.Generator) -> np.ndarray:
        """The output image (uint8 BGR): downsample, light, blur, add sensor noise."""
        h, w = self.owner.shape
        image = cv2.resize(self.canvas, (w // SUPERSAMPLE, h // SUPERSAMPLE), interpolation=cv2.INTER_AREA)
        image *= np.array(look.gains, np.float32)
        image = (image - 128.0) * look.contrast + 128.0
        if look.vignette > 0:
            image *= _vignette(image.shape[0], image.shape[1], look.vignette)[..., None]
        image = cv2.GaussianBlur(image, (0, 0), look.blur_sigma)
        image += rng.normal(0.0, look.noise_sigma, image.shape).astype(np.float32)
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _vignette(h: int, w: int, strength: float) -> np.ndarray:
    ys = (np.arange(h, dtype=np.float32) - h / 2) / (h / 2)
    xs = (np.arange(w, dtype=np.float32) - w / 2) / (w / 2)
    return 1 - strength * 0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a JPEG")
    return data.tobytes()


@dataclass(frozen=True)
class Actor:
    """Anything standing on the ground: a person (owner 1..) or a prop (owner >= PROP_OWNER)."""

    sprite: Sprite
    x: float  # canvas ground point
    y: float
    owner: int
    shadow_width: float


PROP_OWNER = 60000


def stage(frame: Frame, actors: list[Actor]) -> dict[int, Placed]:
    """Shadows first, then every actor from the farthest (highest ground point) to the nearest."""
    for actor in actors:
        frame.shadow(actor.x, actor.y, actor.shadow_width, 0.35 if actor.owner >= PROP_OWNER else 0.45)
    placed = {}
    for actor in sorted(actors, key=lambda a: (a.y, a.owner)):
        placed[actor.owner] = frame.paste(actor.sprite, actor.x, actor.y, actor.owner)
    return placed
