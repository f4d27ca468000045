"""StudentDataset on real PETS09 shard directories: shapes, geometry, mixing, identities, refusals."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from student_fixtures import (
    BUSY_PETS_FRAMES,
    mot17_records,
    pets_records,
    write_pets_shard_dir,
    write_shard_dir,
)
from torch.utils.data import DataLoader

from student.data import DatasetOptions, SampleKey, StudentDataError, StudentDataset, collate
from student.selection import DrawStream, select_images
from student.sources import ShardSource
from tdt.config import ConfigError
from tdt.imagenet import IMAGENET_MEAN_BGR_UINT8, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

INPUT_SIZE = (432, 576)


@pytest.fixture(scope="module")
def pets_shards(pets_dir: Path, tmp_path_factory) -> Path:
    return write_pets_shard_dir(tmp_path_factory.mktemp("pets_shards"), pets_dir)


def _validation(sources, **options) -> StudentDataset:
    return StudentDataset(sources, DatasetOptions(input_size=INPUT_SIZE, mode="validation", **options))


def _training(sources, **options) -> StudentDataset:
    return StudentDataset(sources, DatasetOptions(input_size=INPUT_SIZE, mode="train", **options))


def test_validation_items_letterbox_real_frames_and_map_back(pets_shards, pets_dir):
    dataset = _validation([pets_shards])
    records = pets_records(pets_dir)
    assert len(dataset) == len(records) == len(BUSY_PETS_FRAMES) + 1
    assert dataset.embedding_dim == 16 and dataset.teacher_id == "test-teacher-0"
    for index, record in enumerate(records):
        image, target = dataset[index]
        assert image.shape == (3, *INPUT_SIZE) and image.dtype == torch.float32
        assert image.min() >= 0.0 and image.max() <= 1.0
        count = len(record.boxes)
        assert target["boxes"].shape == (count, 4) and target["boxes"].dtype == torch.float32
        assert target["ignore"].dtype == torch.bool and target["identities"].dtype == torch.int64
        assert target["embeddings"].shape == (count, 16) and target["embeddings"].dtype == torch.float32
        assert target["image_path"].endswith(record.image) and target["image_id"] == index
        back = target["placement"].to_source(target["boxes"].numpy())
        np.testing.assert_allclose(back, record.boxes, atol=1.0)
        np.testing.assert_allclose(target["original_boxes"].numpy(), record.boxes, atol=1e-3)
        assert target["original_size"] == (576, 768)
        np.testing.assert_array_equal(target["ignore"].numpy(), record.ignore)
        # 768x576 -> 432x576 is a 0.75 fit filling the whole input: no padding.
        assert target["placement"].scale_x == pytest.approx(0.75)
        np.testing.assert_allclose(target["boxes"].numpy(), record.boxes * 0.75, atol=1e-3)
    image, target = dataset[len(records) - 1]
    assert target["boxes"].shape == (0, 4) and target["embeddings"].shape == (0, 16), "negative image dropped"

    # Pixels are the RGB frame resized (cv2 reads BGR).
    bgr = cv2.imread(str(pets_dir / records[0].image))
    expected = cv2.resize(bgr, (576, 432), interpolation=cv2.INTER_LINEAR)[:, :, ::-1].transpose(2, 0, 1)
    first, _ = dataset[0]
    assert np.abs(first.numpy() * 255 - expected).mean() < 1.0


def test_ignore_boxes_keep_nan_embeddings_and_unknown_identity(pets_shards):
    _, target = _validation([pets_shards])[1]  # frame 150 has one confidence-0 (ignore) row
    ignore = target["ignore"].numpy()
    assert ignore.sum() == 1
    assert torch.isnan(target["embeddings"][ignore]).all()
    assert not torch.isnan(target["embeddings"][~ignore]).any()
    assert (target["identities"][ignore] == -1).all() and (target["identities"][~ignore] >= 0).all()


def test_letterbox_pads_a_different_aspect_and_maps_back_within_a_pixel(pets_shards, pets_dir):
    dataset = StudentDataset([pets_shards], DatasetOptions(input_size=(320, 640), mode="validation"))
    records = pets_records(pets_dir)
    image, target = dataset[2]
    placement = target["placement"]
    assert placement.offset_x > 0 and placement.offset_y == 0
    np.testing.assert_allclose(placement.to_source(target["boxes"].numpy()), records[2].boxes, atol=1.0)
    pad_rgb = np.array(IMAGENET_MEAN_BGR_UINT8[::-1], dtype=np.float32) / 255
    np.testing.assert_allclose(image[:, :, 0].mean(dim=1).numpy(), pad_rgb, atol=1e-6)


def test_pixel_scalings_agree(pets_shards):
    unit, _ = _validation([pets_shards])[0]
    normalised, _ = _validation([pets_shards], pixel_scaling="imagenet")[0]
    mean = torch.tensor(IMAGENET_MEAN_RGB).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD_RGB).view(3, 1, 1)
    torch.testing.assert_close(normalised, (unit - mean) / std)


def test_training_items_are_deterministic_per_key_and_boxes_stay_inside(pets_shards):
    dataset = _training([pets_shards], seed=3)
    key = SampleKey(index=1, epoch=2, draw=5)
    first_image, first = dataset[key]
    again_image, again = dataset[key]
    torch.testing.assert_close(first_image, again_image)
    torch.testing.assert_close(first["boxes"], again["boxes"])
    other_image, _ = dataset[SampleKey(index=1, epoch=3, draw=5)]
    assert not torch.equal(first_image, other_image)
    for draw in range(6):
        image, target = dataset[SampleKey(index=draw % len(dataset), epoch=0, draw=draw)]
        boxes = target["boxes"]
        assert image.shape == (3, *INPUT_SIZE)
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= INPUT_SIZE[1]).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= INPUT_SIZE[0]).all()
        count = len(boxes)
        assert target["ignore"].shape == target["identities"].shape == (count,)
        assert target["embeddings"].shape == (count, 16)


def test_loader_batches_with_the_draw_stream_and_collate(pets_shards):
    sources = [ShardSource(pets_shards)]
    dataset = _training(sources)
    selection, _ = select_images(dataset, sources)
    stream = DrawStream(selection, seed=1)
    batches = iter(DataLoader(dataset, batch_size=2, sampler=stream, collate_fn=collate))
    images, targets = next(batches)
    assert images.shape == (2, 3, *INPUT_SIZE) and len(targets) == 2
    assert all(t["boxes"].shape[1] == 4 for t in targets)
    assert [t["image_id"] for t in targets] == [stream.key_at(0).index, stream.key_at(1).index]


def test_draw_stream_follows_weights_per_source_and_reshuffles_each_epoch(pets_shards, pets_dir, tmp_path):
    small = write_pets_shard_dir(tmp_path / "small", pets_dir, frames=(133,), negative_frames=())
    sources = [ShardSource(pets_shards, weight=1.0), ShardSource(small, weight=3.0)]
    dataset = _training(sources)
    selection, _ = select_images(dataset, sources)
    stream = DrawStream(selection, seed=9)
    draws = np.array([stream.key_at(position).index for position in range(2000)])
    from_small = (draws >= dataset.source_sizes[0]).mean()
    assert abs(from_small - 0.75) < 0.05, "mixing weights are per source, not per image"
    assert len({tuple(stream.epoch_draws(epoch)) for epoch in range(5)}) > 1, "every epoch drew the same"
    np.testing.assert_array_equal(stream.epoch_draws(3), DrawStream(selection, seed=9).epoch_draws(3))


def test_identity_offsets_keep_sources_apart(pets_dir, tmp_path):
    first = write_pets_shard_dir(tmp_path / "a", pets_dir, frames=(133, 150), dataset_name="a")
    second = write_pets_shard_dir(tmp_path / "b", pets_dir, frames=(150, 200), dataset_name="b")
    dataset = _validation([first, second])
    records_a = pets_records(pets_dir, (133, 150))
    records_b = pets_records(pets_dir, (150, 200))
    ids_a = np.unique(np.concatenate([r.identities for r in records_a]))
    ids_b = np.unique(np.concatenate([r.identities for r in records_b]))
    count_a, count_b = (ids_a >= 0).sum(), (ids_b >= 0).sum()
    assert dataset.num_identities == count_a + count_b
    assert dataset.identity_offsets == (0, count_a)
    seen_a = np.concatenate([dataset[i][1]["identities"].numpy() for i in range(3)])
    seen_b = np.concatenate([dataset[i][1]["identities"].numpy() for i in range(3, 6)])
    assert seen_a[seen_a >= 0].max() < count_a <= seen_b[seen_b >= 0].min()
    assert seen_b.max() == count_a + count_b - 1
    unknown_b = np.concatenate([r.identities for r in records_b]) == -1
    assert unknown_b.any()
    np.testing.assert_array_equal(seen_b == -1, unknown_b, err_msg="unknown identity must stay -1")
    # The same person (same local id) in both sources gets two distinct global ids.
    _, target_a = dataset[1]
    _, target_b = dataset[3]
    assert set(target_a["identities"].tolist()).isdisjoint(set(target_b["identities"].tolist()) - {-1})
    summaries = [s.as_dict() for s in dataset.source_summaries()]
    assert [s["dataset_name"] for s in summaries] == ["a", "b"]
    assert summaries[1]["identity_offset"] == count_a


def test_mixed_teachers_are_refused_naming_both_directories(pets_dir, tmp_path):
    first = write_pets_shard_dir(tmp_path / "osnet_a", pets_dir, frames=(133,), teacher_id="teacher-A")
    second = write_pets_shard_dir(tmp_path / "osnet_b", pets_dir, frames=(150,), teacher_id="teacher-B")
    with pytest.raises(StudentDataError, match="different teachers") as caught:
        _training([first, second])
    assert str(first) in str(caught.value) and str(second) in str(caught.value)


@pytest.mark.parametrize(
    "image_path,reason",
    [
        ("../PETS09-S2L1-half1/img1/000133.jpg", r"uses '\.\.'"),
        ("img1/../../PETS09-S2L1-half1/img1/000133.jpg", r"uses '\.\.'"),
        ("/etc/passwd", "not relative"),
    ],
)
def test_path_escaping_the_dataset_root_is_refused(pets_dir, tmp_path, image_path, reason):
    records = pets_records(pets_dir, (133,), ())
    escaping = [dataclasses.replace(records[0], image=image_path)]
    shards = write_shard_dir(tmp_path / "escape", escaping, dataset_root=pets_dir)
    with pytest.raises(StudentDataError, match=reason) as caught:
        _validation([shards])
    assert str(shards) in str(caught.value)


def test_corrupt_and_missing_images_name_the_file(pets_dir, tmp_path):
    root = tmp_path / "images"
    (root / "img1").mkdir(parents=True)
    for frame in (133, 150):
        shutil.copy(pets_dir / "img1" / f"{frame:06d}.jpg", root / "img1")
    (root / "img1" / "000150.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg" * 10)
    shards = write_pets_shard_dir(tmp_path / "shards", pets_dir, frames=(133, 150), negative_frames=(300,))
    dataset = _validation([ShardSource(shards, dataset_root=root)])
    image, _ = dataset[0]  # the override root is used for the intact copy
    assert image.shape == (3, *INPUT_SIZE)
    with pytest.raises(StudentDataError, match=r"000150\.jpg.*cannot decode"):
        dataset[1]
    with pytest.raises(StudentDataError, match=r"000300\.jpg.*missing"):
        dataset[2]


def test_missing_dataset_root_is_reported_up_front(pets_shards, tmp_path):
    with pytest.raises(StudentDataError, match="does not exist"):
        _validation([ShardSource(pets_shards, dataset_root=tmp_path / "nowhere")])


def test_source_weight_must_be_positive(pets_shards):
    with pytest.raises(ConfigError, match="weight"):
        ShardSource(pets_shards, weight=0.0)


def test_reduced_jpeg_decode_gives_the_same_targets_and_nearly_the_same_pixels(mot17_mini_dir, tmp_path):
    sequence = mot17_mini_dir / "MOT17-04-FRCNN"
    records = mot17_records(sequence, (1,))
    shards = write_shard_dir(tmp_path / "mot", records, dataset_root=sequence, dataset_name="mot17")
    for mode, key in (("validation", 0), ("train", SampleKey(0, 0, 0)), ("train", SampleKey(0, 1, 7))):
        reduced = StudentDataset([shards], DatasetOptions(input_size=INPUT_SIZE, mode=mode))
        full = StudentDataset(
            [shards], DatasetOptions(input_size=INPUT_SIZE, mode=mode, reduced_decode=False)
        )
        reduced_image, reduced_target = reduced[key]
        full_image, full_target = full[key]
        torch.testing.assert_close(reduced_target["boxes"], full_target["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(reduced_target["identities"], full_target["identities"])
        assert reduced_target["placement"] == full_target["placement"]
        assert (reduced_image - full_image).abs().mean() < 3 / 255, mode
        if mode == "validation":
            back = reduced_target["placement"].to_source(reduced_target["boxes"].numpy())
            np.testing.assert_allclose(back, records[0].boxes, atol=1.0)
