"""End to end: real PETS09 frames -> real OSNet x0.25 teacher -> shards -> verify; resume; errors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.distill import main as distill_main
from pipeline.shards import open_shards, read_manifest, read_shard
from pipeline.verify import main as verify_main
from pipeline.verify import verify_directory

REPO = Path(__file__).resolve().parents[1]


def _write_manifest(path: Path, root: Path, frames: tuple[int, int]) -> Path:
    path.write_text(
        "format: motchallenge\n"
        "description: a few real PETS09 frames for tests\n"
        f"root: {{default: {root}, env: TDT_TEST_PETS_ROOT}}\n"
        "has_identities: true\n"
        "options: {gt_format: mot15}\n"
        "default_split: tiny\n"
        "splits:\n"
        f"  tiny: {{sequences: ['.'], frames: [{frames[0]}, {frames[1]}]}}\n"
        "  nothing: {sequences: ['.'], frames: [5000, 5001]}\n"
        "source: {url: 'https://motchallenge.net', instructions: test, layout: test}\n"
    )
    return path


def _manifest_with_corrupt_frame_5(tmp_path: Path, pets_dir: Path) -> Path:
    """A manifest over PETS09 frames 1-6 whose frame 5 is not a JPEG (the others link the real ones)."""
    root = tmp_path / "pets"
    (root / "img1").mkdir(parents=True)
    shutil.copytree(pets_dir / "gt", root / "gt")
    shutil.copy(pets_dir / "seqinfo.ini", root)
    for frame in range(1, 7):
        (root / "img1" / f"{frame:06d}.jpg").symlink_to(pets_dir / "img1" / f"{frame:06d}.jpg")
    (root / "img1" / "000005.jpg").unlink()
    (root / "img1" / "000005.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return _write_manifest(tmp_path / "m.yaml", root, (1, 6))


def _distill_args(manifest: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--manifest", str(manifest), "--teacher", "osnet_x0_25", "--teacher-weights", str(weights),
        "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory, pets_dir) -> Path:
    return _write_manifest(tmp_path_factory.mktemp("manifest") / "pets-tiny.yaml", pets_dir, (1, 10))


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_manifest, osnet_x0_25_msmt17) -> Path:
    out = tmp_path_factory.mktemp("shards") / "parquet"
    code = distill_main(
        _distill_args(tiny_manifest, osnet_x0_25_msmt17, out, "--workers", "0", "--shard-size", "3")
    )
    assert code == 0
    return out


@pytest.fixture
def copy_of(distilled, tmp_path) -> Path:
    target = tmp_path / "shards"
    shutil.copytree(distilled, target)
    return target


def test_distilled_shards_hold_every_box_with_unit_embeddings(distilled, pets_dir):
    manifest = read_manifest(distilled)
    assert manifest.num_images == 10 and len(manifest.shards) == 4
    gt = np.loadtxt(pets_dir / "gt" / "gt.txt", delimiter=",")
    assert manifest.num_boxes == int((gt[:, 0] <= 10).sum())
    assert manifest.teacher["architecture"] == "osnet_x0_25"
    shards = open_shards(distilled, verify_checksums=True)
    first = shards[0]
    assert first.image == "img1/000001.jpg" and first.width == 768 and first.height == 576
    rows = gt[gt[:, 0] == 1]
    np.testing.assert_allclose(first.boxes[:, :2], rows[:, 2:4], atol=1e-3)
    assert sorted(first.identities.tolist()) == sorted(rows[:, 1].astype(int).tolist())
    norms = np.linalg.norm(first.embeddings, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    assert (first.teacher_norms > 0).all()
    assert sum(1 for _ in shards) == 10
    assert verify_directory(distilled)[0] == []


def test_verify_cli_exit_codes_and_json(distilled, copy_of, capsys):
    assert verify_main([str(distilled)]) == 0
    assert "OK" in capsys.readouterr().out
    (copy_of / "shard-00001.parquet").unlink()
    assert verify_main([str(copy_of), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert {"shard": "shard-00001.parquet", "check": "missing"}.items() <= report["defects"][0].items()


def _defects(directory: Path) -> list[tuple[str, str]]:
    return [(d.shard, d.check) for d in verify_directory(directory)[0]]


def test_verify_detects_a_flipped_byte(copy_of):
    path = copy_of / "shard-00002.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    assert ("shard-00002.parquet", "sha256") in _defects(copy_of)


def test_verify_detects_a_truncated_shard(copy_of):
    path = copy_of / "shard-00000.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    found = _defects(copy_of)
    assert ("shard-00000.parquet", "size") in found and ("shard-00000.parquet", "decode") in found


def test_verify_detects_an_extra_shard_and_leftovers(copy_of):
    shutil.copy(copy_of / "shard-00000.parquet", copy_of / "shard-00009.parquet")
    (copy_of / ".shard-00001.parquet.tmp-123").write_bytes(b"half")
    found = _defects(copy_of)
    assert ("shard-00009.parquet", "extra-shard") in found
    assert (".shard-00001.parquet.tmp-123", "leftover") in found


def test_verify_detects_a_tampered_manifest(copy_of):
    path = copy_of / "manifest.json"
    data = json.loads(path.read_text())
    data["shards"][1]["boxes"] += 1
    path.write_text(json.dumps(data))
    assert ("shard-00001.parquet", "boxes") in _defects(copy_of)
    path.write_text("{not json")
    assert _defects(copy_of) == [("manifest.json", "manifest")]
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    assert "unknown shard schema version 99" in str(verify_directory(copy_of)[0][0])


def _rewrite_shard(directory: Path, file: str, change) -> None:
    """Rewrite one shard with ``change(table, metadata)`` applied and fix the manifest's checksums,
    so only the content defect remains to be found."""
    from pipeline.shards import write_shard
    from pipeline.shards.manifest import sha256_file

    table, metadata = read_shard(directory / file)
    table, metadata = change(table, metadata)
    write_shard(directory / file, table, metadata, "parquet")
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    for entry in data["shards"]:
        if entry["file"] == file:
            entry["sha256"] = sha256_file(directory / file)
            entry["bytes"] = (directory / file).stat().st_size
    path.write_text(json.dumps(data))


def test_verify_detects_a_mismatched_teacher_fingerprint(copy_of):
    _rewrite_shard(copy_of, "shard-00003.parquet", lambda t, m: (t, {**m, "teacher_id": "someone-else"}))
    assert _defects(copy_of) == [("shard-00003.parquet", "teacher")]


def test_verify_detects_a_nan_embedding(copy_of):
    def poison(table, metadata):
        table.embeddings[0, 5] = np.nan
        return table, metadata

    _rewrite_shard(copy_of, "shard-00001.parquet", poison)
    assert ("shard-00001.parquet", "finite") in _defects(copy_of)


def test_verify_detects_wrong_dims(copy_of):
    from dataclasses import replace

    def shrink(table, metadata):
        return replace(table, embeddings=np.ascontiguousarray(table.embeddings[:, :256])), metadata

    _rewrite_shard(copy_of, "shard-00002.parquet", shrink)
    assert ("shard-00002.parquet", "dims") in _defects(copy_of)


def test_rerun_reuses_complete_shards_and_redoes_damaged_ones(copy_of, tiny_manifest, osnet_x0_25_msmt17):
    before = {e.file: e.sha256 for e in read_manifest(copy_of).shards}
    (copy_of / "shard-00001.parquet").write_bytes(b"garbage")
    args = _distill_args(tiny_manifest, osnet_x0_25_msmt17, copy_of, "--workers", "0", "--shard-size", "3")
    assert distill_main(args) == 0
    after = {e.file: e.sha256 for e in read_manifest(copy_of).shards}
    assert after == before
    assert verify_directory(copy_of)[0] == []


def test_hdf5_holds_the_same_content_as_parquet(distilled, tmp_path, tiny_manifest, osnet_x0_25_msmt17):
    out = tmp_path / "hdf5"
    args = _distill_args(tiny_manifest, osnet_x0_25_msmt17, out, "--workers", "0", "--shard-size", "3")
    assert distill_main([*args, "--format", "hdf5"]) == 0
    assert verify_main([str(out)]) == 0
    parquet, hdf5 = open_shards(distilled), open_shards(out)
    assert len(parquet) == len(hdf5) == 10 and parquet.teacher_id == hdf5.teacher_id
    for a, b in zip(parquet, hdf5, strict=True):
        assert (a.image, a.width, a.height, a.frame) == (b.image, b.width, b.height, b.frame)
        for name in ("boxes", "identities", "ignore", "embeddings", "teacher_norms"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_a_different_run_in_the_same_directory_needs_overwrite(
    copy_of, tiny_manifest, osnet_x0_25_msmt17, capsys
):
    args = _distill_args(tiny_manifest, osnet_x0_25_msmt17, copy_of, "--workers", "0", "--shard-size", "5")
    assert distill_main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert distill_main([*args, "--overwrite"]) == 0
    assert len(read_manifest(copy_of).shards) == 2
    assert verify_directory(copy_of)[0] == []


def test_in_process_run_leaves_the_torch_thread_count_alone(tmp_path, pets_dir, osnet_x0_25_msmt17):
    import torch

    manifest = _write_manifest(tmp_path / "two.yaml", pets_dir, (1, 2))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # not the 1 a Dask worker sets for itself
    try:
        assert (
            distill_main(_distill_args(manifest, osnet_x0_25_msmt17, tmp_path / "out", "--workers", "0")) == 0
        )
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_options_become_a_typed_config_with_the_shared_teacher_options(tmp_path):
    from pipeline.distill import build_parser, config_from_args
    from teacher import DEFAULT_TEACHER

    args = build_parser().parse_args(["--dataset", "pets09-s2l1-half1", "--root", str(tmp_path)])
    config = config_from_args(args)
    assert config.teacher.name == DEFAULT_TEACHER and config.teacher.batch_size == 64
    assert config.dataset.root == tmp_path and config.output.out_dir is None and config.cluster.workers >= 1
    short = ["--manifest", "m.yaml", "--batch-size", "16", "--device", "cuda:1", "--workers", "0"]
    long = [
        "--manifest",
        "m.yaml",
        "--teacher-batch-size",
        "16",
        "--teacher-device",
        "cuda:1",
        "--workers",
        "0",
    ]
    for options in (short, long):
        config = config_from_args(build_parser().parse_args(options))
        assert (config.teacher.batch_size, config.teacher.device) == (16, "cuda:1")
        assert (
            config.dataset.manifest == "m.yaml"
            and config.dataset.root is None
            and config.cluster.workers == 0
        )


@contextlib.contextmanager
def _torch_threads(count: int):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.distill", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_missing_dataset_is_a_short_exit_2_error():
    result = _run_cli("--dataset", "crowdhuman", "--root", "/nonexistent/crowdhuman")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "crowdhuman" in result.stderr and "TDT_CROWDHUMAN_ROOT" in result.stderr
    unknown = _run_cli("--dataset", "no-such-set")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr and "no-such-set" in unknown.stderr


def test_missing_teacher_weights_is_a_short_exit_2_error(tiny_manifest, tmp_path, capsys):
    args = _distill_args(tiny_manifest, tmp_path / "absent.pth", tmp_path / "out", "--workers", "0")
    assert distill_main(args) == 2
    err = capsys.readouterr().err
    assert "absent.pth" in err and "--teacher-weights" in err and "TDT_TEACHER_WEIGHTS" in err


def test_empty_split_is_a_clear_error(tiny_manifest, osnet_x0_25_msmt17, tmp_path, capsys):
    args = _distill_args(
        tiny_manifest, osnet_x0_25_msmt17, tmp_path / "out", "--workers", "0", "--split", "nothing"
    )
    assert distill_main(args) == 2
    assert "nothing" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*(seqinfo.ini claims|gt rows on):UserWarning")
def test_corrupt_image_names_the_file_and_keeps_finished_shards(
    tmp_path, pets_dir, osnet_x0_25_msmt17, capsys
):
    manifest = _manifest_with_corrupt_frame_5(tmp_path, pets_dir)
    out = tmp_path / "out"
    args = _distill_args(manifest, osnet_x0_25_msmt17, out, "--workers", "0", "--shard-size", "2")
    assert distill_main(args) == 2
    err = capsys.readouterr().err
    assert "000005.jpg" in err and "decode" in err
    assert (out / "shard-00000.parquet").exists() and (out / "shard-00001.parquet").exists()
    assert not (out / "manifest.json").exists()


def test_killed_run_resumes_to_the_same_shards_as_an_uninterrupted_one(
    tmp_path, pets_dir, osnet_x0_25_msmt17
):
    manifest = _write_manifest(tmp_path / "m.yaml", pets_dir, (1, 120))
    common = ["--workers", "1", "--shard-size", "2"]
    reference = tmp_path / "reference"
    # The last bits of an embedding depend on the teacher's thread count (how the convolutions
    # split their sums): run the reference with the one thread of a Dask worker.
    with _torch_threads(1):
        assert (
            distill_main(
                _distill_args(manifest, osnet_x0_25_msmt17, reference, "--workers", "0", "--shard-size", "2")
            )
            == 0
        )

    interrupted = tmp_path / "interrupted"
    command = [
        sys.executable,
        "-m",
        "pipeline.distill",
        *_distill_args(manifest, osnet_x0_25_msmt17, interrupted, *common),
    ]
    process = subprocess.Popen(
        command, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    partial = interrupted / ".partial"
    while time.monotonic() < deadline and process.poll() is None:
        if partial.is_dir() and len(list(partial.glob("*.json"))) >= 3:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert not (interrupted / "manifest.json").exists(), "the run finished before it could be interrupted"
    done_before = {p.name[: -len(".json")] for p in partial.glob("*.json")}
    assert 3 <= len(done_before) < 60

    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"reused from an earlier run {len(done_before)}" in result.stdout
    ours = {e.file: e.sha256 for e in read_manifest(interrupted).shards}
    theirs = {e.file: e.sha256 for e in read_manifest(reference).shards}
    assert ours == theirs
    assert verify_directory(interrupted)[0] == []


def test_runs_on_an_existing_dask_cluster(tmp_path, tiny_manifest, osnet_x0_25_msmt17, distilled):
    from dask.distributed import LocalCluster

    from pipeline.runner import SlowWorkerWarning

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        out = tmp_path / "cluster"
        args = _distill_args(tiny_manifest, osnet_x0_25_msmt17, out, "--shard-size", "3")
        # a cluster started without the allocator setting still distils, with a warning saying so
        with pytest.warns(SlowWorkerWarning, match="MALLOC_ARENA_MAX=1"):
            assert distill_main([*args, "--scheduler", cluster.scheduler_address]) == 0
    assert verify_directory(out)[0] == []
    assert read_manifest(out).num_boxes == read_manifest(distilled).num_boxes


def test_unreachable_scheduler_is_a_clear_error(tmp_path, tiny_manifest, osnet_x0_25_msmt17, capsys):
    args = _distill_args(tiny_manifest, osnet_x0_25_msmt17, tmp_path / "out", "--shard-size", "3")
    assert distill_main([*args, "--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout", "2"]) == 2
    assert "tcp://127.0.0.1:9" in capsys.readouterr().err
