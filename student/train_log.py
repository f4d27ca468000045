"""What a training run reports while it runs: ``train_log.csv``, TensorBoard scalars, the progress bar.

Each logged row is the mean over the steps since the previous row. Logged values
are the writing process's own (under torchrun, rank 0's; not averaged across
processes).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping
from pathlib import Path

TRAIN_LOG_NAME = "train_log.csv"
TENSORBOARD_DIR_NAME = "tensorboard"
LOG_COLUMNS = (
    "step",
    "epoch",
    "learning_rate",
    "loss",
    "classification",
    "box_regression",
    "embedding_l2",
    "identity_ce",
    "offset_regression",
    "box_giou",
    "grad_norm",
    "positive_anchors",
    "positives_per_object",
    "identity_changed_objects",
    "seconds_per_step",
    "images_per_second",
)
_POSTFIX_NAMES = {
    "loss": "loss",
    "classification": "cls",
    "box_regression": "box",
    "embedding_l2": "l2",
    "identity_ce": "ce",
    "offset_regression": "off",
    "box_giou": "giou",
    "learning_rate": "lr",
}


class TrainingLog:
    """CSV (``train_log.csv``) and, optionally, TensorBoard scalars in the output directory.

    A resumed run first drops rows past its starting step (logged after the last checkpoint).
    """

    def __init__(self, out_dir: Path, start_step: int, tensorboard: bool) -> None:
        self.path = out_dir / TRAIN_LOG_NAME
        kept_rows: list[dict[str, str]] = []
        if start_step > 0 and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as stream:
                kept_rows = [row for row in csv.DictReader(stream) if int(row["step"]) <= start_step]
        self._stream = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._writer = csv.DictWriter(self._stream, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        self._writer.writeheader()
        self._writer.writerows(kept_rows)
        self._stream.flush()
        self._tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(out_dir / TENSORBOARD_DIR_NAME), purge_step=start_step + 1)

    def write(self, step: int, values: Mapping[str, float]) -> None:
        self._writer.writerow({"step": step, **{key: f"{value:.6g}" for key, value in values.items()}})
        self._stream.flush()
        if self._tensorboard is not None:
            for key, value in values.items():
                if key != "epoch":
                    self._tensorboard.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        self._stream.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


class IntervalMeans:
    """Means of per-step values over a logging interval, with its wall-clock speed.

    ``images_per_step`` is the global batch and ``epoch_images`` the number of
    selected training images (for the fractional epoch column).
    """

    def __init__(self, images_per_step: int, epoch_images: int) -> None:
        self.images_per_step = images_per_step
        self.epoch_images = epoch_images
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}  # per key: a term may be absent from some steps
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
        self.steps += 1

    def close_interval(self, step: int) -> dict[str, float]:
        """The interval's means plus epoch and speed; starts the next interval."""
        seconds = (time.perf_counter() - self.started) / max(1, self.steps)
        means = {key: total / self.counts[key] for key, total in self.sums.items()}
        means.update(
            epoch=(step * self.images_per_step) / self.epoch_images,
            seconds_per_step=seconds,
            images_per_second=self.images_per_step / seconds,
        )
        self.sums, self.counts, self.steps, self.started = {}, {}, 0, time.perf_counter()
        return means


def short_postfix(means: Mapping[str, float]) -> dict[str, str]:
    """The progress bar's compact view of a logged row."""
    return {short: f"{means[key]:.3g}" for key, short in _POSTFIX_NAMES.items() if key in means}


__all__ = [
    "LOG_COLUMNS",
    "TENSORBOARD_DIR_NAME",
    "TRAIN_LOG_NAME",
    "IntervalMeans",
    "TrainingLog",
    "short_postfix",
]
