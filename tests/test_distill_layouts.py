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
