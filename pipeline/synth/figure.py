"""An articulated pedestrian drawn at any size and walk phase, front/back to profile views.

Proportions follow the usual ~7.5 heads: knees at 0.285, hips 0.5, shoulders 0.82 of the height.
Arms swing against the legs; the knee of the swinging leg flexes; the pelvis drops to keep the
lower foot on the ground, which gives the walking bob. Between front and profile, lateral offsets
and widths blend with ``sideness``, and the limb on the far side is drawn first and darker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.synth.appearance import Appearance
from pipeline.synth.sprite import Painter, Point, Sprite, shade

HIP, THIGH, SHIN, ANKLE = 0.5, 0.215, 0.235, 0.045
SHOULDER, UPPER_ARM, FOREARM = 0.805, 0.165, 0.155
HEAD_CENTER, HEAD_HALF_HEIGHT = 0.935, 0.066


@dataclass(frozen=True)
class Pose:
    phase: float  # walk cycle, radians
    swing: float  # 0 standing still .. 1 walking
    sideness: float  # 0 facing or backing the camera .. 1 profile
    direction: int  # +1 walking to the image right, -1 to the left
    toward_camera: bool


@dataclass(frozen=True)
class _Limbs:
    hips: list[Point]
    knees: list[Point]
    ankles: list[Point]
    shoulders: list[Point]
    elbows: list[Point]
    hands: list[Point]
    lift: float


def render_person(look: Appearance, height_px: float, pose: Pose) -> Sprite:
    painter = Painter(height_px, width_units=0.8, top_units=1.05, bottom_units=0.06)
    limbs = _skeleton(look, pose)
    s, d = pose.sideness, pose.direction
    profile = s >= 0.5
    back_view = not pose.toward_camera and not profile
    lean = 0.025 * d * pose.swing * s
    lift = limbs.lift

    def up(point: Point) -> Point:
        return point[0], point[1] + lift

    # the far limbs (index 1) first in profile, darker: they are in the body's shadow
    order = (1, 0)
    if profile:
        _arm(painter, look, limbs, 1, far=True)
    if look.hair_style == "long" and pose.toward_camera and not profile:
        _hair_fall(painter, look, lean, lift, s, d)
    for k in order:
        _leg(painter, look, limbs, k, far=profile and k == 1, forward=d * s)
    _pelvis(painter, look, s, lift)
    if look.legwear == "skirt":
        _skirt(painter, look, s, lift, pose.swing)
    if look.bag == "backpack" and profile:
        _backpack_profile(painter, look, s, d, lift)
    _torso(painter, look, s, lean, lift, pose.toward_camera)
    if look.bag == "backpack" and not profile:
        _backpack(painter, look, s, lift, back_view)
    if profile:
        _arm(painter, look, limbs, 0, far=False)
    else:
        for k in order:
            _arm(painter, look, limbs, k, far=False)
    painter.line(up((lean * 0.9, 0.835)), up((lean, 0.875)), 0.046 * look.build, shade(look.skin, 0.9))
    head_box = _head(painter, look, pose, lean, lift, height_px)
    if look.bag == "handbag":
        _handbag(painter, look, limbs, profile, lift)
    return painter.sprite(head_box)


def _skeleton(look: Appearance, pose: Pose) -> _Limbs:
    s, d, b = pose.sideness, pose.direction, look.build
    leg_amp, arm_amp = 0.4 * pose.swing, 0.36 * pose.swing
    depth_sign = 1.0 if pose.toward_camera else -1.0
    lateral = [0.048 * b * (1 - s) + 0.012 * s, -0.048 * b * (1 - s) - 0.012 * s]
    hips, knees, ankles = [], [], []
    for k in range(2):
        phi = pose.phase + k * math.pi
        thigh = leg_amp * math.sin(phi)
        flex = 0.05 + 0.7 * pose.swing * max(0.0, math.cos(phi)) ** 2
        hip = (lateral[k], HIP)
        knee = (hip[0] + THIGH * math.sin(thigh) * d * s, hip[1] - THIGH * math.cos(thigh))
        shin = thigh - flex
        ankle_v = knee[1] - SHIN * math.cos(shin) - 0.03 * (1 - s) * math.sin(thigh) * depth_sign
        ankle = (knee[0] + SHIN * math.sin(shin) * d * s, ankle_v)
        hips.append(hip)
        knees.append(knee)
        ankles.append(ankle)
    lift = ANKLE - min(a[1] for a in ankles)
    shoulder_u = (0.125 * (1 - s) + 0.07 * s) * b - 0.028
    lean = 0.025 * d * pose.swing * s
    shoulders, elbows, hands = [], [], []
    for k, side in enumerate((1.0, -1.0)):
        # the arm on a leg's side swings against that leg
        swing = -arm_amp * math.sin(pose.phase + k * math.pi)
        splay = 0.012 * (1 - s) * side
        shoulder = (side * shoulder_u * (1 - s) + lean + side * 0.01 * s, SHOULDER)
        elbow = (
            shoulder[0] + UPPER_ARM * math.sin(swing) * d * s + splay,
            shoulder[1] - UPPER_ARM * math.cos(swing),
        )
        bend = swing + 0.15 + 0.25 * pose.swing
        hand = (elbow[0] + FOREARM * math.sin(bend) * d * s + splay, elbow[1] - FOREARM * math.cos(bend))
        shoulders.append(shoulder)
        elbows.append(elbow)
        hands.append(hand)
    move = [(p[0], p[1] + lift) for p in hips]
    return _Limbs(
        hips=move,
        knees=[(p[0], p[1] + lift) for p in knees],
        ankles=[(p[0], p[1] + lift) for p in ankles],
        shoulders=[(p[0], p[1] + lift) for p in shoulders],
        elbows=[(p[0], p[1] + lift) for p in elbows],
        hands=[(p[0], p[1] + lift) for p in hands],
        lift=lift,
    )


def _leg(painter: Painter, look: Appearance, limbs: _Limbs, k: int, *, far: bool, forward: float) -> None:
    f = 0.8 if far else 1.0
    b = look.build
    hip, knee, ankle = limbs.hips[k], limbs.knees[k], limbs.ankles[k]
    if look.legwear in ("trousers", "jeans"):
        painter.limb([hip, knee, ankle], [0.085 * b, 0.064 * b], shade(look.legs, f))
    elif look.legwear == "shorts":
        painter.limb([knee, ankle], [0.05 * b], shade(look.skin, f * 0.95))
        painter.limb([hip, knee], [0.09 * b], shade(look.legs, f))
    else:
        painter.limb([hip, knee, ankle], [0.058 * b, 0.048 * b], shade(look.skin, f * 0.95))
    # the shoe reaches forward in profile
    painter.ellipse(
        (ankle[0] + forward * 0.022, ankle[1] - 0.022),
        (0.026 + 0.014 * abs(forward), 0.018),
        shade(look.shoes, f),
    )


def _pelvis(painter: Painter, look: Appearance, s: float, lift: float) -> None:
    half = (0.088 * (1 - s) + 0.062 * s) * look.build
    painter.polygon(
        [
            (-half, 0.585 + lift),
            (half, 0.585 + lift),
            (half * 0.95, 0.455 + lift),
            (-half * 0.95, 0.455 + lift),
        ],
        look.legs if look.legwear != "skirt" else look.shirt_second,
    )


def _skirt(painter: Painter, look: Appearance, s: float, lift: float, swing: float) -> None:
    top = (0.09 * (1 - s) + 0.065 * s) * look.build
    bottom = top * (1.45 + 0.2 * swing)
    painter.polygon(
        [(-top, 0.59 + lift), (top, 0.59 + lift), (bottom, 0.34 + lift), (-bottom, 0.34 + lift)],
        shade(look.legs, 0.95),
    )


def _torso(painter: Painter, look: Appearance, s: float, lean: float, lift: float, toward: bool) -> None:
    b = look.build
    shoulder = (0.125 * (1 - s) + 0.072 * s) * b
    waist = (0.09 * (1 - s) + 0.066 * s) * b
    hem = (0.095 * (1 - s) + 0.07 * s) * b

    def at(u: float, v: float) -> Point:
        return u + lean * (v - 0.5) / 0.35, v + lift

    outline = [
        at(-shoulder * 0.5, 0.855),
        at(shoulder * 0.5, 0.855),
        at(shoulder * 0.92, 0.835),
        at(shoulder, 0.805),
        at(shoulder * 0.97, 0.74),
        at(waist, 0.62),
        at(hem, 0.48),
        at(-hem, 0.48),
        at(-waist, 0.62),
        at(-shoulder * 0.97, 0.74),
        at(-shoulder, 0.805),
        at(-shoulder * 0.92, 0.835),
    ]
    base = np.array(look.shirt, np.float32)
    second = np.array(look.shirt_second, np.float32)
    period = look.stripe_period
    pattern = look.pattern
    open_front = pattern == "jacket" and toward and s < 0.5

    def texture(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        u = xs - lean * (ys - lift - 0.5) / 0.35
        v = ys - lift
        across = np.clip(np.abs(u) / max(shoulder, 1e-3), 0, 1)
        light = (1.0 - 0.3 * across**2) * (0.9 + 0.12 * np.clip((v - 0.48) / 0.37, 0, 1))
        if pattern == "stripes":
            use_second = (np.floor(v / period) % 2 == 1) & (u == u)
        elif pattern == "checks":
            band_v = np.floor(v / period) % 2 == 1
            band_u = np.floor((u + 1.0) / period) % 2 == 1
            use_second = band_v ^ band_u
        elif open_front:
            use_second = (np.abs(u) < 0.032 * b) & (v == v)
        elif pattern == "block":
            use_second = (v > 0.71) & (u == u)
        else:
            use_second = np.zeros(np.broadcast_shapes(u.shape, v.shape), bool)
        colors = np.where(use_second[..., None], second, base)
        if pattern == "checks":
            colors = np.where(use_second[..., None], 0.5 * (base + second), colors)
        return colors * light[..., None]

    painter.textured_polygon(outline, texture)


def _arm(painter: Painter, look: Appearance, limbs: _Limbs, k: int, *, far: bool) -> None:
    f = 0.78 if far else 0.95
    b = look.build
    shoulder, elbow, hand = limbs.shoulders[k], limbs.elbows[k], limbs.hands[k]
    sleeve = look.shirt
    if look.long_sleeves:
        painter.limb([shoulder, elbow, hand], [0.052 * b, 0.043 * b], shade(sleeve, f * 0.92))
    else:
        mid = (shoulder[0] * 0.45 + elbow[0] * 0.55, shoulder[1] * 0.45 + elbow[1] * 0.55)
        painter.limb([mid, elbow, hand], [0.042 * b, 0.037 * b], shade(look.skin, f))
        painter.limb([shoulder, mid], [0.056 * b], shade(sleeve, f * 0.92))
    painter.ellipse(hand, (0.021, 0.024), shade(look.skin, f))


def _head(
    painter: Painter, look: Appearance, pose: Pose, lean: float, lift: float, height_px: float
) -> tuple[float, float, float, float]:
    s, d = pose.sideness, pose.direction
    profile = s >= 0.5
    back_view = not pose.toward_camera and not profile
    cx, cy = lean * 1.1, HEAD_CENTER + lift
    half_w = 0.05 * (1 - s) + 0.056 * s
    painter.ellipse((cx, cy), (half_w, HEAD_HALF_HEIGHT), look.skin)
    if pose.toward_camera and not profile and height_px > 110:
        for side in (-1, 1):
            painter.ellipse((cx + side * 0.018, cy + 0.004), (0.006, 0.004), shade(look.skin, 0.45))
    if profile and height_px > 110:
        painter.ellipse((cx + d * half_w * 0.95, cy - 0.005), (0.01, 0.012), shade(look.skin, 0.9))
    hair = look.hair
    style = look.hair_style
    if style == "long" and not (pose.toward_camera and not profile):
        offset = -d * 0.02 * s
        painter.polygon(
            [
                (cx + offset - 0.055, cy + 0.01),
                (cx + offset + 0.055, cy + 0.01),
                (cx + offset + 0.062 - 0.02 * s, 0.80 + lift),
                (cx + offset - 0.062 + 0.02 * s, 0.80 + lift),
            ],
            shade(hair, 0.95),
        )
    if style == "cap":
        painter.ellipse((cx, cy + 0.012), (half_w * 1.1, 0.058), look.hat, start=180, end=360)
        if profile:
            painter.line((cx, cy + 0.014), (cx + d * 0.085, cy + 0.01), 0.012, shade(look.hat, 0.8))
    elif back_view:
        painter.ellipse((cx, cy + 0.008), (half_w * 1.06, HEAD_HALF_HEIGHT * 0.95), hair)
    else:
        thickness = 0.045 if style == "buzz" else 0.06
        painter.ellipse((cx, cy + 0.012), (half_w * 1.07, thickness), hair, start=180, end=360)
        if profile:
            painter.ellipse((cx - d * 0.018, cy + 0.004), (half_w * 0.75, 0.055), hair)
    if style == "bun":
        painter.ellipse((cx - d * 0.03 * s, cy + 0.07), (0.028, 0.024), hair)
    return (cx - 0.062, cy - HEAD_HALF_HEIGHT - 0.003, cx + 0.062, cy + HEAD_HALF_HEIGHT + 0.012)


def _hair_fall(painter: Painter, look: Appearance, lean: float, lift: float, s: float, d: int) -> None:
    painter.polygon(
        [
            (lean - 0.058, HEAD_CENTER + lift),
            (lean + 0.058, HEAD_CENTER + lift),
            (lean + 0.07, 0.79 + lift),
            (lean - 0.07, 0.79 + lift),
        ],
        shade(look.hair, 0.85),
    )


def _backpack(painter: Painter, look: Appearance, s: float, lift: float, back_view: bool) -> None:
    b = look.build
    if back_view:
        half = 0.08 * b
        painter.polygon(
            [
                (-half, 0.8 + lift),
                (half, 0.8 + lift),
                (half * 1.05, 0.57 + lift),
                (-half * 1.05, 0.57 + lift),
            ],
            look.bag_color,
        )
        painter.line((-half * 0.7, 0.64 + lift), (half * 0.7, 0.64 + lift), 0.01, shade(look.bag_color, 0.7))
    else:
        for side in (-1, 1):
            u = side * 0.065 * b * (1 - s)
            painter.line((u, 0.835 + lift), (u * 1.1, 0.66 + lift), 0.016, shade(look.bag_color, 0.8))


def _backpack_profile(painter: Painter, look: Appearance, s: float, d: int, lift: float) -> None:
    back = -d * 0.06 * look.build
    painter.polygon(
        [
            (back, 0.81 + lift),
            (back - d * 0.07, 0.79 + lift),
            (back - d * 0.075, 0.58 + lift),
            (back, 0.57 + lift),
        ],
        look.bag_color,
    )


def _handbag(painter: Painter, look: Appearance, limbs: _Limbs, profile: bool, lift: float) -> None:
    shoulder = limbs.shoulders[0]
    bag_u = shoulder[0] + (0.0 if profile else 0.03)
    painter.line(shoulder, (bag_u, 0.56 + lift), 0.01, shade(look.bag_color, 0.7))
    painter.polygon(
        [
            (bag_u - 0.04, 0.57 + lift),
            (bag_u + 0.04, 0.57 + lift),
            (bag_u + 0.045, 0.47 + lift),
            (bag_u - 0.045, 0.47 + lift),
        ],
        look.bag_color,
    )
