"""Typed, frozen configuration of a synthetic world, and the named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

GENERATOR_VERSION = 1
JPEG_QUALITY = 90


@dataclass(frozen=True)
class DetectionConfig:
    """The CrowdHuman-style still images: varied scenes, no identities."""

    train_images: int
    val_images: int
    height: int
    width: int
    min_people: int = 2
    max_people: int = 15
    min_person_px: float = 25.0  # smallest full-body height drawn, like real footage
    max_person_fraction: float = 0.7  # tallest person as a share of the image height


@dataclass(frozen=True)
class TrackingConfig:
    """The MOTChallenge-style sequences: static camera, persistent identities."""

    sequences: int
    frames: int
    height: int
    width: int
    frame_rate: int = 10
    mean_people: float = 9.0  # people on screen at a time, on average


@dataclass(frozen=True)
class WorldConfig:
    seed: int
    preset: str
    detection: DetectionConfig
    tracking: TrackingConfig
    jpeg_quality: int = JPEG_QUALITY

    def to_dict(self) -> dict[str, Any]:
        return {"generator_version": GENERATOR_VERSION, **asdict(self)}


PRESETS: dict[str, WorldConfig] = {
    "demo": WorldConfig(
        seed=0,
        preset="demo",
        detection=DetectionConfig(train_images=400, val_images=60, height=360, width=480),
        tracking=TrackingConfig(sequences=3, frames=120, height=360, width=480),
    ),
    "tiny": WorldConfig(
        seed=0,
        preset="tiny",
        detection=DetectionConfig(train_images=12, val_images=4, height=128, width=160),
        tracking=TrackingConfig(sequences=2, frames=12, height=128, width=160, mean_people=6.0),
    ),
}


def build_config(
    preset: str = "demo",
    *,
    seed: int | None = None,
    images: int | None = None,
    val_images: int | None = None,
    sequences: int | None = None,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
) -> WorldConfig:
    """A preset with the given overrides; height/width apply to both the images and the sequences."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (presets: {', '.join(PRESETS)})")
    base = PRESETS[preset]
    detection = replace(
        base.detection,
        train_images=_pick(images, base.detection.train_images),
        val_images=_pick(val_images, base.detection.val_images),
        height=_pick(height, base.detection.height),
        width=_pick(width, base.detection.width),
    )
    tracking = replace(
        base.tracking,
        sequences=_pick(sequences, base.tracking.sequences),
        frames=_pick(frames, base.tracking.frames),
        height=_pick(height, base.tracking.height),
        width=_pick(width, base.tracking.width),
    )
    config = replace(base, seed=_pick(seed, base.seed), detection=detection, tracking=tracking)
    validate(config)
    return config


def validate(config: WorldConfig) -> None:
    d, t = config.detection, config.tracking
    checks = [
        (config.seed >= 0, f"--seed must be >= 0, got {config.seed}"),
        (d.train_images >= 1, f"--images must be >= 1, got {d.train_images}"),
        (d.val_images >= 0, f"--val-images must be >= 0, got {d.val_images}"),
        (t.sequences >= 0, f"--sequences must be >= 0, got {t.sequences}"),
        (t.sequences <= 99, f"--sequences must be <= 99, got {t.sequences}"),
        (t.frames >= 2, f"--frames must be >= 2, got {t.frames}"),
        (min(d.height, t.height) >= 96, "--height must be >= 96 pixels"),
        (min(d.width, t.width) >= 96, "--width must be >= 96 pixels"),
        (max(d.height, d.width) <= 4096, "--height/--width must be <= 4096 pixels"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def _pick(value: int | None, default: int) -> int:
    return default if value is None else value
