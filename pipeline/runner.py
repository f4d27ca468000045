"""Drive a distillation run: plan shards, skip complete ones, run the rest on Dask, write the manifest."""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import EmptyDatasetError, PipelineError
from pipeline.plan import (
    PARTIAL_DIR,
    PlannedShard,
    RunIdentity,
    find_complete,
    plan_shards,
    prepare_output,
    remove_stale_shards,
)
from pipeline.records import ImageRecord
from pipeline.shards.manifest import DatasetInfo, ShardEntry, ShardManifest, write_manifest
from pipeline.stages import ResourceUse, total_stage_seconds
from pipeline.worker import (
    ShardJob,
    ShardResult,
    WorkerReadiness,
    largest_batch,
    run_shard_job,
    warm_up_worker,
)
from tdt.malloc import SINGLE_ARENA_ENVIRONMENT
from teacher import Teacher


@dataclass(frozen=True)
class ClusterConfig:
    """Where tasks run.

    ``preprocess_workers`` > 0: that many local processes decode, crop and resize, and the
    calling process runs the teacher (:mod:`pipeline.teacher_process`; the layout for a GPU).
    Otherwise Dask: ``scheduler`` None starts a LocalCluster of ``workers`` processes, each
    running whole shards with a teacher of its own; ``workers`` 0 runs them in this process.
    """

    workers: int = 2
    preprocess_workers: int = 0
    scheduler: str | None = None
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("workers", "preprocess_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PipelineError(f"--{name.replace('_', '-')} must be a whole number >= 0, got {value!r}")
        if self.preprocess_workers and self.scheduler is not None:
            raise PipelineError(
                "--preprocess-workers runs pre-processing processes on this machine next to its teacher; "
                "it cannot be combined with --scheduler"
            )

    @property
    def layout(self) -> str:
        if self.preprocess_workers:
            return f"teacher process + {self.preprocess_workers} pre-processing processes"
        if self.scheduler is not None:
            return f"Dask cluster at {self.scheduler}"
        return f"Dask LocalCluster, {self.workers} workers" if self.workers else "in process"


@dataclass(frozen=True)
class DistillRequest:
    dataset_name: str
    split: str
    dataset_root: Path
    dataset_fingerprint: str
    records: tuple[ImageRecord, ...]
    source_bytes: int
    reader_stats: dict
    out_dir: Path
    format: str = "parquet"
    dtype: str = "float16"
    shard_size: int = 64
    overwrite: bool = False
    allow_random_teacher: bool = False


@dataclass
class DistillReport:
    out_dir: Path
    manifest: ShardManifest
    shards_written: int
    shards_reused: int
    seconds: float
    boxes_embedded_now: int
    setup_seconds: float = 0.0
    teacher_seconds: float = 0.0
    worker_seconds: float = 0.0
    layout: str = ""  # ClusterConfig.layout
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, all shards (pipeline.stages)
    resources: ResourceUse = ResourceUse()  # CPU time and page faults of the processes that ran the shards
    # The same for every process of the run over the whole compute, between tasks too (Dask: this
    # process, with a LocalCluster's scheduler and nannies, and every worker, event loop included).
    all_processes: ResourceUse = ResourceUse()
    extra: dict = field(default_factory=dict)

    @property
    def boxes_per_second(self) -> float:
        return self.boxes_embedded_now / self.seconds if self.seconds > 0 else 0.0


ProgressCallback = Callable[[ShardResult], None]


@dataclass
class _Timing:
    """Cluster start-up (workers spawned, connected) vs the shard work itself."""

    setup_seconds: float = 0.0
    compute_seconds: float = 0.0
    teacher_process: ResourceUse = ResourceUse()  # the calling process's own use, when shards ran elsewhere
    all_processes: ResourceUse | None = None  # Dask: this process and every worker, whole, over the compute
    between_tasks: float = 0.0  # Dask task slots without a task between two tasks: scheduling, transfers
    tail: float = 0.0  # Dask task slots without a task after their worker's last one


def distill(
    request: DistillRequest,
    teacher: Teacher,
    cluster: ClusterConfig,
    progress: ProgressCallback | None = None,
) -> DistillReport:
    """Write every missing shard of ``request`` and the manifest. ``teacher`` is built by the caller.

    With ``cluster.workers == 0`` (and no scheduler) the shards are embedded in this process by
    ``teacher``, leaving the process's thread counts and allocator as they are; Dask worker
    processes set themselves up for the work (see :mod:`pipeline.worker`).
    """
    if not request.records:
        raise EmptyDatasetError(
            f"dataset {request.dataset_name} split {request.split!r} selects no images "
            f"under {request.dataset_root}"
        )
    identity = _run_identity(request, teacher)
    out_dir = request.out_dir
    prepare_output(out_dir, request.overwrite)
    shards = plan_shards(list(request.records), identity)
    complete = find_complete(out_dir, shards)
    remove_stale_shards(out_dir, shards, request.format)
    jobs = _shard_jobs(request, teacher, [s for s in shards if s.index not in complete])
    timing = _Timing()
    results = _run_jobs(jobs, teacher, cluster, progress, timing) if jobs else []
    resources = sum((r.resources for r in results), timing.teacher_process)
    entries = {**complete, **{r.entry.index: r.entry for r in results}}
    manifest = _manifest(request, identity, teacher, shards, entries)
    write_manifest(out_dir, manifest)
    if (out_dir / PARTIAL_DIR).exists():
        # The manifest now records every shard; completion records are only needed mid-run.
        shutil.rmtree(out_dir / PARTIAL_DIR)
    return DistillReport(
        out_dir=out_dir,
        manifest=manifest,
        shards_written=len(results),
        shards_reused=len(complete),
        seconds=timing.compute_seconds,
        setup_seconds=timing.setup_seconds,
        boxes_embedded_now=sum(r.entry.embeddings for r in results),
        teacher_seconds=sum(r.teacher_seconds for r in results),
        worker_seconds=sum(r.seconds for r in results),
        layout=cluster.layout,
        stages=_run_stages(results, timing),
        resources=resources,
        all_processes=timing.all_processes or resources,
    )


def _run_stages(results: list[ShardResult], timing: _Timing) -> dict[str, float]:
    stages = total_stage_seconds(r.stages for r in results)
    if timing.between_tasks:
        stages["dask"] = timing.between_tasks
    if timing.tail:
        stages["tail"] = timing.tail
    return stages


def _run_identity(request: DistillRequest, teacher: Teacher) -> RunIdentity:
    return RunIdentity(
        dataset=request.dataset_name,
        split=request.split,
        dataset_fingerprint=request.dataset_fingerprint,
        teacher_id=teacher.fingerprint_id(),
        format=request.format,
        dtype=request.dtype,
        shard_size=request.shard_size,
    )


def _shard_jobs(request: DistillRequest, teacher: Teacher, todo: list[PlannedShard]) -> list[ShardJob]:
    metadata = {
        "schema_version": 1,
        "dataset": request.dataset_name,
        "split": request.split,
        "teacher_id": teacher.fingerprint_id(),
        "embedding_dim": teacher.dim,
        "dtype": request.dtype,
    }
    return [
        ShardJob(
            shard=shard,
            out_dir=str(request.out_dir),
            dataset_root=str(request.dataset_root),
            format=request.format,
            dtype=request.dtype,
            teacher_config=teacher.config,
            allow_random_teacher=request.allow_random_teacher,
            metadata=metadata,
        )
        for shard in todo
    ]


def _manifest(
    request: DistillRequest,
    identity: RunIdentity,
    teacher: Teacher,
    shards: list[PlannedShard],
    entries: dict[int, ShardEntry],
) -> ShardManifest:
    return ShardManifest(
        format=request.format,
        dtype=request.dtype,
        embedding_dim=teacher.dim,
        shard_size=request.shard_size,
        dataset=DatasetInfo(
            name=request.dataset_name,
            split=request.split,
            root=str(Path(request.dataset_root).resolve()),
            fingerprint=request.dataset_fingerprint,
            images=len(request.records),
            boxes=sum(r.num_boxes for r in request.records),
            source_bytes=request.source_bytes,
        ),
        teacher=teacher.fingerprint(),
        teacher_id=identity.teacher_id,
        shards=tuple(entries[s.index] for s in shards),
        stats=dict(request.reader_stats),
    )


def _run_jobs(
    jobs: list[ShardJob],
    teacher: Teacher,
    cluster: ClusterConfig,
    progress: ProgressCallback | None,
    timing: _Timing,
) -> list[ShardResult]:
    started = time.perf_counter()
    if cluster.preprocess_workers:
        from pipeline.teacher_process import run_with_preprocess_workers

        run = run_with_preprocess_workers(jobs, teacher, cluster.preprocess_workers, progress)
        timing.setup_seconds, timing.compute_seconds = run.setup_seconds, run.compute_seconds
        timing.teacher_process = run.teacher_process
        return run.results
    if cluster.scheduler is None and cluster.workers == 0:
        results = []
        for job in jobs:
            result = run_shard_job(job, teacher)
            results.append(result)
            if progress:
                progress(result)
        timing.compute_seconds = time.perf_counter() - started
        return results
    return _run_on_dask(jobs, cluster, progress, timing)


def _run_on_dask(
    jobs: list[ShardJob], cluster: ClusterConfig, progress: ProgressCallback | None, timing: _Timing
) -> list[ShardResult]:
    from dask.distributed import as_completed

    started = time.perf_counter()
    with _client(cluster) as client:
        # Load the teacher on every worker first: a bad weights file fails here, once, and
        # the shard timings below measure the work itself.
        first = jobs[0]
        readiness = client.run(
            warm_up_worker,
            first.teacher_config,
            first.allow_random_teacher,
            first.format,
            largest_batch(jobs),
        )
        _warn_about_thread_arenas(readiness)
        timing.setup_seconds = time.perf_counter() - started
        started, used_before = time.perf_counter(), _cluster_resources(client)
        # Largest shards first: fewer idle workers at the end of the run.
        ordered = sorted(jobs, key=lambda j: -j.shard.num_embeddable)
        futures = [
            client.submit(
                run_shard_job,
                job,
                key=f"distill-{job.shard.file}-{job.shard.plan_key[:12]}",
                priority=len(ordered) - rank,
                pure=False,
            )
            for rank, job in enumerate(ordered)
        ]
        results = []
        try:
            for future in as_completed(futures):
                result = future.result()
                results.append(result)
                if progress:
                    progress(result)
        finally:
            client.cancel([f for f in futures if not f.done()])
        timing.compute_seconds = time.perf_counter() - started
        timing.all_processes = _cluster_resources(client).since(used_before)
        task_slots = sum(client.nthreads().values())
        timing.between_tasks, timing.tail = _idle_task_slots(
            results, task_slots, timing.compute_seconds, ended_at=time.time()
        )
        return results


def _cluster_resources(client) -> ResourceUse:
    """CPU time and page faults so far of this process (for a LocalCluster: scheduler, nannies) and every worker."""
    return sum(client.run(ResourceUse.now).values(), ResourceUse.now())


def _idle_task_slots(
    results: list[ShardResult], slots: int, seconds: float, ended_at: float
) -> tuple[float, float]:
    """Seconds of ``slots`` task slots without a task over a run of ``seconds`` that ended at ``ended_at``.

    Split into (between a worker's tasks, after its last one). The second part is the tail of
    the run: workers done while others finish their last shard (or that never got one). A
    worker process is taken as one task slot.
    """
    idle = max(0.0, slots * seconds - sum(r.seconds for r in results))
    last_finished: dict[str, float] = {}
    for r in results:
        last_finished[r.process] = max(last_finished.get(r.process, 0.0), r.finished_at)
    tail = (
        sum(max(0.0, ended_at - t) for t in last_finished.values())
        + max(0, slots - len(last_finished)) * seconds
    )
    tail = min(tail, idle)
    return idle - tail, tail


def _client(cluster: ClusterConfig):
    from dask.distributed import Client

    if cluster.scheduler is not None:
        security = None
        if cluster.tls_ca_file or cluster.tls_cert or cluster.tls_key:
            from distributed.security import Security

            security = Security(
                tls_ca_file=cluster.tls_ca_file,
                tls_client_cert=cluster.tls_cert,
                tls_client_key=cluster.tls_key,
                require_encryption=True,
            )
        try:
            return Client(cluster.scheduler, security=security, timeout=cluster.connect_timeout_s)
        except OSError as error:
            raise PipelineError(f"cannot reach the Dask scheduler at {cluster.scheduler}: {error}") from error
    return _OwningClient(cluster.workers)


def _warn_about_thread_arenas(readiness: dict[str, WorkerReadiness]) -> None:
    slow = sorted(address for address, ready in readiness.items() if not ready.single_arena)
    if slow:
        warnings.warn(
            f"{len(slow)} Dask worker(s) ({', '.join(slow[:3])}) were started without "
            f"{_environment_text()}: their teacher allocates each batch's activations anew "
            f"(page faults in the kernel). Start the workers with `{_environment_text()} dask worker ...`.",
            SlowWorkerWarning,
            stacklevel=3,
        )


def _environment_text() -> str:
    return " ".join(f"{k}={v}" for k, v in SINGLE_ARENA_ENVIRONMENT.items())


class SlowWorkerWarning(UserWarning):
    """A Dask worker is set up in a way that is known to slow the teacher down."""


# Dask settings of the LocalCluster this module starts. Its tasks are whole shards, each seconds
# of teacher work, so the defaults tuned for many short tasks cost more than they bring.
LOCAL_CLUSTER_SETTINGS = {
    # A worker is sent a task only when its thread is free (the default hands each one-thread
    # worker a second task to hold): the last shards go to whichever worker frees up first
    # instead of waiting behind a busy one while another worker idles.
    "distributed.scheduler.worker-saturation": 1.0,
    # The statistical profiler samples the task thread every 10 ms for the dashboard, which this
    # cluster does not start.
    "distributed.worker.profile.enabled": False,
    # Event-loop health checks, every 20 ms in every scheduler, nanny and worker.
    "distributed.admin.tick.interval": "1s",
    # Memory checks of every nanny and worker, every 100 ms: a shard task holds no data between
    # tasks, and its memory is set by the teacher's batch, not by results piling up.
    "distributed.worker.memory.monitor-interval": "1s",
}


class _OwningClient:
    """A Client on a LocalCluster of its own, closed with it.

    The workers are started with one glibc arena (see :mod:`tdt.malloc`) and with
    :data:`LOCAL_CLUSTER_SETTINGS`. Dask's nanny sets a worker's environment by updating
    ``os.environ`` of the process that starts it, which for a LocalCluster is this one: the
    environment is put back as it was when the cluster closes.
    """

    def __init__(self, workers: int):
        import dask
        from dask.distributed import Client, LocalCluster

        self._environ = dict(os.environ)
        spawn_environment = {
            **dask.config.get("distributed.nanny.pre-spawn-environ", default={}),
            **SINGLE_ARENA_ENVIRONMENT,
        }
        try:
            settings = {**LOCAL_CLUSTER_SETTINGS, "distributed.nanny.pre-spawn-environ": spawn_environment}
            with dask.config.set(settings):
                self._cluster = LocalCluster(
                    n_workers=max(1, workers),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    host="127.0.0.1",
                    # Task errors reach us through future.result(); worker log noise at shutdown
                    # (closed heartbeat streams) would only confuse the summary.
                    silence_logs=logging.CRITICAL,
                )
            self._client = Client(self._cluster)
        except BaseException:
            self._restore_environment()
            raise

    def __enter__(self):
        return self._client

    def __exit__(self, *exc):
        try:
            self._client.close()
            self._cluster.close()
        finally:
            self._restore_environment()
        return False

    def _restore_environment(self) -> None:
        for name in set(os.environ) - set(self._environ):
            del os.environ[name]
        os.environ.update(self._environ)
