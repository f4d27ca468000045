"""The mobilenetv2_imagenet teacher: parity with torchvision, weights loading and errors, registration."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tdt.torch_compat import import_torchvision
from teacher import (
    KNOWN_ZOO_WEIGHTS,
    MOBILENET_TEACHER,
    RANDOM_WEIGHTS,
    TEACHER_NAMES,
    RandomTeacherWeightsWarning,
    Teacher,
    TeacherConfig,
    TeacherError,
    add_teacher_arguments,
    build_teacher,
    crop_windows,
    weights_hint,
)
from teacher.registry import MOBILENET_WEIGHTS_SHA256

# Old flat layout -> torchvision's nesting, written out by hand (independent of map_by_order).
_EXPANDING_BLOCK = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}  # t = 6
_FIRST_BLOCK = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}  # t = 1: no expansion conv


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def mobilenet_teacher(mobilenet_v2_features: Path) -> Teacher:
    return build_teacher(TeacherConfig(name=MOBILENET_TEACHER, weights=mobilenet_v2_features, batch_size=16))


def reference_features(weights: Path) -> torch.nn.Module:
    """torchvision's mobilenet_v2().features with the file loaded by renaming keys explicitly."""
    torchvision = import_torchvision()
    features = torchvision.models.mobilenet_v2(weights=None).features.eval()
    renamed = {}
    for key, tensor in torch.load(weights, map_location="cpu", weights_only=True).items():
        match = re.fullmatch(r"features\.(\d+)\.conv\.(\d)\.(\w+)", key)
        if match is None:
            renamed[key.removeprefix("features.")] = tensor
            continue
        block, layer, parameter = match.groups()
        table = _FIRST_BLOCK if block == "1" else _EXPANDING_BLOCK
        renamed[f"{block}.conv.{table[layer]}.{parameter}"] = tensor
    features.load_state_dict(renamed, strict=True)
    return features


def test_embeddings_match_a_direct_torchvision_forward(
    mobilenet_teacher: Teacher, mobilenet_v2_features: Path, pets_dir: Path
) -> None:
    image = cv2.imread(str(pets_dir / "img1" / "000200.jpg"), cv2.IMREAD_COLOR)
    rows = np.loadtxt(pets_dir / "gt" / "gt.txt", delimiter=",", ndmin=2)
    xywh = rows[rows[:, 0] == 200, 2:6]
    boxes = np.concatenate([xywh[:, :2] - 1, xywh[:, :2] - 1 + xywh[:, 2:]], axis=1)
    boxes = boxes[crop_windows(boxes, image.shape[1], image.shape[0])[1]]
    assert len(boxes) >= 5

    batch = mobilenet_teacher.preprocess_crops(image, boxes)
    embeddings, norms = mobilenet_teacher.embed_tensor(batch)
    with torch.inference_mode():
        reference = reference_features(mobilenet_v2_features)(batch).mean(dim=(2, 3)).numpy()

    assert embeddings.shape == (len(boxes), 1280) and mobilenet_teacher.dim == 1280
    np.testing.assert_allclose(embeddings * norms[:, None], reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    assert reference.min() >= 0 and (norms > 0).all()  # post-ReLU6, unnormalised before embed_tensor


def test_fingerprint_names_the_architecture_and_the_weights(
    mobilenet_teacher: Teacher, osnet_x0_25_msmt17: Path
) -> None:
    fingerprint = mobilenet_teacher.fingerprint()
    assert fingerprint["architecture"] == MOBILENET_TEACHER
    assert fingerprint["weights_sha256"] == MOBILENET_WEIGHTS_SHA256
    assert fingerprint["dim"] == 1280 and fingerprint["input_size"] == [256, 128]
    osnet = build_teacher(TeacherConfig(name="osnet_x0_25", weights=osnet_x0_25_msmt17))
    assert osnet.fingerprint_id() != mobilenet_teacher.fingerprint_id()


def test_random_weights_warn_and_are_marked(mobilenet_teacher: Teacher) -> None:
    with pytest.warns(RandomTeacherWeightsWarning, match="RANDOM"):
        random = build_teacher(TeacherConfig(name=MOBILENET_TEACHER), allow_random_weights=True)
    assert random.dim == 1280 and random.fingerprint()["weights_sha256"] == RANDOM_WEIGHTS
    assert random.fingerprint_id() != mobilenet_teacher.fingerprint_id()
    with pytest.raises(TeacherError, match="teacher.fetch_weights"):
        build_teacher(TeacherConfig(name=MOBILENET_TEACHER))


def test_wrong_shapes_or_counts_name_the_file(mobilenet_v2_features: Path, tmp_path: Path) -> None:
    source = torch.load(mobilenet_v2_features, map_location="cpu", weights_only=True)
    reshaped = dict(source)
    reshaped["features.3.conv.3.weight"] = torch.zeros(144, 1, 5, 5)
    torch.save(reshaped, tmp_path / "reshaped.pt")
    truncated = dict(list(source.items())[:-6])
    torch.save(truncated, tmp_path / "truncated.pt")

    for name, problem in (("reshaped.pt", "shape"), ("truncated.pt", "tensors")):
        with pytest.raises(TeacherError, match=problem) as caught:
            build_teacher(TeacherConfig(name=MOBILENET_TEACHER, weights=tmp_path / name))
        message = str(caught.value)
        assert str(tmp_path / name) in message and "python -m teacher.fetch_weights" in message
        assert "\n" not in message


def test_the_two_families_refuse_each_others_files(
    mobilenet_v2_features: Path, osnet_x0_25_msmt17: Path
) -> None:
    with pytest.raises(TeacherError, match=f"use --teacher {MOBILENET_TEACHER}"):
        build_teacher(TeacherConfig(name="osnet_x0_25", weights=mobilenet_v2_features))
    with pytest.raises(TeacherError, match=re.escape(str(osnet_x0_25_msmt17))) as caught:
        build_teacher(TeacherConfig(name=MOBILENET_TEACHER, weights=osnet_x0_25_msmt17))
    assert "use --teacher osnet_x0_25" in str(caught.value)


def test_registered_with_its_own_hint_and_offered_by_every_teacher_cli() -> None:
    from pipeline.distill import build_parser as distill_parser
    from tracker.compare import build_parser as compare_parser

    assert MOBILENET_TEACHER in TEACHER_NAMES
    assert KNOWN_ZOO_WEIGHTS[MOBILENET_WEIGHTS_SHA256].architecture == MOBILENET_TEACHER
    hint = weights_hint(MOBILENET_TEACHER)
    assert "python -m teacher.fetch_weights" in hint and "--teacher-weights" in hint
    assert "model zoo" not in hint and "model zoo" in weights_hint("osnet_x0_25")

    shared = argparse.ArgumentParser()
    add_teacher_arguments(shared)
    assert shared.parse_args(["--teacher", MOBILENET_TEACHER]).teacher == MOBILENET_TEACHER
    assert distill_parser().parse_args(["--teacher", MOBILENET_TEACHER]).teacher == MOBILENET_TEACHER
    compare_args = ["--sequences", "s", "--out", "o", "--teacher", MOBILENET_TEACHER]
    assert compare_parser().parse_args(compare_args).teacher == MOBILENET_TEACHER
