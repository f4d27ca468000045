"""Teacher embeddings: parity with torchreid's FeatureExtractor, fingerprints, output contract."""

from __future__ import annotations

import json
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tdt.torch_compat import import_torchvision
from teacher import (
    RANDOM_WEIGHTS,
    TEACHER_NAMES,
    TEACHER_SPECS,
    RandomTeacherWeightsWarning,
    Teacher,
    TeacherConfig,
    build_teacher,
    crop_windows,
)

PARITY_MIN_COSINE = 0.9999


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def msmt17_teacher(osnet_x0_25_msmt17: Path) -> Teacher:
    return build_teacher(TeacherConfig(name="osnet_x0_25", weights=osnet_x0_25_msmt17))


@pytest.fixture(scope="module")
def random_teacher() -> Teacher:
    with pytest.warns(RandomTeacherWeightsWarning):
        return build_teacher(TeacherConfig(name="osnet_x0_25"), allow_random_weights=True)


def gt_boxes(sequence: Path, frame: int) -> np.ndarray:
    """Ground-truth boxes of one frame as 0-based x1,y1,x2,y2 (MOT gt is 1-based x,y,w,h)."""
    rows = np.loadtxt(sequence / "gt" / "gt.txt", delimiter=",", ndmin=2)
    xywh = rows[rows[:, 0] == frame, 2:6]
    return np.concatenate([xywh[:, :2] - 1, xywh[:, :2] - 1 + xywh[:, 2:]], axis=1)


def frame_image(sequence: Path, frame: int) -> np.ndarray:
    image = cv2.imread(str(sequence / "img1" / f"{frame:06d}.jpg"), cv2.IMREAD_COLOR)
    assert image is not None, f"cannot read frame {frame} of {sequence}"
    return image


def real_frames(pets_dir: Path, mot17_mini_dir: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """PETS09 (small people, upscaled) and MOT17 1080p (large people, shrunk; boxes leave the image)."""
    frames = []
    for name, sequence, frame, limit in (
        ("PETS09 f1", pets_dir, 1, None),
        ("PETS09 f200", pets_dir, 200, None),
        ("MOT17-04 f1", mot17_mini_dir / "MOT17-04-FRCNN", 1, 24),
        ("MOT17-02 f1", mot17_mini_dir / "MOT17-02-FRCNN", 1, 24),
    ):
        image = frame_image(sequence, frame)
        boxes = gt_boxes(sequence, frame)
        _, non_empty = crop_windows(boxes, image.shape[1], image.shape[0])
        frames.append((name, image, boxes[non_empty][:limit]))
    return frames


@pytest.mark.slow
def test_parity_with_torchreid_feature_extractor(
    msmt17_teacher: Teacher, osnet_x0_25_msmt17: Path, pets_dir: Path, mot17_mini_dir: Path
) -> None:
    import_torchvision()  # torchreid imports torchvision
    from torchreid.reid.utils import FeatureExtractor

    extractor = FeatureExtractor(
        model_name="osnet_x0_25", model_path=str(osnet_x0_25_msmt17), device="cpu", verbose=False
    )
    frames = real_frames(pets_dir, mot17_mini_dir)
    checked = 0
    for name, image, boxes in frames:
        windows, _ = crop_windows(boxes, image.shape[1], image.shape[0])
        # FeatureExtractor takes RGB arrays (it wraps them with ToPILImage).
        rgb_crops = [np.ascontiguousarray(image[y1:y2, x1:x2, ::-1]) for x1, y1, x2, y2 in windows]
        reference_input = torch.stack([extractor.preprocess(extractor.to_pil(c)) for c in rgb_crops])
        reference = extractor(rgb_crops).numpy()

        ours_input = msmt17_teacher.preprocess_crops(image, boxes)
        embeddings, norms = msmt17_teacher.embed_crops(image, boxes)

        assert torch.equal(ours_input, reference_input), f"{name}: preprocessed pixels differ"
        reference_norms = np.linalg.norm(reference, axis=1)
        cosine = (embeddings * reference).sum(axis=1) / reference_norms
        assert cosine.min() >= PARITY_MIN_COSINE, f"{name}: min cosine {cosine.min():.7f}"
        np.testing.assert_allclose(norms, reference_norms, rtol=1e-4)
        checked += len(boxes)
    heights = np.concatenate([b[:, 3] - b[:, 1] for _, _, b in frames])
    assert checked >= 40 and heights.min() < 128 and heights.max() > 256  # both up- and downscaling


def test_fingerprint_is_stable_and_follows_the_weights(
    msmt17_teacher: Teacher, osnet_x0_25_msmt17: Path, shared_data: Path
) -> None:
    rebuilt = build_teacher(TeacherConfig(name="osnet_x0_25", weights=osnet_x0_25_msmt17, batch_size=8))
    market = build_teacher(
        TeacherConfig(name="osnet_x0_25", weights=shared_data / "weights" / "osnet_x0_25_market1501.pth")
    )
    fingerprint = msmt17_teacher.fingerprint()
    assert set(fingerprint) >= {"architecture", "weights_sha256", "input_size", "mean", "std", "dim"}
    assert fingerprint["weights_sha256"].startswith("6f57607f")
    assert fingerprint["dim"] == 512 and fingerprint["input_size"] == [256, 128]
    assert json.loads(json.dumps(fingerprint)) == fingerprint
    # Batch size does not change embeddings, so it is not part of the fingerprint.
    assert rebuilt.fingerprint() == fingerprint
    assert rebuilt.fingerprint_id() == msmt17_teacher.fingerprint_id()
    assert len(msmt17_teacher.fingerprint_id()) == 16
    assert market.fingerprint()["weights_sha256"] != fingerprint["weights_sha256"]
    assert market.fingerprint_id() != msmt17_teacher.fingerprint_id()

    fingerprint["dim"] = 0
    assert msmt17_teacher.fingerprint()["dim"] == 512, "fingerprint() must return a copy"


def test_embeddings_are_unit_rows_and_inputs_stay_untouched(
    msmt17_teacher: Teacher, mot17_mini_dir: Path
) -> None:
    sequence = mot17_mini_dir / "MOT17-02-FRCNN"
    image = frame_image(sequence, 1)
    boxes = gt_boxes(sequence, 1)[:10].astype(np.float32)
    image_before, boxes_before = image.copy(), boxes.copy()

    embeddings, norms = msmt17_teacher.embed_crops(image, boxes)

    assert embeddings.shape == (10, 512) and embeddings.dtype == np.float32
    assert norms.shape == (10,) and norms.dtype == np.float32
    assert (norms > 0).all()
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(image, image_before)
    np.testing.assert_array_equal(boxes, boxes_before)

    small_batches = build_teacher(
        TeacherConfig(name="osnet_x0_25", weights=msmt17_teacher.config.weights, batch_size=3)
    )
    batched, batched_norms = small_batches.embed_crops(image, boxes)
    np.testing.assert_allclose(batched, embeddings, atol=1e-5)
    np.testing.assert_allclose(batched_norms, norms, rtol=1e-5)


def test_preprocess_crops_and_images_agree(random_teacher: Teacher, pets_dir: Path) -> None:
    image = frame_image(pets_dir, 1)
    boxes = gt_boxes(pets_dir, 1)
    windows, _ = crop_windows(boxes, image.shape[1], image.shape[0])
    crops = [image[y1:y2, x1:x2] for x1, y1, x2, y2 in windows]

    from_boxes = random_teacher.preprocess_crops(image, boxes)
    from_crops = random_teacher.preprocess_images(crops)

    assert from_boxes.shape == (len(boxes), 3, 256, 128) and from_boxes.dtype == torch.float32
    assert from_boxes.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(from_boxes, from_crops)
    embeddings, _ = random_teacher.embed_images(crops)
    np.testing.assert_allclose(embeddings, random_teacher.embed_tensor(from_boxes)[0], atol=1e-6)


def test_channel_order_is_bgr_in_rgb_out(random_teacher: Teacher) -> None:
    blue_bgr = np.zeros((40, 20, 3), np.uint8)
    blue_bgr[..., 0] = 255
    batch = random_teacher.preprocess_images([blue_bgr])
    mean, std = random_teacher.config.mean, random_teacher.config.std
    expected_rgb = [(0 - mean[0]) / std[0], (0 - mean[1]) / std[1], (1 - mean[2]) / std[2]]
    np.testing.assert_allclose(batch[0, :, 10, 10].numpy(), expected_rgb, rtol=1e-6)


def test_empty_and_degenerate_boxes(random_teacher: Teacher) -> None:
    image = np.full((60, 40, 3), 128, np.uint8)
    embeddings, norms = random_teacher.embed_crops(image, np.zeros((0, 4)))
    assert embeddings.shape == (0, random_teacher.dim) and norms.shape == (0,)
    assert random_teacher.preprocess_crops(image, np.zeros((0, 4))).shape == (0, 3, 256, 128)
    with pytest.raises(ValueError, match="empty after rounding"):
        random_teacher.preprocess_crops(image, np.array([[5, 5, 20, 30], [50, 10, 70, 30]]))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        random_teacher.embed_crops(image, np.array([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match="uint8 BGR"):
        random_teacher.preprocess_crops(image.astype(np.float32), np.array([[0, 0, 10, 10]]))
    with pytest.raises(ValueError, match="float32"):
        random_teacher.embed_tensor(torch.zeros((1, 3, 128, 64)))


def test_random_weights_are_opt_in_reproducible_and_leave_the_rng_alone(random_teacher: Teacher) -> None:
    assert random_teacher.fingerprint()["weights_sha256"] == RANDOM_WEIGHTS
    rng_before = torch.get_rng_state()
    with pytest.warns(RandomTeacherWeightsWarning, match="RANDOM"):
        again = build_teacher(TeacherConfig(name="osnet_x0_25"), allow_random_weights=True)
    assert torch.equal(torch.get_rng_state(), rng_before)
    crops = [np.random.default_rng(1).integers(0, 255, (90, 40, 3), dtype=np.uint8)]
    np.testing.assert_array_equal(again.embed_images(crops)[0], random_teacher.embed_images(crops)[0])


@pytest.mark.slow
def test_every_architecture_builds_offline_with_its_dimension(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the teacher tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    crop = np.full((100, 50, 3), 90, np.uint8)
    for name in TEACHER_NAMES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomTeacherWeightsWarning)
            teacher = build_teacher(TeacherConfig(name=name), allow_random_weights=True)
        assert teacher.dim == TEACHER_SPECS[name].dim, name
        embeddings, norms = teacher.embed_images([crop])
        assert embeddings.shape == (1, teacher.dim) and np.isfinite(embeddings).all(), name
