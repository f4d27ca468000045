"""The per-shard task: read images, crop boxes, run the teacher, write one shard.

Runs inside a Dask worker process, or in the driver with ``--workers 0``. In a worker
the teacher is built once per process and reused by every task it runs there, and the
first task sets the process up for this work (:func:`tdt.process.configure_worker_process`:
one torch and one OpenCV thread, since the processes share out the cores; glibc keeps
freed memory): a worker process exists to run these tasks. In the driver the caller's
teacher is used and the process is left as it is. Image decoding and cropping run in a
background thread, overlapping the teacher's forward pass (cv2 and torch both release the GIL).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import PipelineError
from pipeline.plan import PlannedShard, write_completion_record
from pipeline.records import ImageRecord
from pipeline.shards.io import write_shard
from pipeline.shards.manifest import ShardEntry, sha256_file
from pipeline.shards.table import ShardRecord, ShardTable
from tdt.images import ImageFileError, read_image
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
    entry: ShardEntry
    seconds: float
    teacher_seconds: float


_TEACHERS: dict[tuple[TeacherConfig, bool], Teacher] = {}


def _worker_teacher(config: TeacherConfig, allow_random: bool) -> Teacher:
    """This worker process's teacher, built (and the process set up) by the first task that needs it."""
    key = (config, allow_random)
    if key not in _TEACHERS:
        configure_worker_process()
        _TEACHERS.clear()
        _TEACHERS[key] = build_teacher(config, allow_random_weights=allow_random)
    return _TEACHERS[key]


def warm_up_worker(config: TeacherConfig, allow_random: bool) -> str:
    """Build this worker process's teacher before any task arrives (run on every worker by the driver)."""
    return _worker_teacher(config, allow_random).fingerprint_id()


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


def _prepared_crops(job: ShardJob, teacher: Teacher) -> Iterator[tuple[ImageRecord, object]]:
    """Yield (record, crops tensor of its embeddable boxes), decoded one image ahead."""
    root = Path(job.dataset_root)

    def prepare(record: ImageRecord):
        keep = ~record.ignore
        if not keep.any():
            return record, None
        image = decode_image(root, record)
        return record, teacher.preprocess_crops(image, record.boxes[keep])

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        pending = [pool.submit(prepare, r) for r in job.shard.records[:2]]
        for next_index in range(2, len(job.shard.records) + 2):
            yield pending.pop(0).result()
            if next_index < len(job.shard.records):
                pending.append(pool.submit(prepare, job.shard.records[next_index]))


def embed_shard(job: ShardJob, teacher: Teacher) -> tuple[ShardTable, float]:
    """Embed every embeddable box of the shard in exact teacher batches (the last may be short)."""
    import torch

    dim = teacher.dim
    batch_size = teacher.config.batch_size
    records = job.shard.records
    embeddings = [np.full((r.num_boxes, dim), np.nan, np.float32) for r in records]
    norms = [np.full(r.num_boxes, np.nan, np.float32) for r in records]
    pending_crops: list = []
    pending_targets: list[tuple[int, int]] = []  # (image index, box row) of each pending crop
    teacher_seconds = 0.0

    def embed(count: int) -> None:
        nonlocal pending_crops, pending_targets, teacher_seconds
        batch = torch.cat(pending_crops)
        started = time.perf_counter()
        emb, norm = teacher.embed_tensor(batch[:count])
        teacher_seconds += time.perf_counter() - started
        if not (np.isfinite(emb).all() and np.isfinite(norm).all()):
            bad = sorted(
                {
                    records[i].image
                    for (i, _), ok in zip(pending_targets, np.isfinite(emb).all(1), strict=True)
                    if not ok
                }
            )
            raise PipelineError(f"teacher produced non-finite embeddings for boxes of {', '.join(bad[:3])}")
        for k, (image_index, row) in enumerate(pending_targets[:count]):
            embeddings[image_index][row] = emb[k]
            norms[image_index][row] = norm[k]
        rest = batch[count:]
        pending_crops = [rest] if len(rest) else []
        pending_targets = pending_targets[count:]

    for image_index, (record, crops) in enumerate(_prepared_crops(job, teacher)):
        if crops is None:
            continue
        pending_crops.append(crops)
        pending_targets.extend((image_index, int(row)) for row in np.flatnonzero(~record.ignore))
        while len(pending_targets) >= batch_size:
            embed(batch_size)
    if pending_targets:
        embed(len(pending_targets))

    return _shard_table(records, embeddings, norms, dim, job.dtype), teacher_seconds


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
    started = time.perf_counter()
    if teacher is None:
        teacher = _worker_teacher(job.teacher_config, job.allow_random_teacher)
    table, teacher_seconds = embed_shard(job, teacher)
    out_dir = Path(job.out_dir)
    path = out_dir / job.shard.file
    write_shard(path, table, {**job.metadata, "shard_index": job.shard.index}, job.format)
    entry = ShardEntry(
        file=job.shard.file,
        index=job.shard.index,
        rows=table.num_rows,
        boxes=table.num_boxes,
        embeddings=table.num_embeddings,
        bytes=path.stat().st_size,
        sha256=sha256_file(path),
        plan_key=job.shard.plan_key,
    )
    write_completion_record(out_dir, entry)
    return ShardResult(entry=entry, seconds=time.perf_counter() - started, teacher_seconds=teacher_seconds)
