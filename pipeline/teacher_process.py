"""One teacher process fed by pre-processing worker processes (``--preprocess-workers N``).

N worker processes decode, crop and resize whole shards into RGB uint8 crops (a quarter of the
bytes of the float input) and send them back; this process -- the teacher process -- normalises
them on the teacher's device, embeds them in the same per-shard batches as every other layout
(so the shards are byte-identical) and hands each table to a writer thread, so the teacher never
waits for a file to reach the disk. Up to ``2 N`` shards are being prepared at any time, so the
teacher does not wait on one worker's decode either, and memory stays bounded when the teacher
is the slower side.

Everything runs on this machine: the workers are spawned (not forked: this process already runs
torch threads) and set up with :func:`tdt.process.configure_worker_process`; they run their task
in their main thread and need no teacher. The teacher keeps the caller's device and thread count.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.stages import ResourceUse, StageTimes
from pipeline.worker import (
    ShardEmbedder,
    ShardJob,
    ShardResult,
    image_pixels,
    largest_batch,
    load_shard_writer,
    warm_up_teacher,
    write_shard_file,
)
from tdt.process import configure_worker_process
from teacher import Teacher, TeacherConfig
from teacher.preprocess import Preprocessor

SHARDS_IN_FLIGHT_PER_WORKER = 2


@dataclass(frozen=True)
class PreparedShard:
    """A shard's embeddable boxes, cropped and resized, in box order, from a worker process."""

    pixels: np.ndarray  # uint8 (M, H, W, 3) RGB
    stages: dict[str, float]
    resources: ResourceUse
    seconds: float
    finished_at: float  # time.time() when the worker returned it


def prepare_shard(job: ShardJob) -> PreparedShard:
    """Decode every image of the shard once and crop + resize its embeddable boxes (in a worker process)."""
    started, resources = time.perf_counter(), ResourceUse.now()
    preprocessor = _preprocessor(job.teacher_config)
    stages = StageTimes()
    root = Path(job.dataset_root)
    parts = [image_pixels(root, record, preprocessor.pixels, stages) for record in job.shard.records]
    with stages.timing("batching"):
        parts = [p for p in parts if p is not None]
        height, width = job.teacher_config.input_size
        pixels = np.concatenate(parts) if parts else np.empty((0, height, width, 3), np.uint8)
    return PreparedShard(
        pixels=pixels,
        stages=stages.seconds,
        resources=ResourceUse.now().since(resources),
        seconds=time.perf_counter() - started,
        finished_at=time.time(),
    )


def _preprocessor(config: TeacherConfig) -> Preprocessor:
    return Preprocessor(config.input_size, config.mean, config.std)


@dataclass(frozen=True)
class TeacherProcessRun:
    results: list[ShardResult]
    setup_seconds: float  # starting the worker processes (imports included), one warm-up batch
    compute_seconds: float  # from the first shard submitted to the last one written
    teacher_process: ResourceUse  # this process's CPU time and page faults over the compute


def run_with_preprocess_workers(
    jobs: list[ShardJob],
    teacher: Teacher,
    workers: int,
    progress: Callable[[ShardResult], None] | None = None,
) -> TeacherProcessRun:
    """Prepare ``jobs`` in ``workers`` processes, embed them here with ``teacher``, write them in a thread."""
    started = time.perf_counter()
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=configure_worker_process,
    )
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
    try:
        # Start every worker (spawned processes import torch, cv2 and PIL) before timing the work.
        started_workers: set[int] = set()
        while len(started_workers) < workers:
            started_workers.update(f.result() for f in [pool.submit(_process_id) for _ in range(workers)])
        if jobs:
            writer.submit(load_shard_writer, jobs[0].format).result()
            warm_up_teacher(teacher, largest_batch(jobs))
        setup_seconds = time.perf_counter() - started
        started, used_before = time.perf_counter(), ResourceUse.now()
        loop = _TeacherLoop(pool, writer, teacher, workers * SHARDS_IN_FLIGHT_PER_WORKER, progress)
        results = loop.run(jobs)
        return TeacherProcessRun(
            results=results,
            setup_seconds=setup_seconds,
            compute_seconds=time.perf_counter() - started,
            teacher_process=ResourceUse.now().since(used_before),
        )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        # Shards already embedded are written even when the run stops early: a rerun keeps them.
        writer.shutdown(wait=True)


def _process_id() -> int:
    time.sleep(0.05)  # long enough for the other workers to take a task of their own
    return os.getpid()


class _TeacherLoop:
    """Keeps the workers busy, embeds each prepared shard as it arrives and collects the written ones."""

    def __init__(self, pool, writer, teacher: Teacher, window: int, progress) -> None:
        self._pool = pool
        self._writer = writer
        self._teacher = teacher
        self._window = window
        self._progress = progress
        self._preparing: dict[Future, ShardJob] = {}
        self._arrived: dict[Future, float] = {}
        self._writing: list[Future] = []
        self._results: list[ShardResult] = []

    def run(self, jobs: list[ShardJob]) -> list[ShardResult]:
        waiting = deque(jobs)
        self._submit(waiting)
        while self._preparing:
            idle_from = time.perf_counter()
            done, _ = wait(self._preparing, return_when=FIRST_COMPLETED)
            idle = time.perf_counter() - idle_from
            for future in sorted(done, key=lambda f: self._preparing[f].shard.index):
                job = self._preparing.pop(future)
                prepared = future.result()
                arrived_at = self._arrived.pop(future, time.time())
                self._submit(waiting)
                self._embed_and_queue_write(job, prepared, idle, arrived_at - prepared.finished_at)
                idle = 0.0
            self._collect_written(block=False)
        self._collect_written(block=True)
        return self._results

    def _submit(self, waiting: deque) -> None:
        while waiting and len(self._preparing) < self._window:
            job = waiting.popleft()
            future = self._pool.submit(prepare_shard, job)
            future.add_done_callback(self._note_arrival)
            self._preparing[future] = job

    def _note_arrival(self, future: Future) -> None:
        self._arrived[future] = time.time()

    def _embed_and_queue_write(
        self, job: ShardJob, prepared: PreparedShard, idle: float, transfer: float
    ) -> None:
        started = time.perf_counter()
        stages = StageTimes()
        stages.update(prepared.stages)
        stages.add("wait", idle)
        stages.add("transfer", max(0.0, transfer))
        embedder = ShardEmbedder(job.shard.records, self._teacher, stages)
        offset = 0
        for image_index, record in enumerate(job.shard.records):
            count = record.num_embeddable
            embedder.add(image_index, prepared.pixels[offset : offset + count] if count else None)
            offset += count
        table = embedder.finish(job.dtype)
        embedding_seconds = time.perf_counter() - started

        def write() -> ShardResult:
            write_started = time.perf_counter()
            entry = write_shard_file(job, table, stages)
            return ShardResult(
                entry=entry,
                seconds=prepared.seconds + embedding_seconds + time.perf_counter() - write_started,
                stages=stages.seconds,
                resources=prepared.resources,
            )

        self._writing.append(self._writer.submit(write))

    def _collect_written(self, block: bool) -> None:
        if block:
            wait(self._writing)
        still_writing = []
        for future in self._writing:
            if future.done():
                result = future.result()
                self._results.append(result)
                if self._progress:
                    self._progress(result)
            else:
                still_writing.append(future)
        self._writing = still_writing
