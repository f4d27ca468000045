"""Procedural street, plaza and park scenes: a background picture and the props standing in it.

The background (sky, facades or a treeline along a far wall, textured ground in perspective) is
drawn at output resolution; props (trees, lamp posts, benches, bins, bollards, parked cars) are
sprites drawn in metres and stood on the ground by the camera, so they occlude people behind them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.synth.camera import GroundCamera
from pipeline.synth.sprite import Painter, Sprite, shade

Color = tuple[float, float, float]

WALL_COLORS: tuple[Color, ...] = (
    (60, 70, 150),  # brick
    (80, 95, 170),
    (150, 170, 190),  # sandstone
    (175, 185, 195),
    (120, 125, 130),  # concrete
    (200, 205, 210),
    (110, 140, 160),
    (90, 100, 110),
    (170, 190, 215),
)
GROUND_KINDS = ("plaza", "street", "street", "park")


@dataclass
class Prop:
    sprite: Sprite
    x: float  # ground point on the canvas
    y: float
    shadow_width: float


def render_background(rng: np.random.Generator, cam: GroundCamera, wall_z: float) -> np.ndarray:
    """The static picture (float32 BGR, camera resolution): sky, far wall, ground."""
    h, w = cam.image_height, cam.image_width
    image = np.empty((h, w, 3), np.float32)
    base_y = int(np.clip(round(float(cam.foot_y(wall_z))), 0, h))
    _sky(rng, image, base_y)
    if base_y > 0:
        if rng.random() < 0.8:
            _facades(rng, image, cam, wall_z, base_y)
        else:
            _treeline(rng, image, cam, wall_z, base_y)
    if base_y < h:
        image[base_y:] = _ground(rng, cam, base_y, wall_z)
    coarse = cv2.resize(rng.normal(0, 1, (h // 16 + 2, w // 16 + 2)).astype(np.float32), (w, h))
    image *= (1 + 0.035 * coarse)[..., None]
    return image


def _sky(rng: np.random.Generator, image: np.ndarray, base_y: int) -> None:
    kind = rng.integers(3)
    top, bottom = {
        0: ((200, 150, 90), (235, 215, 190)),  # clear
        1: ((185, 180, 175), (215, 212, 210)),  # overcast
        2: ((160, 130, 120), (150, 190, 230)),  # dusk
    }[int(kind)]
    rows = max(base_y, 1)
    t = np.linspace(0, 1, rows, dtype=np.float32)[:, None]
    gradient = np.array(top, np.float32) * (1 - t) + np.array(bottom, np.float32) * t
    image[:base_y] = gradient[:base_y, None, :]


def _facades(
    rng: np.random.Generator, image: np.ndarray, cam: GroundCamera, wall_z: float, base_y: int
) -> None:
    per_m = cam.focal / wall_z
    x = -rng.uniform(0, 6) * per_m
    w = image.shape[1]
    while x < w:
        width = rng.uniform(6, 16) * per_m
        height = rng.uniform(7, 26) * per_m
        wall = np.array(WALL_COLORS[rng.integers(len(WALL_COLORS))], np.float32) * rng.uniform(0.85, 1.1)
        x0, x1 = int(x), int(x + width)
        top = int(base_y - height)
        cv2.rectangle(image, (x0, top), (x1, base_y), wall.tolist(), -1)
        cv2.rectangle(image, (x0, top), (x1, top + max(1, int(0.4 * per_m))), (wall * 0.8).tolist(), -1)
        glass = np.array((rng.uniform(70, 120), rng.uniform(60, 100), rng.uniform(40, 80)), np.float32)
        floor = rng.uniform(2.9, 3.5) * per_m
        spacing = rng.uniform(2.4, 3.6) * per_m
        win_w, win_h = rng.uniform(0.9, 1.5) * per_m, rng.uniform(1.2, 1.8) * per_m
        row_y = base_y - floor * 1.3
        while row_y - win_h > top + 0.3 * floor:
            cx = x0 + spacing / 2
            while cx + win_w / 2 < x1:
                lit = rng.random() < 0.15
                pane = glass * rng.uniform(0.8, 1.2) + (np.array((60, 120, 150), np.float32) if lit else 0)
                p0 = (int(cx - win_w / 2), int(row_y - win_h))
                p1 = (int(cx + win_w / 2), int(row_y))
                cv2.rectangle(
                    image, (p0[0] - 1, p0[1] - 1), (p1[0] + 1, p1[1] + 2), (wall * 0.7).tolist(), -1
                )
                cv2.rectangle(image, p0, p1, np.clip(pane, 0, 255).tolist(), -1)
                cv2.line(
                    image,
                    (p0[0], (p0[1] + p1[1]) // 2),
                    (p1[0], (p0[1] + p1[1]) // 2),
                    (wall * 0.8).tolist(),
                    1,
                )
                cx += spacing
            row_y -= floor
        # ground floor: a shop window or a door
        if rng.random() < 0.6:
            sx0, sx1 = int(x0 + 0.1 * width), int(x1 - 0.1 * width)
            cv2.rectangle(image, (sx0, int(base_y - 2.6 * per_m)), (sx1, base_y), (glass * 0.7).tolist(), -1)
            awning = np.array((rng.uniform(20, 200), rng.uniform(20, 200), rng.uniform(20, 200)))
            cv2.rectangle(
                image, (sx0, int(base_y - 3.0 * per_m)), (sx1, int(base_y - 2.6 * per_m)), awning.tolist(), -1
            )
        else:
            dx = int(x0 + rng.uniform(0.2, 0.8) * width)
            cv2.rectangle(
                image,
                (dx, int(base_y - 2.3 * per_m)),
                (int(dx + 1.2 * per_m), base_y),
                (wall * 0.4).tolist(),
                -1,
            )
        x += width


def _treeline(
    rng: np.random.Generator, image: np.ndarray, cam: GroundCamera, wall_z: float, base_y: int
) -> None:
    per_m = cam.focal / wall_z
    w = image.shape[1]
    for _ in range(int(w / (2.5 * per_m)) + 3):
        cx = rng.uniform(0, w)
        r = rng.uniform(1.5, 3.5) * per_m
        cy = base_y - rng.uniform(2, 7) * per_m
        green = np.array((rng.uniform(30, 70), rng.uniform(70, 120), rng.uniform(40, 80)))
        cv2.circle(image, (int(cx), int(cy)), int(r), green.tolist(), -1, cv2.LINE_AA)
    cv2.rectangle(image, (0, int(base_y - 1.5 * per_m)), (w, base_y), (40, 80, 50), -1)


def _ground(rng: np.random.Generator, cam: GroundCamera, base_y: int, wall_z: float) -> np.ndarray:
    h, w = cam.image_height, cam.image_width
    rows = np.arange(base_y, h, dtype=np.float32)[:, None] + 0.5
    z = cam.focal * cam.height_m / np.maximum(rows - cam.horizon_y, 0.5)
    x = (np.arange(w, dtype=np.float32)[None, :] + 0.5 - cam.center_x) * z / cam.focal
    per_m_x = cam.focal / z  # pixels per metre across
    per_m_z = cam.focal * cam.height_m / z**2  # pixels per metre in depth
    kind = GROUND_KINDS[rng.integers(len(GROUND_KINDS))]
    tiles = _tiles(rng, x, z, per_m_x, per_m_z)
    if kind == "plaza":
        ground = tiles
    elif kind == "park":
        grass = np.array((rng.uniform(40, 70), rng.uniform(110, 150), rng.uniform(70, 100)), np.float32)
        blotch = cv2.resize(rng.normal(0, 1, (h // 8 + 2, w // 8 + 2)).astype(np.float32), (w, h))[base_y:]
        ground = grass * (1 + 0.12 * blotch)[..., None] * np.ones_like(x)[..., None]
        path_z = rng.uniform(z.min(), min(z.max(), wall_z) + 1e-3)
        on_path = np.abs(z - path_z) < rng.uniform(1.5, 3.0)
        gravel = np.array((150, 170, 180), np.float32) * (1 + 0.05 * blotch)[..., None]
        ground = np.where(on_path[..., None], gravel, ground)
    else:
        ground = _street(rng, x, z, per_m_x, per_m_z, wall_z, tiles)
    return ground.astype(np.float32)


def _tiles(
    rng: np.random.Generator, x: np.ndarray, z: np.ndarray, per_x: np.ndarray, per_z: np.ndarray
) -> np.ndarray:
    size = rng.uniform(0.4, 1.0)
    color = np.array(
        [(150, 155, 160), (170, 180, 190), (110, 125, 160), (140, 140, 135), (185, 195, 200)][
            rng.integers(5)
        ],
        np.float32,
    ) * rng.uniform(0.85, 1.1)
    fx, fz = x / size, z / size
    # distance to the nearest joint in pixels, faded out where joints get closer than a few pixels
    dx = np.abs(fx - np.round(fx)) * size * per_x
    dz = np.abs(fz - np.round(fz)) * size * per_z
    joint_x = np.clip(1 - dx / 0.8, 0, 1) * np.clip((size * per_x - 3) / 5, 0, 1)
    joint_z = np.clip(1 - dz / 0.8, 0, 1) * np.clip((size * per_z - 3) / 5, 0, 1)
    joints = np.maximum(joint_x, joint_z)
    cell = np.sin(np.floor(fx) * 12.9898 + np.floor(fz) * 78.233) * 43758.5453
    variation = 1 + 0.08 * (cell - np.floor(cell) - 0.5) * np.clip(size * per_z / 6, 0, 1)
    return color * (variation * (1 - 0.3 * joints))[..., None]


def _street(
    rng: np.random.Generator,
    x: np.ndarray,
    z: np.ndarray,
    per_x: np.ndarray,
    per_z: np.ndarray,
    wall_z: float,
    tiles: np.ndarray,
) -> np.ndarray:
    curb = rng.uniform(z.min() + 2.0, max(z.min() + 2.5, wall_z * 0.55))
    road_width = rng.uniform(6.0, 9.0)
    asphalt = np.array((75, 75, 78), np.float32) * rng.uniform(0.8, 1.2)
    on_road = (z > curb) & (z < curb + road_width)
    lane = np.abs(z - (curb + road_width / 2)) * per_z < np.maximum(0.08 * per_z, 0.6)
    dash = (np.floor(x / 1.5) % 2) == 0
    marking = lane & dash & on_road
    road = np.where(marking[..., None], np.array((200, 205, 205), np.float32), asphalt * np.ones_like(tiles))
    ground = np.where(on_road[..., None], road, tiles)
    curb_line = (np.abs(z - curb) * per_z < 1.2) | (np.abs(z - curb - road_width) * per_z < 1.0)
    return np.where(curb_line[..., None], np.array((185, 190, 195), np.float32), ground)


def make_props(
    rng: np.random.Generator, cam2: GroundCamera, z_range: tuple[float, float], count: int
) -> list[Prop]:
    """``count`` props at random ground points in view, on the supersampled canvas's camera."""
    props = []
    kinds = ("tree", "lamp", "lamp", "bench", "bin", "bollard", "car", "car")
    for _ in range(count):
        kind = kinds[rng.integers(len(kinds))]
        z = float(np.exp(rng.uniform(np.log(z_range[0]), np.log(z_range[1]))))
        x = rng.uniform(-0.05, 1.05) * cam2.image_width
        per_m = cam2.focal / z
        sprite, width = _PROP_PAINTERS[kind](rng, per_m)
        props.append(Prop(sprite, float(x), float(cam2.foot_y(z)), width * per_m))
    return props


def _tree(rng: np.random.Generator, per_m: float) -> tuple[Sprite, float]:
    p = Painter(per_m, width_units=5.0, top_units=8.0, bottom_units=0.1)
    trunk = (40, 60, 85)
    p.line((0, 0), (0, 3.2), rng.uniform(0.22, 0.4), trunk)
    green = np.array((rng.uniform(30, 60), rng.uniform(90, 140), rng.uniform(50, 90)))
    for _ in range(9):
        cx, cy = rng.normal(0, 0.8), rng.uniform(3.6, 6.0)
        r = rng.uniform(0.8, 1.4)
        p.ellipse((cx, cy), (r, r * 0.9), tuple((green * rng.uniform(0.75, 1.2)).tolist()))
    return p.sprite(), 2.5


def _lamp(rng: np.random.Generator, per_m: float) -> tuple[Sprite, float]:
    height = rng.uniform(3.5, 5.5)
    p = Painter(per_m, width_units=2.0, top_units=height + 0.5, bottom_units=0.1)
    color = ((40, 40, 40), (60, 80, 60), (90, 90, 95))[rng.integers(3)]
    p.line((0, 0), (0, 0.5), 0.2, color)
    p.line((0, 0), (0, height), 0.12, color)
    p.line((0, height), (0.5, height + 0.1), 0.07, color)
    p.ellipse((0.55, height), (0.22, 0.09), shade(color, 1.6))
    return p.sprite(), 0.4


def _bench(rng: np.random.Generator, per_m: float) -> tuple[Sprite, float]:
    p = Painter(per_m, width_units=2.0, top_units=1.0, bottom_units=0.1)
    wood = ((50, 90, 140), (40, 70, 110), (60, 90, 60), (50, 50, 55))[rng.integers(4)]
    for u in (-0.7, 0.7):
        p.line((u, 0), (u, 0.85), 0.07, (40, 40, 40))
    p.polygon([(-0.85, 0.47), (0.85, 0.47), (0.85, 0.41), (-0.85, 0.41)], wood)
    for v in (0.6, 0.77):
        p.polygon([(-0.85, v + 0.06), (0.85, v + 0.06), (0.85, v), (-0.85, v)], shade(wood, 0.9))
    return p.sprite(), 1.8


def _bin(rng: np.random.Generator, per_m: float) -> tuple[Sprite, float]:
    p = Painter(per_m, width_units=0.8, top_units=1.1, bottom_units=0.1)
    color = ((40, 70, 40), (70, 70, 70), (30, 30, 30), (40, 90, 160))[rng.integers(4)]
    p.polygon([(-0.26, 0.0), (0.26, 0.0), (0.29, 0.9), (-0.29, 0.9)], color)
    p.ellipse((0, 0.9), (0.3, 0.06), shade(color, 1.3))
    p.line((-0.27, 0.72), (0.27, 0.72), 0.04, shade(color, 0.7))
    return p.sprite(), 0.7


def _bollard(rng: np.random.Generator, per_m: float) -> tuple[Sprite, float]:
    p = Painter(per_m, width_units=0.5, top_units=1.1, bottom_units=0.1)
    color = ((45, 45, 45), (60, 60, 70))[rng.integers(2)]
    p.line((0, 0), (0, 0.9), 0.16, color)
    p.line((0, 0.72), (0, 0.8), 0.17, (200, 200, 200))
    return p.sprite(), 0.3


def _car(rng: np.random.Generator, per_m: float) -> tuple[Sprite, float]:
    p = Painter(per_m, width_units=4.8, top_units=1.6, bottom_units=0.1)
    body = (
        (30, 30, 30),
        (200, 200, 205),
        (140, 140, 145),
        (40, 40, 170),
        (120, 60, 30),
        (60, 80, 50),
        (230, 230, 235),
        (70, 50, 40),
    )[rng.integers(8)]
    body = tuple(float(c) * rng.uniform(0.9, 1.1) for c in body)
    facing = 1 if rng.random() < 0.5 else -1
    length = rng.uniform(3.8, 4.6)
    half = length / 2

    def m(u: float, v: float) -> tuple[float, float]:
        return u * facing, v

    p.polygon(
        [
            m(-half, 0.3),
            m(half, 0.3),
            m(half, 0.75),
            m(half - 0.1, 0.92),
            m(-half + 0.1, 0.95),
            m(-half, 0.8),
        ],
        body,  # type: ignore[arg-type]
    )
    roof = [m(-0.6 * half, 0.95), m(0.45 * half, 0.95), m(0.25 * half, 1.42), m(-0.5 * half, 1.42)]
    p.polygon(roof, shade(body, 0.95))  # type: ignore[arg-type]
    glass = (70, 55, 45)
    p.polygon([m(-0.5 * half, 1.0), m(0.35 * half, 1.0), m(0.2 * half, 1.35), m(-0.43 * half, 1.35)], glass)
    p.line(m(-0.08 * half, 1.0), m(-0.1 * half, 1.35), 0.06, shade(body, 0.8))  # type: ignore[arg-type]
    for u in (-half * 0.65, half * 0.65):
        p.ellipse((u, 0.33), (0.33, 0.33), (25, 25, 25))
        p.ellipse((u, 0.33), (0.16, 0.16), (140, 140, 140))
    p.ellipse((facing * (half - 0.08), 0.75), (0.08, 0.06), (200, 230, 240))
    return p.sprite(), length


_PROP_PAINTERS = {
    "tree": _tree,
    "lamp": _lamp,
    "bench": _bench,
    "bin": _bin,
    "bollard": _bollard,
    "car": _car,
}
