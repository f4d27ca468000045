"""Teacher weights: user-facing errors, key cleaning, and the pickle trust decision."""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from teacher import (
    KNOWN_ZOO_WEIGHTS,
    MODEL_ZOO_URL,
    TeacherConfig,
    TeacherError,
    add_teacher_arguments,
    build_teacher,
    teacher_config_from_args,
)
from teacher.benchmark import main as benchmark_main


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def market1501_weights(shared_data: Path) -> Path:
    path = shared_data / "weights" / "osnet_x0_25_market1501.pth"
    if not path.exists():
        pytest.skip(f"real weights not found at {path}")
    return path


def assert_helpful(message: str, zoo_file: str) -> None:
    """Every weights error tells the user what to download and how to point at it."""
    assert zoo_file in message
    assert MODEL_ZOO_URL in message
    assert "--teacher-weights" in message and "TDT_TEACHER_WEIGHTS" in message
    assert "\n" not in message


def build(name: str, weights: Path, **options: object):
    return build_teacher(TeacherConfig(name=name, weights=weights, **options))


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(TeacherError, match="not found") as caught:
        build("osnet_x0_25", tmp_path / "nowhere.pth")
    assert_helpful(str(caught.value), "osnet_x0_25_msmt17.pth")


def test_no_weights_without_random_opt_in() -> None:
    with pytest.raises(TeacherError, match="no weights file") as caught:
        build_teacher(TeacherConfig())
    assert_helpful(str(caught.value), "osnet_x1_0_msmt17.pth")


@pytest.mark.parametrize(
    "content",
    [b"", np.random.default_rng(7).bytes(3000), b"PK\x03\x04 not really a zip"],
    ids=["empty", "random-bytes", "fake-zip"],
)
def test_corrupt_weights_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(content)
    with pytest.raises(TeacherError, match="corrupt") as caught:
        build("osnet_x1_0", path, trust_pickle=True)
    assert_helpful(str(caught.value), "osnet_x1_0_msmt17.pth")
    with pytest.raises(TeacherError, match="corrupt"):
        build("osnet_x1_0", path)


def test_truncated_zoo_file(tmp_path: Path, osnet_x0_25_msmt17: Path) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(osnet_x0_25_msmt17.read_bytes()[:200_000])
    with pytest.raises(TeacherError, match="corrupt") as caught:
        build("osnet_x0_25", path)
    assert_helpful(str(caught.value), "osnet_x0_25_msmt17.pth")


def test_weights_of_a_smaller_osnet_are_refused(market1501_weights: Path) -> None:
    with pytest.raises(TeacherError, match="wrong shape") as caught:
        build("osnet_x1_0", market1501_weights)
    message = str(caught.value)
    assert_helpful(message, "osnet_x1_0_msmt17.pth")
    assert "conv1.conv.weight" in message
    assert "osnet_x0_25_market1501.pth for osnet_x0_25" in message  # recognised zoo file


def test_weights_of_another_family_list_missing_and_unexpected_keys(market1501_weights: Path) -> None:
    with pytest.raises(TeacherError, match="missing keys") as caught:
        build("resnet50", market1501_weights)
    message = str(caught.value)
    assert "unexpected keys (e.g. conv1.conv.weight" in message and "bn1.weight" in message
    assert_helpful(message, "resnet50_msmt17.pth")


def test_unknown_teacher_name() -> None:
    with pytest.raises(TeacherError, match="unknown teacher 'osnet_x9'") as caught:
        TeacherConfig(name="osnet_x9")
    assert "osnet_x0_25" in str(caught.value)
    assert_helpful(str(caught.value), "osnet_x1_0_msmt17.pth")


def test_invalid_device() -> None:
    with pytest.raises(TeacherError, match="device"):
        build_teacher(TeacherConfig(name="osnet_x0_25", device="gpu-please"), allow_random_weights=True)


def test_zoo_files_load_without_pickle_and_are_registered(
    osnet_x0_25_msmt17: Path, market1501_weights: Path
) -> None:
    for path in (osnet_x0_25_msmt17, market1501_weights):
        sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        assert KNOWN_ZOO_WEIGHTS[sha256].file_name == path.name
        torch.load(path, map_location="cpu", weights_only=True)  # the measured fact the policy rests on


def save_training_checkpoint(zoo_file: Path, destination: Path) -> Path:
    """A torchreid-style training checkpoint: DataParallel keys, numpy metric, legacy format."""
    state = torch.load(zoo_file, map_location="cpu", weights_only=True)
    checkpoint = {
        "state_dict": {f"module.{k}": v for k, v in state.items()},
        "epoch": 150,
        "rank1": np.float64(0.7),
    }
    torch.save(checkpoint, destination, _use_new_zipfile_serialization=False)
    return destination


def test_untrusted_pickle_is_refused_unless_trusted(
    tmp_path: Path, osnet_x0_25_msmt17: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = save_training_checkpoint(osnet_x0_25_msmt17, tmp_path / "model.pth.tar-150")
    with pytest.raises(TeacherError, match="refused: this file needs full unpickling") as caught:
        build("osnet_x0_25", path)
    message = str(caught.value)
    assert "--trust-teacher-pickle" in message and "numpy" in message
    assert_helpful(message, "osnet_x0_25_msmt17.pth")

    with caplog.at_level(logging.WARNING, logger="teacher.weights"):
        trusted = build("osnet_x0_25", path, trust_pickle=True)
    assert "full pickle" in caplog.text
    plain = build("osnet_x0_25", osnet_x0_25_msmt17)
    crops = [np.random.default_rng(3).integers(0, 255, (120, 50, 3), dtype=np.uint8)]
    np.testing.assert_array_equal(trusted.embed_images(crops)[0], plain.embed_images(crops)[0])
    assert trusted.fingerprint()["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_plain_state_dict_with_prefixes_and_no_classifier_needs_no_trust(
    tmp_path: Path, osnet_x0_25_msmt17: Path
) -> None:
    state = torch.load(osnet_x0_25_msmt17, map_location="cpu", weights_only=True)
    backbone = {f"module.{k}": v for k, v in state.items() if not k.startswith("classifier.")}
    path = tmp_path / "backbone.pt"
    torch.save(backbone, path)
    assert build("osnet_x0_25", path).dim == 512

    del backbone["module.conv5.conv.weight"]
    torch.save(backbone, path)
    with pytest.raises(TeacherError, match=r"1 missing keys \(e\.g\. conv5\.conv\.weight\)"):
        build("osnet_x0_25", path)


def test_weights_from_argument_or_environment(tmp_path: Path) -> None:
    env = {"TDT_TEACHER_WEIGHTS": str(tmp_path / "env.pth")}
    assert TeacherConfig.from_env_and_args(environ=env).weights == tmp_path / "env.pth"
    explicit = TeacherConfig.from_env_and_args(weights=tmp_path / "arg.pth", environ=env)
    assert explicit.weights == tmp_path / "arg.pth"
    assert TeacherConfig.from_env_and_args(environ={"TDT_TEACHER_WEIGHTS": ""}).weights is None
    assert TeacherConfig(weights="a.pth").weights == Path("a.pth")

    parser = argparse.ArgumentParser()
    add_teacher_arguments(parser)
    args = parser.parse_args(
        ["--teacher", "osnet_x0_5", "--trust-teacher-pickle", "--teacher-batch-size", "8"]
    )
    config = teacher_config_from_args(args)
    assert (config.name, config.trust_pickle, config.batch_size) == ("osnet_x0_5", True, 8)
    with pytest.raises(TeacherError, match="batch size"):
        TeacherConfig(batch_size=0)


def test_benchmark_cli_reports_teacher_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = benchmark_main(["--teacher", "osnet_x0_25", "--teacher-weights", str(tmp_path / "missing.pth")])
    assert code == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1 and error_lines[0].startswith("error: teacher weights file not found")
