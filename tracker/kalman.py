"""Constant-velocity Kalman filter on xyah boxes, batched over tracks.

State per track: (cx, cy, a, h, vcx, vcy, va, vh). The noise model is the one of
DeepSORT / JDE / FairMOT: position and velocity standard deviations proportional
to the box height (weights 1/20 and 1/160), aspect-ratio noise fixed. Every
function takes ``K`` tracks at once (``mean (K, 8)``, ``covariance (K, 8, 8)``)
and returns new arrays; inputs are never modified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

STATE_DIM = 8
MEASUREMENT_DIM = 4

# 0.95 quantile of the chi-square distribution with 4 degrees of freedom (x, y, a, h).
CHI2_95_4DOF = 9.4877

_MOTION_MATRIX = np.eye(STATE_DIM)
_MOTION_MATRIX[:MEASUREMENT_DIM, MEASUREMENT_DIM:] = np.eye(MEASUREMENT_DIM)
_DIAGONAL_8 = np.arange(STATE_DIM)
_DIAGONAL_4 = np.arange(MEASUREMENT_DIM)


@dataclass(frozen=True)
class KalmanFilterXYAH:
    std_weight_position: float = 1.0 / 20
    std_weight_velocity: float = 1.0 / 160

    def initiate(self, measurements: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """New tracks from ``(K, 4)`` xyah measurements, zero velocity."""
        xyah = _as_measurements(measurements)
        count = len(xyah)
        mean = np.zeros((count, STATE_DIM))
        mean[:, :MEASUREMENT_DIM] = xyah
        height = xyah[:, 3]
        position = self.std_weight_position * height
        velocity = self.std_weight_velocity * height
        std = np.stack(
            [
                2 * position,
                2 * position,
                np.full(count, 1e-2),
                2 * position,
                10 * velocity,
                10 * velocity,
                np.full(count, 1e-5),
                10 * velocity,
            ],
            axis=1,
        )
        covariance = np.zeros((count, STATE_DIM, STATE_DIM))
        covariance[:, _DIAGONAL_8, _DIAGONAL_8] = std**2
        return mean, covariance

    def predict(self, mean: FloatArray, covariance: FloatArray) -> tuple[FloatArray, FloatArray]:
        """One time step ahead (dt = 1 frame); process noise scaled by the current height."""
        mean, covariance = _as_state(mean, covariance)
        height = mean[:, 3]
        position = self.std_weight_position * height
        velocity = self.std_weight_velocity * height
        count = len(mean)
        process_variance = (
            np.stack(
                [
                    position,
                    position,
                    np.full(count, 1e-2),
                    position,
                    velocity,
                    velocity,
                    np.full(count, 1e-5),
                    velocity,
                ],
                axis=1,
            )
            ** 2
        )
        predicted_mean = mean @ _MOTION_MATRIX.T
        predicted_covariance = _MOTION_MATRIX @ covariance @ _MOTION_MATRIX.T
        predicted_covariance[:, _DIAGONAL_8, _DIAGONAL_8] += process_variance
        return predicted_mean, predicted_covariance

    def project(self, mean: FloatArray, covariance: FloatArray) -> tuple[FloatArray, FloatArray]:
        """State distribution mapped to measurement space: ``(K, 4)`` and ``(K, 4, 4)``."""
        mean, covariance = _as_state(mean, covariance)
        position = self.std_weight_position * mean[:, 3]
        measurement_variance = np.stack([position, position, np.full(len(mean), 1e-1), position], axis=1) ** 2
        projected_covariance = covariance[:, :MEASUREMENT_DIM, :MEASUREMENT_DIM].copy()
        projected_covariance[:, _DIAGONAL_4, _DIAGONAL_4] += measurement_variance
        return mean[:, :MEASUREMENT_DIM].copy(), projected_covariance

    def update(
        self, mean: FloatArray, covariance: FloatArray, measurements: npt.ArrayLike
    ) -> tuple[FloatArray, FloatArray]:
        """Correct track ``k`` with measurement ``k`` (row-wise pairs)."""
        mean, covariance = _as_state(mean, covariance)
        xyah = _as_measurements(measurements)
        if len(xyah) != len(mean):
            raise ValueError(f"{len(xyah)} measurements for {len(mean)} tracks")
        projected_mean, projected_covariance = self.project(mean, covariance)
        # Gain K = P H^T S^-1, computed as solve(S, H P^T) since S is symmetric.
        cross_covariance = covariance[:, :, :MEASUREMENT_DIM]
        gain = np.linalg.solve(projected_covariance, cross_covariance.transpose(0, 2, 1))
        gain = gain.transpose(0, 2, 1)
        innovation = xyah - projected_mean
        new_mean = mean + (gain @ innovation[:, :, None])[:, :, 0]
        new_covariance = covariance - gain @ projected_covariance @ gain.transpose(0, 2, 1)
        return new_mean, new_covariance

    def gating_distance(
        self, mean: FloatArray, covariance: FloatArray, measurements: npt.ArrayLike
    ) -> FloatArray:
        """Squared Mahalanobis distance of every measurement to every track: ``(K, M)``."""
        mean, covariance = _as_state(mean, covariance)
        xyah = _as_measurements(measurements)
        if len(mean) == 0 or len(xyah) == 0:
            return np.zeros((len(mean), len(xyah)))
        projected_mean, projected_covariance = self.project(mean, covariance)
        # d^T S^-1 d expanded as z^T A z - 2 (A mu)^T z + mu^T A mu with A = S^-1, so all
        # K x M pairs come from two matrix products instead of K small triangular solves.
        # Centring both sides on the measurements' mean keeps the expansion well conditioned.
        centre = xyah.mean(axis=0)
        z = xyah - centre
        mu = projected_mean - centre
        inverse_cholesky = np.linalg.inv(np.linalg.cholesky(projected_covariance))
        precision = inverse_cholesky.transpose(0, 2, 1) @ inverse_cholesky
        outer_z = (z[:, :, None] * z[:, None, :]).reshape(len(z), -1)
        precision_mu = (precision @ mu[:, :, None])[:, :, 0]
        squared = precision.reshape(len(mu), -1) @ outer_z.T
        squared -= 2.0 * (precision_mu @ z.T)
        squared += np.einsum("ki,ki->k", mu, precision_mu)[:, None]
        return np.maximum(squared, 0.0)


def _as_measurements(measurements: npt.ArrayLike) -> FloatArray:
    xyah = np.asarray(measurements, dtype=np.float64)
    if xyah.ndim != 2 or xyah.shape[1] != MEASUREMENT_DIM:
        raise ValueError(f"measurements must have shape (K, 4), got {xyah.shape}")
    return xyah


def _as_state(mean: FloatArray, covariance: FloatArray) -> tuple[FloatArray, FloatArray]:
    mean = np.asarray(mean, dtype=np.float64)
    covariance = np.asarray(covariance, dtype=np.float64)
    if mean.ndim != 2 or mean.shape[1] != STATE_DIM:
        raise ValueError(f"mean must have shape (K, 8), got {mean.shape}")
    if covariance.shape != (len(mean), STATE_DIM, STATE_DIM):
        raise ValueError(f"covariance must have shape ({len(mean)}, 8, 8), got {covariance.shape}")
    return mean, covariance
