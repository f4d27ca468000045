"""MOTChallenge-style sequences: one static camera and scene, people walking in and out.

People live on the ground plane (metres) and walk with a slowly wandering heading; the camera
projects them, so perspective (lower feet, larger person) and occlusion order come for free.
New people enter through the image borders while fewer than the target are on screen, and
people who walk out of the image are gone for good, so identities start and end mid-sequence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from pipeline.synth.appearance import Appearance, sample_appearance
from pipeline.synth.camera import PERSON_HEIGHT_M, GroundCamera, sample_camera
from pipeline.synth.compose import (
    PROP_OWNER,
    SUPERSAMPLE,
    Actor,
    Frame,
    encode_jpeg,
    sample_look,
    stage,
    upsample_background,
)
from pipeline.synth.config import TrackingConfig
from pipeline.synth.figure import Pose, render_person
from pipeline.synth.scenery import make_props, render_background

MIN_ROW_SIDE_PX = 2.0  # a gt row needs a box at least this big inside the image


@dataclass
class Walker:
    key: int
    look: Appearance
    x: float
    z: float
    heading: float  # radians; 0 walks to the image right, pi/2 away from the camera
    speed: float  # m/s; 0 for someone standing
    phase: float
    seen: bool = False
    age_unseen: int = 0


@dataclass
class SequenceFrame:
    jpeg: bytes
    rows: list[tuple[int, float, float, float, float, float]] = field(default_factory=list)  # key, box, vis


def sequence_name(index: int) -> str:
    return f"SYNTH-{index:02d}"


def render_sequence(
    config: TrackingConfig, seed: np.random.SeedSequence, jpeg_quality: int
) -> Iterator[SequenceFrame]:
    """Yield every frame in order, with its gt rows (keyed by an internal walker key)."""
    rng = np.random.default_rng(seed)
    width, height = config.width, config.height
    cam = sample_camera(
        rng,
        width,
        height,
        bottom_person_fraction=(0.3, 0.45),
        camera_height_m=(2.8, 5.0),
        min_horizon_fraction=0.06,
    )
    far_z = cam.depth_for_person_height(max(25.0, 0.1 * height))
    near_z = cam.depth_of_foot_row(height)
    wall_z = far_z * rng.uniform(1.15, 1.4)
    cam2 = cam.scaled(SUPERSAMPLE)
    background = upsample_background(render_background(rng, cam, wall_z))
    props = make_props(rng, cam2, (near_z * 0.9, wall_z * 0.9), int(rng.integers(2, 6)))
    prop_actors = [Actor(p.sprite, p.x, p.y, PROP_OWNER + i, p.shadow_width) for i, p in enumerate(props)]
    look = sample_look(rng)
    dt = 1.0 / config.frame_rate

    walkers: list[Walker] = []
    next_key = 1
    target = config.mean_people
    for _ in range(int(np.clip(round(rng.normal(target, 1.5)), 1, target + 3))):
        walkers.append(_walker_inside(rng, next_key, cam, near_z, far_z))
        next_key += 1
    entered_late = False
    for frame_index in range(config.frames):
        if frame_index > 0:
            on_screen = sum(w.seen for w in walkers)
            must_enter = not entered_late and frame_index >= config.frames // 3
            if must_enter or (on_screen < target and rng.random() < 0.35):
                walkers.append(_walker_entering(rng, next_key, cam, near_z, far_z))
                next_key += 1
                entered_late = True
            for walker in walkers:
                _step(rng, walker, dt, near_z, far_z)
        actors = list(prop_actors)
        for walker in walkers:
            actors.append(_actor(walker, cam2))
        frame = Frame(background)
        placed = stage(frame, actors)
        visible = frame.visible_area()
        rows = []
        for walker in walkers:
            box = placed[walker.key].box
            inside = (min(box[2], width) - max(box[0], 0), min(box[3], height) - max(box[1], 0))
            if min(inside) < MIN_ROW_SIDE_PX:
                walker.age_unseen += 1
                continue
            walker.seen, walker.age_unseen = True, 0
            area = placed[walker.key].area
            seen = float(visible[walker.key]) if walker.key < len(visible) else 0.0
            rows.append((walker.key, *box, min(seen / area, 1.0) if area > 0 else 0.0))
        # someone who has been on screen and left is gone; so is anyone who never made it in
        walkers = [w for w in walkers if not ((w.seen and w.age_unseen > 0) or w.age_unseen > 40)]
        image = frame.finish(look, rng)
        yield SequenceFrame(encode_jpeg(image, jpeg_quality), rows)


def _pose(walker: Walker) -> Pose:
    vx, vz = math.cos(walker.heading), math.sin(walker.heading)
    return Pose(
        phase=walker.phase,
        swing=1.0 if walker.speed > 0 else 0.0,
        sideness=abs(vx),
        direction=1 if vx >= 0 else -1,
        toward_camera=vz < 0,
    )


def _actor(walker: Walker, cam2: GroundCamera) -> Actor:
    height = cam2.focal * PERSON_HEIGHT_M * walker.look.height_factor / walker.z
    sprite = render_person(walker.look, height, _pose(walker))
    return Actor(
        sprite, cam2.image_x(walker.x, walker.z), float(cam2.foot_y(walker.z)), walker.key, height * 0.28
    )


def _step(rng: np.random.Generator, walker: Walker, dt: float, near_z: float, far_z: float) -> None:
    if walker.speed == 0:
        return
    walker.heading += rng.normal(0, 0.04)
    if walker.z > far_z and math.sin(walker.heading) > 0:  # the far wall: turn back
        walker.heading = -walker.heading
    walker.x += walker.speed * math.cos(walker.heading) * dt
    walker.z += walker.speed * math.sin(walker.heading) * dt
    walker.z = max(walker.z, near_z * 0.35)
    stride = 1.45 * walker.look.height_factor  # metres per full cycle (two steps)
    walker.phase = (walker.phase + 2 * math.pi * walker.speed * dt / stride) % (2 * math.pi)


def _walker_inside(
    rng: np.random.Generator, key: int, cam: GroundCamera, near_z: float, far_z: float
) -> Walker:
    z = float(np.exp(rng.uniform(math.log(near_z * 0.95), math.log(far_z))))
    x = cam.ground_x(rng.uniform(0.03, 0.97) * cam.image_width, z)
    standing = rng.random() < 0.1
    heading = rng.uniform(-math.pi, math.pi)
    return Walker(
        key,
        sample_appearance(rng),
        x,
        z,
        heading,
        0.0 if standing else rng.uniform(0.9, 1.6),
        rng.uniform(0, 2 * math.pi),
    )


def _walker_entering(
    rng: np.random.Generator, key: int, cam: GroundCamera, near_z: float, far_z: float
) -> Walker:
    side = rng.choice(("left", "right", "left", "right", "bottom"))
    z = float(np.exp(rng.uniform(math.log(near_z * 0.95), math.log(far_z))))
    half_width_px = 0.12 * cam.pixels(PERSON_HEIGHT_M, z)
    turn = rng.normal(0, 0.35)
    if side == "left":
        x, heading = cam.ground_x(-half_width_px, z), turn
    elif side == "right":
        x, heading = cam.ground_x(cam.image_width + half_width_px, z), math.pi + turn
    else:
        z = near_z * 0.55
        x, heading = cam.ground_x(rng.uniform(0.15, 0.85) * cam.image_width, z), math.pi / 2 + turn * 0.5
    return Walker(
        key, sample_appearance(rng), x, z, heading, rng.uniform(0.9, 1.6), rng.uniform(0, 2 * math.pi)
    )


ProgressFn = Callable[[int], None]
