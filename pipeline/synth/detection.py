"""CrowdHuman-style still images: a fresh scene and 2-15 unrelated people per image, no identities."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.synth.appearance import sample_appearance
from pipeline.synth.camera import PERSON_HEIGHT_M, GroundCamera, sample_camera
from pipeline.synth.compose import (
    PROP_OWNER,
    SUPERSAMPLE,
    Actor,
    Frame,
    Placed,
    encode_jpeg,
    sample_look,
    stage,
    upsample_background,
)
from pipeline.synth.config import DetectionConfig
from pipeline.synth.figure import Pose, render_person
from pipeline.synth.scenery import make_props, render_background

IGNORE_BELOW_VISIBILITY = 0.1  # almost fully hidden people become ignore regions, as CrowdHuman does
OCCLUDED_BELOW_VISIBILITY = 0.9


@dataclass(frozen=True)
class DetectionImage:
    image_id: str
    jpeg: bytes
    annotation: dict


def image_ids(split: str, count: int) -> list[str]:
    return [f"synth_{split}_{index:06d}" for index in range(1, count + 1)]


def render_detection_image(
    config: DetectionConfig, image_id: str, seed: np.random.SeedSequence, jpeg_quality: int
) -> DetectionImage:
    rng = np.random.default_rng(seed)
    cam = sample_camera(
        rng,
        config.width,
        config.height,
        bottom_person_fraction=(0.5, 0.8),
        camera_height_m=(1.3, 4.5),
        min_horizon_fraction=0.1,
    )
    far_person = cam.depth_for_person_height(config.min_person_px)
    wall_z = far_person * rng.uniform(1.25, 1.8)
    background = render_background(rng, cam, wall_z)
    cam2 = cam.scaled(SUPERSAMPLE)
    frame = Frame(upsample_background(background))

    near_z = cam.depth_for_person_height(config.max_person_fraction * config.height)
    props = make_props(rng, cam2, (near_z * 0.8, wall_z * 0.9), int(rng.integers(1, 6)))
    actors = [Actor(p.sprite, p.x, p.y, PROP_OWNER + i, p.shadow_width) for i, p in enumerate(props)]
    count = int(rng.integers(config.min_people, config.max_people + 1))
    actors += _people(rng, config, cam, cam2, count)
    placed = stage(frame, actors)
    image = frame.finish(sample_look(rng), rng)
    visible = frame.visible_area()
    boxes = []
    for box_id, owner in enumerate(range(1, count + 1)):
        boxes.append(_gtbox(frame, placed[owner], visible, box_id, config))
    return DetectionImage(image_id, encode_jpeg(image, jpeg_quality), {"ID": image_id, "gtboxes": boxes})


def _people(
    rng: np.random.Generator, config: DetectionConfig, cam: GroundCamera, cam2: GroundCamera, count: int
) -> list[Actor]:
    low, high = math.log(config.min_person_px), math.log(config.max_person_fraction * config.height)
    actors: list[Actor] = []
    anchors: list[tuple[float, float]] = []  # (ground x, z) of people already placed
    for owner in range(1, count + 1):
        look = sample_appearance(rng)
        if anchors and rng.random() < 0.45:
            # stand next to someone: groups overlap in the image, as crowds do
            gx, gz = anchors[int(rng.integers(len(anchors)))]
            z = max(gz * (1 + rng.normal(0, 0.08)), 0.5)
            x = gx + rng.choice((-1, 1)) * rng.uniform(0.3, 0.8)
        else:
            # heights log-uniform with a lean towards small people, as in street footage
            height_px = math.exp(low + (high - low) * rng.random() ** 1.3)
            z = cam.focal * PERSON_HEIGHT_M * look.height_factor / height_px
            x = cam.ground_x(rng.uniform(0, config.width), z)
        height_px = cam.focal * PERSON_HEIGHT_M * look.height_factor / z
        foot = float(cam.foot_y(z))
        if foot - height_px > config.height * 0.97 - 0.15 * height_px:  # head would be off the bottom
            z = cam.depth_of_foot_row(config.height * 0.97 + 0.7 * height_px)
        z = min(z, cam.depth_for_person_height(config.min_person_px * 0.9) * look.height_factor)
        image_x = float(np.clip(cam.image_x(x, z), 0, config.width))
        x = cam.ground_x(image_x, z)
        anchors.append((x, z))
        walking = rng.random() < 0.75
        pose = Pose(
            phase=float(rng.uniform(0, 2 * math.pi)),
            swing=float(rng.uniform(0.5, 1.0)) if walking else 0.0,
            sideness=float(rng.random() ** 0.7),
            direction=1 if rng.random() < 0.5 else -1,
            toward_camera=bool(rng.random() < 0.5),
        )
        height2 = cam2.focal * PERSON_HEIGHT_M * look.height_factor / z
        sprite = render_person(look, height2, pose)
        actors.append(Actor(sprite, float(cam2.image_x(x, z)), float(cam2.foot_y(z)), owner, height2 * 0.28))
    return actors


def _gtbox(frame: Frame, placed: Placed, visible: np.ndarray, box_id: int, config: DetectionConfig) -> dict:
    seen = float(visible[placed.owner]) if placed.owner < len(visible) else 0.0
    visibility = seen / placed.area if placed.area > 0 else 0.0
    vbox = frame.visible_box(placed)
    if vbox is None:
        vbox = _clip(placed.box, config.width, config.height)
    head = placed.head_box or placed.box
    head_visible = frame.visible_share(placed, head)
    return {
        "tag": "person",
        "fbox": _xywh(placed.box),
        "vbox": _xywh(vbox),
        "hbox": _xywh(head),
        "head_attr": {"ignore": 0, "occ": int(head_visible < 0.5), "unsure": 0},
        "extra": {
            "box_id": box_id,
            "occ": int(visibility < OCCLUDED_BELOW_VISIBILITY),
            "ignore": int(visibility < IGNORE_BELOW_VISIBILITY),
        },
    }


def _clip(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[float, float, float, float]:
    return (
        min(max(box[0], 0), width),
        min(max(box[1], 0), height),
        min(max(box[2], 0), width),
        min(max(box[3], 0), height),
    )


def _xywh(box: tuple[float, float, float, float]) -> list[int]:
    # CrowdHuman writes integer pixels; round outwards so the box still holds the whole silhouette
    x1, y1 = math.floor(box[0]), math.floor(box[1])
    x2, y2 = math.ceil(box[2]), math.ceil(box[3])
    return [int(x1), int(y1), int(x2 - x1), int(y2 - y1)]


def odgt_line(annotation: dict) -> str:
    return json.dumps(annotation, separators=(", ", ": ")) + "\n"


ProgressFn = Callable[[int], None]
