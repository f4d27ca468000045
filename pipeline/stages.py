"""Where a distillation run spends its time: seconds per stage, CPU time and page faults per shard.

Every shard task fills a :class:`StageTimes` (stages run in two threads of a task overlap, so the
stage seconds of a task may add up to more than its wall time) and a :class:`ResourceUse` (the
process's CPU time and minor page faults while the task ran; a worker process runs one task at
a time). The runner adds them up over the run; :func:`per_box_table` turns the totals into the
milliseconds-per-box breakdown the CLI summary and the benchmark print.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

# In pipeline order. "crop" unpacks a box's pixels into the resize input (with BGR->RGB), "resize"
# is the antialiased resize to the teacher's input size, "normalise" the /255, mean and std.
STAGES = (
    "decode",
    "crop",
    "resize",
    "transfer",  # pre-processed crops from worker processes to the teacher process
    "wait",  # the teacher process idle, waiting for pre-processed crops
    "batching",
    "normalise",
    "teacher",
    "serialise",
    "write",
    "checksum",
    "dask",  # Dask worker slots between two tasks: scheduling, task and result transfer
    "tail",  # Dask worker slots after their worker's last task, while others finish theirs
)


@dataclass
class StageTimes:
    """Seconds per stage, accumulated; ``seconds`` is a plain dict so lower layers can add to it."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)

    def update(self, other: Mapping[str, float]) -> None:
        for stage, seconds in other.items():
            self.add(stage, seconds)


@dataclass(frozen=True)
class ResourceUse:
    """CPU seconds (user, system) and minor page faults of this process over an interval."""

    user_seconds: float = 0.0
    system_seconds: float = 0.0
    minor_faults: int = 0

    @staticmethod
    def now() -> ResourceUse:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return ResourceUse(usage.ru_utime, usage.ru_stime, usage.ru_minflt)

    def since(self, start: ResourceUse) -> ResourceUse:
        return ResourceUse(
            self.user_seconds - start.user_seconds,
            self.system_seconds - start.system_seconds,
            self.minor_faults - start.minor_faults,
        )

    def __add__(self, other: ResourceUse) -> ResourceUse:
        return ResourceUse(
            self.user_seconds + other.user_seconds,
            self.system_seconds + other.system_seconds,
            self.minor_faults + other.minor_faults,
        )


def total_stage_seconds(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    total = StageTimes()
    for part in parts:
        total.update(part)
    return dict(total.seconds)


def per_box_table(stage_seconds: Mapping[str, float], boxes: int) -> list[tuple[str, float, float]]:
    """``(stage, ms per box, share of all stage time)`` in pipeline order, unknown stages last."""
    if boxes <= 0:
        return []
    total = sum(stage_seconds.values()) or 1.0
    order = [s for s in STAGES if s in stage_seconds] + sorted(set(stage_seconds) - set(STAGES))
    return [(s, 1000.0 * stage_seconds[s] / boxes, stage_seconds[s] / total) for s in order]


def format_per_box(stage_seconds: Mapping[str, float], boxes: int) -> str:
    """One line: ``decode 0.52 ms (12%), crop ...`` per box."""
    return ", ".join(
        f"{stage} {ms:.2f} ms ({100 * share:.0f}%)"
        for stage, ms, share in per_box_table(stage_seconds, boxes)
    )
