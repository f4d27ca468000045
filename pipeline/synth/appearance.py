"""What one person looks like: body build, skin, hair, clothes, bag. Colours are BGR floats 0..255."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Color = tuple[float, float, float]

SKIN_TONES: tuple[Color, ...] = (
    (189, 209, 241),
    (160, 190, 230),
    (130, 170, 222),
    (110, 150, 205),
    (90, 128, 180),
    (70, 100, 150),
    (50, 75, 120),
    (38, 55, 90),
)
HAIR_COLORS: tuple[Color, ...] = (
    (20, 20, 22),
    (25, 30, 45),
    (30, 45, 70),
    (40, 70, 110),
    (90, 150, 200),
    (150, 150, 155),
    (35, 55, 120),
)
# Street clothing is mostly dark and muted; a few bright garments.
CLOTHES_COLORS: tuple[Color, ...] = (
    (25, 25, 28),
    (40, 40, 45),
    (70, 70, 75),
    (120, 120, 125),
    (200, 200, 205),
    (235, 238, 240),
    (80, 45, 30),
    (120, 70, 40),
    (140, 100, 60),
    (60, 40, 110),
    (40, 40, 160),
    (30, 30, 200),
    (60, 120, 60),
    (40, 80, 40),
    (130, 170, 190),
    (90, 140, 170),
    (160, 110, 150),
    (30, 150, 220),
    (170, 130, 60),
    (50, 90, 130),
)
DENIM: tuple[Color, ...] = ((110, 75, 45), (140, 100, 60), (90, 60, 40), (60, 45, 35))
SHOE_COLORS: tuple[Color, ...] = ((20, 20, 20), (40, 40, 45), (230, 230, 230), (40, 60, 90), (30, 30, 60))

SHIRT_PATTERNS = ("solid", "solid", "stripes", "checks", "jacket", "block")
LEGWEAR = ("trousers", "trousers", "jeans", "jeans", "shorts", "skirt")
HAIR_STYLES = ("short", "short", "long", "bun", "buzz", "cap")
BAGS = ("none", "none", "none", "backpack", "handbag")


@dataclass(frozen=True)
class Appearance:
    height_factor: float  # body height / 1.75 m
    build: float  # width multiplier
    skin: Color
    hair: Color
    hair_style: str
    hat: Color
    shirt: Color
    shirt_second: Color
    pattern: str
    stripe_period: float  # share of body height
    long_sleeves: bool
    legwear: str
    legs: Color
    shoes: Color
    bag: str
    bag_color: Color


def sample_appearance(rng: np.random.Generator) -> Appearance:
    def pick(options: tuple) -> object:
        return options[int(rng.integers(len(options)))]

    def jitter(color: Color, amount: float = 14.0) -> Color:
        shifted = np.clip(np.asarray(color) + rng.normal(0, amount, 3), 0, 255)
        return (float(shifted[0]), float(shifted[1]), float(shifted[2]))

    legwear = str(pick(LEGWEAR))
    legs = pick(DENIM) if legwear == "jeans" else pick(CLOTHES_COLORS)
    shirt = jitter(pick(CLOTHES_COLORS))  # type: ignore[arg-type]
    second = jitter(pick(CLOTHES_COLORS))  # type: ignore[arg-type]
    return Appearance(
        height_factor=float(np.clip(rng.normal(1.0, 0.055), 0.86, 1.12)),
        build=float(rng.uniform(0.88, 1.18)),
        skin=jitter(pick(SKIN_TONES), 8.0),  # type: ignore[arg-type]
        hair=jitter(pick(HAIR_COLORS), 6.0),  # type: ignore[arg-type]
        hair_style=str(pick(HAIR_STYLES)),
        hat=jitter(pick(CLOTHES_COLORS)),  # type: ignore[arg-type]
        shirt=shirt,
        shirt_second=second,
        pattern=str(pick(SHIRT_PATTERNS)),
        stripe_period=float(rng.uniform(0.025, 0.05)),
        long_sleeves=bool(rng.random() < 0.6),
        legwear=legwear,
        legs=jitter(legs),  # type: ignore[arg-type]
        shoes=jitter(pick(SHOE_COLORS), 6.0),  # type: ignore[arg-type]
        bag=str(pick(BAGS)),
        bag_color=jitter(pick(CLOTHES_COLORS)),  # type: ignore[arg-type]
    )
