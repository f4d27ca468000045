"""The per-shard task: read images, crop boxes, run the teacher, write one shard.

Runs inside a Dask worker process, or in the driver with ``--workers 0``. In a worker
the teacher is built once per process and reused by every task it runs there, and the
first task sets the process up for this work (:func:`tdt.process.configure_worker_process`:
one torch and one OpenCV thread, since the processes share out the cores; glibc keeps
freed memory): a worker process exists to run these tasks. In the driver the caller's
teacher is used and the process is left as it is. Image decoding and cropping run in a
background thread, overlapping the teacher's forward pass (cv2, PIL and torch release the GIL).

:class:`ShardEmbedder` and :func:`write_shard_file` are shared with the teacher-process layout
(:mod:`pipeline.teacher_process`), so every layout batches and writes a shard the same way.
Every task records where its time went (:mod:`pipeline.stages`).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import PipelineError
from pipeline.plan import PlannedShard, write_completion_record
from pipeline.records import ImageRecord
from pipeline.shards.io import write_shard
from pipeline.shards.manifest import ShardEntry, sha256_file
from pipeline.shards.table import ShardRecord, ShardTable
from pipeline.stages import ResourceUse, StageTimes
from tdt.images import ImageFileError, read_image
from tdt.malloc import started_with_single_arena
from tdt.process import configure_worker_process
from teacher import Teacher, TeacherConfig, build_teacher


class CorruptImageError(PipelineError):
    """An image file cannot be decoded, or its size disagrees with its annotation."""


@dataclass(frozen=True)
class ShardJob:
    shard: PlannedShard
    out_dir: str
    dataset_root: str
    format: str
    dtype: str
    teacher_config: TeacherConfig
    allow_random_teacher: bool
    metadata: dict


@dataclass(frozen=True)
class ShardResult:
    """A written shard, the wall seconds its task took and where they went (see :mod:`pipeline.stages`)."""

    entry: ShardEntry
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    resources: ResourceUse = ResourceUse()
    process: str = ""  # host:pid of the process that ran the task ("" where not recorded)
    finished_at: float = 0.0  # time.time() when the task ended, on that host's clock

    @property
    def teacher_seconds(self) -> float:
        return self.stages.get("teacher", 0.0)


PixelsFunction = Callable[[np.ndarray, np.ndarray, MutableMapping[str, float]], np.ndarray]


_TEACHERS: dict[tuple[TeacherConfig, bool], Teacher] = {}


def _worker_teacher(config: TeacherConfig, allow_random: bool) -> Teacher:
    """This worker process's teacher, built (and the process set up) by the first task that needs it."""
    key = (config, allow_random)
    if key not in _TEACHERS:
        configure_worker_process()
        _TEACHERS.clear()
        _TEACHERS[key] = build_teacher(config, allow_random_weights=allow_random)
    return _TEACHERS[key]


@dataclass(frozen=True)
class WorkerReadiness:
    """What a worker process reports once its teacher is built."""

    teacher_id: str
    single_arena: bool  # started with tdt.malloc.SINGLE_ARENA_ENVIRONMENT (else: page faults per batch)


def warm_up_worker(config: TeacherConfig, allow_random: bool, fmt: str, batch: int) -> WorkerReadiness:
    """Build this worker process's teacher, run it once and load its shard writer before any task arrives.

    The driver runs it on every worker, so a bad weights file fails once and the shard tasks'
    timings measure the work itself (see :func:`warm_up_teacher`).
    """
    teacher = _worker_teacher(config, allow_random)
    load_shard_writer(fmt)
    # Last: what the writer's imports keep would otherwise land in the heap the batch just freed.
    warm_up_teacher(teacher, batch)
    return WorkerReadiness(teacher.fingerprint_id(), started_with_single_arena())


def warm_up_teacher(teacher: Teacher, batch: int) -> None:
    """One forward pass over ``batch`` blank crops, the largest batch the run will embed.

    A process's first batches grow its heap to the size of the teacher's activations, page by
    page (a fault in the kernel for each; hundreds of MiB to a GiB for the larger teachers), and
    once grown the heap is reused by every later batch. Growing it here moves most of that
    one-time cost out of the first shards.
    """
    if batch > 0:
        height, width = teacher.config.input_size
        teacher.embed_pixels(np.zeros((batch, height, width, 3), np.uint8))


def largest_batch(jobs: Iterable[ShardJob]) -> int:
    """The largest teacher batch ``jobs`` will run: batches never span shards."""
    return max((min(j.teacher_config.batch_size, j.shard.num_embeddable) for j in jobs), default=0)


def load_shard_writer(fmt: str) -> None:
    """Encode an empty shard in memory: what the encoder loads on first use is loaded now.

    pyarrow imports pandas the first time it converts a Python list (about half a second), which
    would otherwise land on the first shard every worker process writes.
    """
    if fmt == "parquet":
        from pipeline.shards import parquet_format

        parquet_format.encode(ShardTable.from_records([], 1, "float16"), {})


def decode_image(root: Path, record: ImageRecord) -> np.ndarray:
    path = root / record.image
    # Boxes refer to the stored pixels: never let cv2 apply EXIF rotation.
    try:
        image = read_image(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except ImageFileError as error:
        raise CorruptImageError(str(error)) from error
    height, width = image.shape[:2]
    if (width, height) != (record.width, record.height):
        raise CorruptImageError(
            f"{path}: image is {width}x{height} but its annotation says {record.width}x{record.height}"
        )
    return image


def image_pixels(
    root: Path, record: ImageRecord, pixels: PixelsFunction, stages: StageTimes
) -> np.ndarray | None:
    """Decode ``record``'s image once and crop + resize its embeddable boxes (None: it has none)."""
    keep = ~record.ignore
    if not keep.any():
        return None
    with stages.timing("decode"):
        image = decode_image(root, record)
    return pixels(image, record.boxes[keep], stages.seconds)


def _prepared_pixels(
    job: ShardJob, teacher: Teacher, stages: StageTimes
) -> Iterator[tuple[int, np.ndarray | None]]:
    """Yield (image index, its boxes' pixels), prepared one image ahead in a background thread."""
    root = Path(job.dataset_root)
    records = job.shard.records

    def prepare(index: int) -> tuple[int, np.ndarray | None]:
        return index, image_pixels(root, records[index], teacher.pixels, stages)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        pending = [pool.submit(prepare, i) for i in range(min(2, len(records)))]
        for next_index in range(2, len(records) + 2):
            yield pending.pop(0).result()
            if next_index < len(records):
                pending.append(pool.submit(prepare, next_index))


class ShardEmbedder:
    """Embeds one shard's boxes in exact teacher batches, in box order (the last may be short).

    Every layout (in process, Dask task, teacher process fed by pre-processing workers) embeds
    through this class, so the same shard gets the same batches and the same bytes.
    """

    def __init__(self, records: tuple[ImageRecord, ...], teacher: Teacher, stages: StageTimes) -> None:
        self._records = records
        self._teacher = teacher
        self._stages = stages
        self.embeddings = [np.full((r.num_boxes, teacher.dim), np.nan, np.float32) for r in records]
        self.norms = [np.full(r.num_boxes, np.nan, np.float32) for r in records]
        self._pending: list[np.ndarray] = []
        self._targets: list[tuple[int, int]] = []  # (image index, box row) of each pending crop

    def add(self, image_index: int, pixels: np.ndarray | None) -> None:
        """Queue the pixels of image ``image_index``'s embeddable boxes; embed every full batch."""
        if pixels is None:
            return
        rows = np.flatnonzero(~self._records[image_index].ignore)
        self._pending.append(pixels)
        self._targets.extend((image_index, int(row)) for row in rows)
        while len(self._targets) >= self._teacher.config.batch_size:
            self._embed(self._teacher.config.batch_size)

    def finish(self, dtype: str) -> ShardTable:
        """Embed what is left and build the shard's table."""
        if self._targets:
            self._embed(len(self._targets))
        with self._stages.timing("serialise"):
            return _shard_table(self._records, self.embeddings, self.norms, self._teacher.dim, dtype)

    def _embed(self, count: int) -> None:
        with self._stages.timing("batching"):
            pending = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
            batch, rest = pending[:count], pending[count:]
        with self._stages.timing("normalise"):
            tensor = self._teacher.normalise(batch)
        with self._stages.timing("teacher"):
            emb, norm = self._teacher.embed_tensor(tensor)
        targets, self._targets = self._targets[:count], self._targets[count:]
        self._pending = [rest] if len(rest) else []
        finite = np.isfinite(emb).all(1) & np.isfinite(norm)
        if not finite.all():
            bad = sorted(
                {self._records[i].image for (i, _), ok in zip(targets, finite, strict=True) if not ok}
            )
            raise PipelineError(f"teacher produced non-finite embeddings for boxes of {', '.join(bad[:3])}")
        for k, (image_index, row) in enumerate(targets):
            self.embeddings[image_index][row] = emb[k]
            self.norms[image_index][row] = norm[k]


def embed_shard(job: ShardJob, teacher: Teacher, stages: StageTimes | None = None) -> ShardTable:
    """Decode, crop and embed every embeddable box of the shard (decoding overlaps the teacher)."""
    stages = StageTimes() if stages is None else stages
    # The decode thread has its own stage clock: the two threads never add to one dict.
    preparation = StageTimes()
    embedder = ShardEmbedder(job.shard.records, teacher, stages)
    for image_index, pixels in _prepared_pixels(job, teacher, preparation):
        embedder.add(image_index, pixels)
    stages.update(preparation.seconds)
    return embedder.finish(job.dtype)


def _shard_table(
    records: tuple[ImageRecord, ...],
    embeddings: list[np.ndarray],
    norms: list[np.ndarray],
    dim: int,
    dtype: str,
) -> ShardTable:
    rows = [
        ShardRecord(
            image=r.image,
            width=r.width,
            height=r.height,
            boxes=r.boxes,
            identities=r.identities,
            ignore=r.ignore,
            embeddings=embeddings[i],
            teacher_norms=norms[i],
            sequence=r.sequence,
            frame=r.frame,
        )
        for i, r in enumerate(records)
    ]
    return ShardTable.from_records(rows, dim, dtype)


def run_shard_job(job: ShardJob, teacher: Teacher | None = None) -> ShardResult:
    """Embed and write one shard. ``teacher`` None: a Dask worker's own (see the module docstring)."""
    started, resources = time.perf_counter(), ResourceUse.now()
    if teacher is None:
        teacher = _worker_teacher(job.teacher_config, job.allow_random_teacher)
    stages = StageTimes()
    table = embed_shard(job, teacher, stages)
    entry = write_shard_file(job, table, stages)
    return ShardResult(
        entry=entry,
        seconds=time.perf_counter() - started,
        stages=stages.seconds,
        resources=ResourceUse.now().since(resources),
        process=f"{socket.gethostname()}:{os.getpid()}",
        finished_at=time.time(),
    )


def write_shard_file(job: ShardJob, table: ShardTable, stages: StageTimes) -> ShardEntry:
    """Write the shard, checksum it and record it as complete."""
    out_dir = Path(job.out_dir)
    path = out_dir / job.shard.file
    with stages.timing("write"):
        write_shard(path, table, {**job.metadata, "shard_index": job.shard.index}, job.format)
    with stages.timing("checksum"):
        sha256 = sha256_file(path)
    entry = ShardEntry(
        file=job.shard.file,
        index=job.shard.index,
        rows=table.num_rows,
        boxes=table.num_boxes,
        embeddings=table.num_embeddings,
        bytes=path.stat().st_size,
        sha256=sha256,
        plan_key=job.shard.plan_key,
    )
    with stages.timing("write"):
        write_completion_record(out_dir, entry)
    return entry
