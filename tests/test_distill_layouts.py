"""The distiller's process layouts: teacher process fed by pre-processing workers; Dask workers' allocator."""

from __future__ import annotations

import os

import pytest
from test_distill import _distill_args, _manifest_with_corrupt_frame_5, _write_manifest

from pipeline.distill import main as distill_main
from pipeline.shards import read_manifest
from pipeline.verify import verify_directory

LARGE_BLOCK_PAGES = (128 << 20) // 4096


def _faults_of_a_reused_large_block() -> int:
    """Minor page faults of this thread while it fills a 128 MiB block a second time (malloc, free, malloc).

    Runs as a Dask task: the allocator set-up of a worker process is what is measured.
    """
    import ctypes
    import ctypes.util
    import resource

    from tdt.process import configure_worker_process

    configure_worker_process()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = LARGE_BLOCK_PAGES * 4096
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
    libc.free(block)
    return faults


def _page_faults_of_a_first_real_batch(config, batch: int) -> int:
    """Minor page faults of this process while its teacher embeds its first batch of ``batch`` real-sized crops.

    Runs as a Dask task; the worker's teacher is built here unless it was warmed up before.
    """
    import resource

    import numpy as np

    from pipeline.worker import _worker_teacher

    teacher = _worker_teacher(config, True)
    height, width = config.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    teacher.embed_pixels(pixels)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _cluster_settings() -> dict:
    import dask

    from pipeline.runner import LOCAL_CLUSTER_SETTINGS

    return {name: dask.config.get(name) for name in LOCAL_CLUSTER_SETTINGS}


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory, pets_dir):
    return _write_manifest(tmp_path_factory.mktemp("manifest") / "pets-tiny.yaml", pets_dir, (1, 10))


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, tiny_manifest, osnet_x0_25_msmt17):
    out = tmp_path_factory.mktemp("shards") / "in-process"
    args = _distill_args(tiny_manifest, osnet_x0_25_msmt17, out, "--workers", "0", "--shard-size", "3")
    assert distill_main(args) == 0
    return out


def test_teacher_process_layout_writes_the_same_bytes_as_the_in_process_run(
    in_process, tmp_path, tiny_manifest, osnet_x0_25_msmt17, capsys
):
    out = tmp_path / "teacher-process"
    args = _distill_args(
        tiny_manifest, osnet_x0_25_msmt17, out, "--preprocess-workers", "2", "--shard-size", "3"
    )
    assert distill_main(args) == 0
    summary = capsys.readouterr().out
    assert "teacher process + 2 pre-processing processes" in summary
    assert "teacher " in summary.split("per box")[1] and "decode " in summary.split("per box")[1]
    # Same teacher, same thread count (both embed in this process), same per-shard batches.
    ours = {e.file: e.sha256 for e in read_manifest(out).shards}
    assert ours == {e.file: e.sha256 for e in read_manifest(in_process).shards}
    assert verify_directory(out)[0] == []


@pytest.mark.filterwarnings("ignore:.*(seqinfo.ini claims|gt rows on):UserWarning")
def test_teacher_process_layout_names_a_corrupt_image_and_keeps_finished_shards(
    tmp_path, pets_dir, osnet_x0_25_msmt17, capsys
):
    manifest = _manifest_with_corrupt_frame_5(tmp_path, pets_dir)
    out = tmp_path / "out"
    # One worker prepares the shards in order: the two before the corrupt image are written.
    args = _distill_args(manifest, osnet_x0_25_msmt17, out, "--preprocess-workers", "1", "--shard-size", "2")
    assert distill_main(args) == 2
    assert "000005.jpg" in capsys.readouterr().err
    assert (out / "shard-00000.parquet").exists() and (out / "shard-00001.parquet").exists()
    assert not (out / "manifest.json").exists()


def test_preprocess_workers_cannot_join_a_remote_scheduler(
    tiny_manifest, osnet_x0_25_msmt17, tmp_path, capsys
):
    args = _distill_args(tiny_manifest, osnet_x0_25_msmt17, tmp_path / "out", "--preprocess-workers", "2")
    assert distill_main([*args, "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert "--preprocess-workers" in capsys.readouterr().err
    assert distill_main([*args[:-2], "--preprocess-workers", "-1"]) == 2


def test_local_cluster_workers_reuse_freed_memory_in_their_task_threads():
    from pipeline.runner import _OwningClient

    environment = dict(os.environ)
    with _OwningClient(1) as client:
        faults = client.submit(_faults_of_a_reused_large_block, pure=False).result()
    assert faults < LARGE_BLOCK_PAGES // 10, f"{faults} page faults refilling a freed 128 MiB block"
    # Dask's nanny writes the workers' environment into this process's; it is put back.
    assert dict(os.environ) == environment


def test_workers_started_without_one_arena_fault_and_are_reported(
    tmp_path, tiny_manifest, osnet_x0_25_msmt17, in_process
):
    from dask.distributed import Client, LocalCluster

    from pipeline.runner import SlowWorkerWarning

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            # What the warning is about: a worker thread's freed large blocks are unmapped.
            assert (
                client.submit(_faults_of_a_reused_large_block, pure=False).result() > LARGE_BLOCK_PAGES // 2
            )
        out = tmp_path / "cluster"
        args = _distill_args(tiny_manifest, osnet_x0_25_msmt17, out, "--shard-size", "3")
        with pytest.warns(SlowWorkerWarning, match="MALLOC_ARENA_MAX=1"):
            assert distill_main([*args, "--scheduler", cluster.scheduler_address]) == 0
    assert verify_directory(out)[0] == []
    assert read_manifest(out).num_boxes == read_manifest(in_process).num_boxes


def test_local_cluster_workers_grow_their_heap_before_the_first_shard_and_get_the_settings():
    from pipeline.runner import LOCAL_CLUSTER_SETTINGS, _OwningClient
    from pipeline.worker import warm_up_worker
    from teacher import TeacherConfig

    config = TeacherConfig(name="osnet_x0_25", batch_size=16)
    with _OwningClient(2) as client:
        warm, cold = sorted(client.nthreads())
        client.run(warm_up_worker, config, True, "parquet", 16, workers=[warm])
        faults = {
            worker: client.submit(
                _page_faults_of_a_first_real_batch, config, 16, workers=[worker], pure=False
            ).result()
            for worker in (warm, cold)
        }
        settings = client.run(_cluster_settings)
        saturation = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.WORKER_SATURATION)
    # The cold worker's first batch maps its activations in page by page; the warm one reuses
    # most of its heap (the allocator's layout differs a little from batch to batch: 2-5k of ~20k).
    assert faults[warm] < faults[cold] // 3, faults
    assert all(worker_settings == LOCAL_CLUSTER_SETTINGS for worker_settings in settings.values())
    assert saturation == LOCAL_CLUSTER_SETTINGS["distributed.scheduler.worker-saturation"]


def test_idle_task_slots_are_split_into_gaps_between_tasks_and_the_tail():
    from pipeline.runner import _idle_task_slots
    from pipeline.shards.manifest import ShardEntry
    from pipeline.worker import ShardResult

    entry = ShardEntry(file="x", index=0, rows=1, boxes=1, embeddings=1, bytes=1, sha256="", plan_key="")

    def task(process: str, start: float, end: float) -> ShardResult:
        return ShardResult(entry=entry, seconds=end - start, process=process, finished_at=end)

    # A 10 s run ending at t=110: worker a runs 100-104 and 104.5-110, worker b 100-106.
    results = [task("h:a", 100, 104), task("h:a", 104.5, 110), task("h:b", 100, 106)]
    between, tail = _idle_task_slots(results, slots=2, seconds=10.0, ended_at=110.0)
    assert (between, tail) == pytest.approx((0.5, 4.0))
    # A third worker that never got a shard idles for the whole run, all of it tail.
    between, tail = _idle_task_slots(results, slots=3, seconds=10.0, ended_at=110.0)
    assert (between, tail) == pytest.approx((0.5, 14.0))
