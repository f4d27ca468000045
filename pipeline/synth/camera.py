"""A level pinhole camera above a flat ground plane: where things stand and how big they look.

World coordinates: X to the right, Z away from the camera, in metres on the ground.
Image coordinates are in the pixels of whatever canvas the camera was built for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERSON_HEIGHT_M = 1.75


@dataclass(frozen=True)
class GroundCamera:
    focal: float  # pixels
    height_m: float  # camera above the ground
    horizon_y: float  # image row of the horizon (may lie above the image)
    center_x: float
    image_width: int
    image_height: int

    def foot_y(self, z: float | np.ndarray) -> float | np.ndarray:
        return self.horizon_y + self.focal * self.height_m / z

    def image_x(self, x: float, z: float) -> float:
        return self.center_x + self.focal * x / z

    def ground_x(self, image_x: float, z: float) -> float:
        return (image_x - self.center_x) * z / self.focal

    def pixels(self, metres: float, z: float) -> float:
        """Size in pixels of an upright length at distance z."""
        return self.focal * metres / z

    def depth_of_foot_row(self, y: float) -> float:
        return self.focal * self.height_m / max(y - self.horizon_y, 1e-3)

    def depth_for_person_height(self, pixels: float) -> float:
        return self.focal * PERSON_HEIGHT_M / pixels

    def scaled(self, factor: float) -> GroundCamera:
        """The same camera for a canvas ``factor`` times larger (supersampling)."""
        return GroundCamera(
            focal=self.focal * factor,
            height_m=self.height_m,
            horizon_y=self.horizon_y * factor,
            center_x=self.center_x * factor,
            image_width=int(round(self.image_width * factor)),
            image_height=int(round(self.image_height * factor)),
        )


def sample_camera(
    rng: np.random.Generator,
    width: int,
    height: int,
    *,
    bottom_person_fraction: tuple[float, float],
    camera_height_m: tuple[float, float],
    min_horizon_fraction: float,
) -> GroundCamera:
    """A camera whose nearest fully-framed person (feet on the bottom row) is the given share of the height."""
    bottom_person = rng.uniform(*bottom_person_fraction) * height
    # horizon_y = H - bottom_person * cam_h / person_h; keep the horizon inside the image for a skyline
    highest_camera = PERSON_HEIGHT_M * (height * (1 - min_horizon_fraction)) / bottom_person
    cam_h = min(rng.uniform(*camera_height_m), highest_camera)
    horizon = height - bottom_person * cam_h / PERSON_HEIGHT_M
    focal = width * rng.uniform(0.85, 1.35)
    return GroundCamera(
        focal=focal,
        height_m=cam_h,
        horizon_y=horizon,
        center_x=width / 2 + rng.uniform(-0.1, 0.1) * width,
        image_width=width,
        image_height=height,
    )
