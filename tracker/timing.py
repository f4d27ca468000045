"""Per-frame stage times and their summary (mean ms per stage, frames per second).

Stages: ``decode`` (reading and decoding the image), ``model`` (the detector;
for a one-stage student this includes its embeddings), ``teacher`` (re-ID
crops of a two-stage / oracle / public source) and ``association``.
FPS counts model + teacher + association only: image decoding is reported but
excluded, as FairMOT and TDT report their speeds.

The first frame of a run is left out of the summary when the run has more than
one frame: it pays one-off costs (lazy initialisation, first allocations) that
say nothing about steady-state speed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Self

WARMUP_FRAMES = 1
STAGES = ("decode", "model", "teacher", "association")


@dataclass(frozen=True)
class FrameTiming:
    """Seconds each stage took on one frame."""

    decode_seconds: float = 0.0
    model_seconds: float = 0.0
    teacher_seconds: float = 0.0
    association_seconds: float = 0.0

    def __post_init__(self) -> None:
        for stage in STAGES:
            value = getattr(self, f"{stage}_seconds")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{stage}_seconds must be a finite number >= 0, got {value!r}")

    @property
    def processing_seconds(self) -> float:
        """What FPS counts: everything but decoding."""
        return self.model_seconds + self.teacher_seconds + self.association_seconds


@dataclass(frozen=True)
class TimingSummary:
    """Stage totals over the timed frames; means and FPS are derived from them.

    Summaries of several sequences add up with :meth:`combine` (totals and
    frame counts are summed, so the combined FPS weights every frame equally).
    """

    frames: int
    decode_seconds: float
    model_seconds: float
    teacher_seconds: float
    association_seconds: float

    @classmethod
    def of(cls, timings: Sequence[FrameTiming], warmup_frames: int = WARMUP_FRAMES) -> Self:
        """Summary of a run's frames, its first ``warmup_frames`` left out if frames remain."""
        timed = timings[warmup_frames:] if len(timings) > warmup_frames else timings
        return cls(
            frames=len(timed),
            decode_seconds=sum(t.decode_seconds for t in timed),
            model_seconds=sum(t.model_seconds for t in timed),
            teacher_seconds=sum(t.teacher_seconds for t in timed),
            association_seconds=sum(t.association_seconds for t in timed),
        )

    @classmethod
    def combine(cls, summaries: Iterable[TimingSummary]) -> Self:
        parts = list(summaries)
        return cls(
            frames=sum(part.frames for part in parts),
            decode_seconds=sum(part.decode_seconds for part in parts),
            model_seconds=sum(part.model_seconds for part in parts),
            teacher_seconds=sum(part.teacher_seconds for part in parts),
            association_seconds=sum(part.association_seconds for part in parts),
        )

    @property
    def processing_seconds(self) -> float:
        return self.model_seconds + self.teacher_seconds + self.association_seconds

    def mean_ms(self, stage: str) -> float:
        """Mean milliseconds per frame of ``stage`` (one of :data:`STAGES`); NaN without frames."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        if self.frames == 0:
            return math.nan
        return 1000.0 * getattr(self, f"{stage}_seconds") / self.frames

    @property
    def fps(self) -> float:
        """Frames per second of model + teacher + association (NaN without frames or time)."""
        if self.frames == 0 or self.processing_seconds <= 0:
            return math.nan
        return self.frames / self.processing_seconds

    def to_dict(self) -> dict[str, float | int]:
        values: dict[str, float | int] = {"frames": self.frames, "fps": self.fps}
        for stage in STAGES:
            values[f"{stage}_ms"] = self.mean_ms(stage)
        return values

    def describe(self) -> str:
        """One line, e.g. ``12.3 FPS (model 70.1 ms, teacher 0.0 ms, association 1.2 ms; decode 5.0 ms)``."""
        return (
            f"{self.fps:.2f} FPS over {self.frames} frames (model {self.mean_ms('model'):.1f} ms, "
            f"teacher {self.mean_ms('teacher'):.1f} ms, association {self.mean_ms('association'):.1f} ms "
            f"per frame; decode {self.mean_ms('decode'):.1f} ms, not counted)"
        )
