"""Render the world's pieces in the order they are written, in this process or in worker processes.

Every still image and every sequence draws from a seed of its own, so the pieces can be rendered
in any process and in any order; the caller still gets them back in its own order, which keeps
the files byte-identical to an in-process run. Still images travel in batches (one task and one
pickled reply per batch, not per image); a sequence is one task, because each of its frames
continues the one before.

Workers are spawned (not forked: the calling process may already run torch or OpenCV threads)
and set up with one OpenCV thread each, since the processes, not threads, share out the cores.
They ignore Ctrl-C: the parent takes it, raises a stop flag that the tasks check after every
image or frame, and the pool winds down within about one image instead of finishing its queue.
A worker whose parent is gone, or stopped a while ago, exits on its own.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from types import TracebackType
from typing import TypeVar

import numpy as np

from pipeline.synth import detection, sequences
from pipeline.synth.config import WorldConfig
from tdt.process import configure_worker_process

IMAGES_PER_TASK = 8  # about a second of rendering per task: little pickling, a short tail at the end
STOPPED_WORKER_GRACE_S = 5.0  # after a stop, time for the orderly shutdown before a worker exits anyway


@dataclass(frozen=True)
class ImageBatch:
    image_ids: tuple[str, ...]
    seeds: tuple[np.random.SeedSequence, ...]

    def describe(self) -> str:
        return f"images {self.image_ids[0]}..{self.image_ids[-1]}"


@dataclass(frozen=True)
class SequenceTask:
    index: int
    seed: np.random.SeedSequence

    def describe(self) -> str:
        return f"sequence {sequences.sequence_name(self.index)}"


Task = TypeVar("Task", ImageBatch, SequenceTask)
Result = TypeVar("Result")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Renderer:
    """Renders in this process (``workers=1``) or on a pool of ``workers`` processes; a context manager.

    Call :meth:`images` and :meth:`frames_by_sequence` before consuming either: each submits its first
    tasks at once, so the long sequence tasks start early instead of ending the run alone.
    """

    def __init__(self, config: WorldConfig, workers: int):
        """``workers`` >= 1; the pool never gets more processes than the world has tasks."""
        self._config = config
        images = config.detection.train_images + config.detection.val_images
        tasks = -(-images // IMAGES_PER_TASK) + config.tracking.sequences
        self._workers = min(workers, tasks)
        self._pool: ProcessPoolExecutor | None = None
        if self._workers > 1:
            context = multiprocessing.get_context("spawn")
            self._stop = context.Event()
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=context,
                initializer=_start_worker,
                initargs=(self._stop,),
            )

    def __enter__(self) -> Renderer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._pool is None:
            return
        if error is not None:
            self._stop.set()  # the tasks already handed to a worker cannot be cancelled
        self._pool.shutdown(wait=True, cancel_futures=True)

    def images(
        self, jobs: Sequence[tuple[str, np.random.SeedSequence]]
    ) -> Iterator[detection.DetectionImage]:
        """The still images of ``jobs`` (image id, seed), in that order."""
        config = self._config
        if self._pool is None:
            return (
                detection.render_detection_image(config.detection, image_id, seed, config.jpeg_quality)
                for image_id, seed in jobs
            )
        chunks = (jobs[start : start + IMAGES_PER_TASK] for start in range(0, len(jobs), IMAGES_PER_TASK))
        batches = (ImageBatch(tuple(i for i, _ in chunk), tuple(s for _, s in chunk)) for chunk in chunks)
        rendered = self._in_order(render_image_batch, batches, in_flight=2 * self._workers)
        return itertools.chain.from_iterable(rendered)

    def frames_by_sequence(
        self, seeds: Sequence[np.random.SeedSequence]
    ) -> Iterator[Iterable[sequences.SequenceFrame]]:
        """The frames of one sequence per seed, in order; sequence ``i`` is named by index ``i + 1``."""
        config = self._config
        if self._pool is None:
            return (sequences.render_sequence(config.tracking, seed, config.jpeg_quality) for seed in seeds)
        tasks = (SequenceTask(index, seed) for index, seed in enumerate(seeds, start=1))
        # one finished sequence waiting per worker at most: its frames are held in memory until written
        return self._in_order(render_sequence_task, tasks, in_flight=self._workers)

    def _in_order(
        self,
        render: Callable[[WorldConfig, Task], Result],
        tasks: Iterator[Task],
        in_flight: int,
    ) -> Iterator[Result]:
        """Submit the first ``in_flight`` tasks now, one more per result taken; results in task order."""
        assert self._pool is not None
        pending: deque[tuple[Task, Future[Result]]] = deque()

        def submit(count: int) -> None:
            for task in itertools.islice(tasks, count):
                pending.append((task, self._pool.submit(render, self._config, task)))

        def results() -> Iterator[Result]:
            while pending:
                task, future = pending.popleft()
                result = _result(task, future)
                submit(1)
                yield result

        submit(in_flight)
        return results()


def _result(task: ImageBatch | SequenceTask, future: Future[Result]) -> Result:
    try:
        return future.result()
    except BrokenProcessPool as error:
        raise RuntimeError(
            f"a synth worker process died while rendering {task.describe()} "
            f"(killed, or out of memory?): {error}"
        ) from error
    except Exception as error:
        raise RuntimeError(
            f"rendering {task.describe()} failed in a worker process: {type(error).__name__}: {error}"
        ) from error


class StoppedError(Exception):
    """A worker task abandoned because the parent stopped the run."""


_stop_flag: EventType | None = None  # set in each worker process by _start_worker


def _start_worker(stop: EventType) -> None:
    global _stop_flag
    configure_worker_process(torch_threads=None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stop_flag = stop
    parent = os.getppid()
    threading.Thread(target=_exit_when_abandoned, args=(parent, stop), name="watch", daemon=True).start()


def _exit_when_abandoned(parent: int, stop: EventType) -> None:
    # A parent killed outright (SIGTERM, SIGKILL) never shuts the pool down, and one interrupted
    # again while shutting it down may never send the message that ends a worker: either way
    # the worker would wait on its task queue forever.
    while os.getppid() == parent and not stop.wait(timeout=1.0):
        pass
    if os.getppid() == parent:
        time.sleep(STOPPED_WORKER_GRACE_S)
    os._exit(1)


def _raise_if_stopped() -> None:
    if _stop_flag is not None and _stop_flag.is_set():
        raise StoppedError("the synth run was stopped")


def render_image_batch(config: WorldConfig, batch: ImageBatch) -> list[detection.DetectionImage]:
    images = []
    for image_id, seed in zip(batch.image_ids, batch.seeds, strict=True):
        _raise_if_stopped()
        images.append(detection.render_detection_image(config.detection, image_id, seed, config.jpeg_quality))
    return images


def render_sequence_task(config: WorldConfig, task: SequenceTask) -> list[sequences.SequenceFrame]:
    frames = []
    for frame in sequences.render_sequence(config.tracking, task.seed, config.jpeg_quality):
        frames.append(frame)
        _raise_if_stopped()
    return frames
