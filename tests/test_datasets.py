"""Dataset manifests and readers, on the real shared data and fixtures built from it."""

from __future__ import annotations

import json
import re
import shutil
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.datasets import (
    DatasetManifest,
    DatasetWarning,
    ReaderStats,
    available_datasets,
    check_images_exist,
    dataset_fingerprint,
    load_manifest,
    read_image_header,
    read_records,
    resolve_root,
)
from pipeline.errors import (
    AnnotationError,
    DatasetNotFoundError,
    EmptyDatasetError,
    MissingImagesError,
    PipelineError,
)
from pipeline.records import ImageRecord

MOT17_SIZE = (1920, 1080)
PETS_SIZE = (768, 576)
ISSUE_DATASETS = {
    "crowdhuman", "citypersons", "eth", "caltech", "cuhksysu", "prw",
    "mot15", "mot16", "mot17", "mot20", "mot17-mini", "pets09-s2l1-half1",
}  # fmt: skip


# ---------------------------------------------------------------- helpers


@contextmanager
def no_dataset_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        yield


def read_quietly(
    manifest: DatasetManifest, split: str | None, root: Path
) -> tuple[list[ImageRecord], ReaderStats]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        return read_records(manifest, split, root)


def load_gt(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", ndmin=2)


def clipped_xyxy(xywh: np.ndarray, width: int, height: int) -> np.ndarray:
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:4]], axis=1)
    return np.clip(xyxy, 0, [width, height, width, height])


def outside_image(xywh: np.ndarray, width: int, height: int) -> np.ndarray:
    x1, y1 = xywh[:, 0], xywh[:, 1]
    return (x1 < 0) | (y1 < 0) | (x1 + xywh[:, 2] > width) | (y1 + xywh[:, 3] > height)


def write_manifest(tmp_path: Path, name: str, text: str) -> DatasetManifest:
    folder = tmp_path / "manifests"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return load_manifest(path)


SEQUENCE_MANIFEST = """\
format: motchallenge
description: a test sequence
root: {default: "${TDT_TEST_SEQUENCE_BASE:-.}/seq", env: TDT_TEST_SEQUENCE_ROOT}
has_identities: true
options: {gt_format: mot15}
default_split: all
splits:
  all: {sequences: ["."]}
  late: {sequences: ["."], frames: [500, 600]}
source: {url: https://example.org/, layout: "gt/gt.txt", instructions: "none"}
"""


def make_sequence(
    tmp_path: Path, pets_dir: Path, frames: list[int], gt_lines: list[str], seq_length: int
) -> Path:
    """A MOT15-format sequence at tmp_path/seq with symlinks to real PETS frames."""
    sequence = tmp_path / "seq"
    (sequence / "img1").mkdir(parents=True)
    (sequence / "gt").mkdir()
    for frame in frames:
        name = f"{frame:06d}.jpg"
        (sequence / "img1" / name).symlink_to(pets_dir / "img1" / name)
    (sequence / "gt" / "gt.txt").write_text("".join(line + "\n" for line in gt_lines))
    (sequence / "seqinfo.ini").write_text(
        "[Sequence]\nname=test-seq\nimDir=img1\nframeRate=7\n"
        f"seqLength={seq_length}\nimWidth=768\nimHeight=576\nimExt=.jpg\n"
    )
    return sequence


def pets_gt_lines(pets_dir: Path, frames: set[int]) -> list[str]:
    lines = (pets_dir / "gt" / "gt.txt").read_text().splitlines()
    return [line for line in lines if int(line.split(",")[0]) in frames]


# ---------------------------------------------------------------- manifests


def test_every_manifest_loads() -> None:
    names = available_datasets()
    assert set(names) >= ISSUE_DATASETS
    env_vars = []
    for name in names:
        manifest = load_manifest(name)
        assert manifest.name == name
        assert manifest.default_split in manifest.splits
        assert manifest.source.url.startswith("http")
        assert manifest.root_env.startswith("TDT_")
        assert manifest.root_env in manifest.how_to_get()
        env_vars.append(manifest.root_env)
    assert len(set(env_vars)) == len(env_vars), "each dataset needs its own root variable"
    assert not load_manifest("crowdhuman").has_identities
    assert load_manifest("prw").has_identities


def test_root_comes_from_override_then_env_then_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_data: Path
) -> None:
    manifest = load_manifest("pets09-s2l1-half1")
    monkeypatch.delenv(manifest.root_env, raising=False)
    monkeypatch.setenv("TDT_SHARED_DATA", str(shared_data))
    assert resolve_root(manifest) == (shared_data / "PETS09-S2L1-half1").resolve()
    from_env, from_flag = tmp_path / "env", tmp_path / "flag"
    from_env.mkdir()
    from_flag.mkdir()
    monkeypatch.setenv(manifest.root_env, str(from_env))
    assert resolve_root(manifest) == from_env.resolve()
    assert resolve_root(manifest, str(from_flag)) == from_flag.resolve()


def test_unknown_dataset_name_lists_the_available_ones() -> None:
    with pytest.raises(DatasetNotFoundError, match=r"unknown dataset 'no-such-set'.*crowdhuman"):
        load_manifest("no-such-set")


def test_missing_root_says_where_to_get_the_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    manifest = load_manifest("crowdhuman")
    monkeypatch.delenv("TDT_CROWDHUMAN_ROOT", raising=False)
    monkeypatch.setenv("TDT_DATA", str(tmp_path / "nothing-here"))
    with pytest.raises(DatasetNotFoundError) as caught:
        read_records(manifest)
    message = str(caught.value)
    for expected in (
        str(tmp_path / "nothing-here" / "CrowdHuman"),
        "https://www.crowdhuman.org/",
        "Images/<ID>.jpg",
        "annotation_train.odgt",
        "--root",
        "TDT_CROWDHUMAN_ROOT",
    ):
        assert expected in message


def test_unknown_split_is_refused(pets_dir: Path) -> None:
    with pytest.raises(PipelineError, match=r"no split 'test'.*train, val, all"):
        read_records(load_manifest("pets09-s2l1-half1"), "test", pets_dir)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('sequences: ["."]', None),
        ('sequences: ["../elsewhere"]', r"'\.\.'"),
        ('sequences: ["/data/seq"]', r"absolute path"),
        ('sequences: ["."], shards: 3', r"splits\.all: unknown key\(s\) shards; known keys: sequences"),
        (
            'sequences: ["."], annotations: [a.odgt]',
            r"keys \['annotations'\] do not apply to format motchallenge",
        ),
        ('sequences: ["."], frames: [5, 1]', r"first <= last"),
        ('sequences: ["."], frames: [1, 2], frame_fraction: [0, 1]', r"frames or frame_fraction, not both"),
        ('sequences: ["."], frames: [1, true]', r"splits\.all\.frames.*expected an integer, got True"),
        ("sequences: []", r"splits\.all\.sequences must be a non-empty list"),
    ],
)
def test_manifest_is_validated(tmp_path: Path, change: str, message: str | None) -> None:
    text = SEQUENCE_MANIFEST.replace('all: {sequences: ["."]}', "all: {" + change + "}")
    if message is None:
        assert write_manifest(tmp_path, "ok", text).splits["all"].sequences == (".",)
    else:
        with pytest.raises(PipelineError, match=message):
            write_manifest(tmp_path, "bad", text)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("has_identities: true", "has_identities: yes please", r"has_identities: expected true or false"),
        ("default_split: all", "default_split: test", r"default_split 'test' is not one of the splits"),
        (
            "options: {gt_format: mot15}",
            "options: {gt_format: mot99}",
            r"gt_format='mot99' must be mot15 or mot17",
        ),
        (
            "options: {gt_format: mot15}",
            "options: {box_field: fbox}",
            r"'box_field' does not apply to format",
        ),
        ("format: motchallenge", "format: kitti", r"manifest\.format: 'kitti' is not one of"),
        (
            "description: a test sequence",
            "description: a\ndescription: b",
            r"bad\.yaml.*duplicate key 'description'",
        ),
        ("env: TDT_TEST_SEQUENCE_ROOT", "env: 'not a name'", r"'not a name' is not an environment variable"),
        ("has_identities: true", "has_identities: true\nshards: 3", r"manifest: unknown key\(s\) shards"),
    ],
)
def test_manifest_document_errors_name_the_file_and_key(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in SEQUENCE_MANIFEST
    with pytest.raises(PipelineError, match=message) as caught:
        write_manifest(tmp_path, "bad", SEQUENCE_MANIFEST.replace(old, new))
    assert str(tmp_path / "manifests" / "bad.yaml") in str(caught.value)


def test_root_default_follows_the_one_path_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A default starting with a fallback is relative to the folder holding manifests/; others to the cwd."""
    (tmp_path / "seq").mkdir()
    manifest = write_manifest(tmp_path, "seq", SEQUENCE_MANIFEST)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "mine" / "seq").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("TDT_TEST_SEQUENCE_ROOT", raising=False)
    monkeypatch.delenv("TDT_TEST_SEQUENCE_BASE", raising=False)
    assert resolve_root(manifest) == (tmp_path / "seq").resolve()
    monkeypatch.setenv("TDT_TEST_SEQUENCE_BASE", "mine")
    assert resolve_root(manifest) == (elsewhere / "mine" / "seq").resolve()
    (elsewhere / "plain").mkdir()
    plain = write_manifest(
        tmp_path, "plain", SEQUENCE_MANIFEST.replace('"${TDT_TEST_SEQUENCE_BASE:-.}/seq"', "plain")
    )
    assert resolve_root(plain) == (elsewhere / "plain").resolve()
    needs = write_manifest(tmp_path, "needs", SEQUENCE_MANIFEST.replace(":-.}", "}"))
    monkeypatch.delenv("TDT_TEST_SEQUENCE_BASE")
    with pytest.raises(
        PipelineError, match=r"needs\.yaml: root\.default .* needs \$\{TDT_TEST_SEQUENCE_BASE\}"
    ):
        resolve_root(needs)


# ---------------------------------------------------------------- MOTChallenge, real data


def test_pets_all_frames_match_gt(pets_dir: Path) -> None:
    with no_dataset_warnings():
        records, stats = read_records(load_manifest("pets09-s2l1-half1"), "all", pets_dir)
    gt = load_gt(pets_dir / "gt" / "gt.txt")
    assert (stats.images, stats.boxes, stats.ignored, stats.clipped) == (397, 2387, 0, 0)
    assert stats.warnings == ()
    assert json.loads(json.dumps(stats.as_dict()))["boxes"] == 2387
    assert "2387 boxes" in stats.summary()
    assert [r.frame for r in records] == list(range(1, 398))
    for record in records:
        rows = gt[gt[:, 0] == record.frame]
        assert record.image == f"img1/{record.frame:06d}.jpg"
        assert record.sequence == "PETS09-S2L1-half1"
        assert (record.width, record.height) == PETS_SIZE
        np.testing.assert_array_equal(record.identities, rows[:, 1].astype(np.int64))
        np.testing.assert_allclose(record.boxes, clipped_xyxy(rows[:, 2:6], *PETS_SIZE), atol=1e-3)
        assert not record.ignore.any()


@pytest.mark.parametrize(
    ("split", "images", "boxes", "first", "last"),
    [("train", 300, 1874, 1, 300), ("val", 97, 513, 301, 397)],
)
def test_pets_frame_range_splits(
    pets_dir: Path, split: str, images: int, boxes: int, first: int, last: int
) -> None:
    records, stats = read_records(load_manifest("pets09-s2l1-half1"), split, pets_dir)
    assert (stats.images, stats.boxes) == (images, boxes)
    assert (records[0].frame, records[-1].frame) == (first, last)


def test_mot17_mini_keeps_pedestrians_and_warns_about_seqinfo(mot17_mini_dir: Path) -> None:
    manifest = load_manifest("mot17-mini")
    with pytest.warns(DatasetWarning) as caught:
        records, stats = read_records(manifest, "all", mot17_mini_dir)
    messages = [str(w.message) for w in caught]
    assert any(re.search(r"MOT17-02-FRCNN: seqinfo.ini claims 600 frames.* 4 frame", m) for m in messages)
    assert any(re.search(r"MOT17-04-FRCNN: seqinfo.ini claims 1050 frames.* 8 frame", m) for m in messages)
    assert len(stats.warnings) == 2
    assert [(r.sequence, r.frame) for r in records] == [
        *(("MOT17-02-FRCNN", f) for f in range(1, 5)),
        *(("MOT17-04-FRCNN", f) for f in range(1, 9)),
    ]

    identity_offset, expected_clipped, expected_pedestrians, expected_ignored = 0, 0, 0, 0
    for sequence in ("MOT17-02-FRCNN", "MOT17-04-FRCNN"):
        gt = load_gt(mot17_mini_dir / sequence / "gt" / "gt.txt")
        for record in (r for r in records if r.sequence == sequence):
            rows = gt[gt[:, 0] == record.frame]
            # distractor classes and mark-0 pedestrians are ignore regions; cars, occluders, ... background
            pedestrian = (rows[:, 6] == 1) & (rows[:, 7] == 1)
            ignored = np.isin(rows[:, 7], [2, 7, 8, 12]) | ((rows[:, 6] == 0) & (rows[:, 7] == 1))
            rows, pedestrian = rows[pedestrian | ignored], pedestrian[pedestrian | ignored]
            assert record.image == f"{sequence}/img1/{record.frame:06d}.jpg"
            assert (record.width, record.height) == MOT17_SIZE
            np.testing.assert_allclose(record.boxes, clipped_xyxy(rows[:, 2:6], *MOT17_SIZE), atol=1e-3)
            np.testing.assert_array_equal(record.ignore, ~pedestrian)
            expected_ids = np.where(pedestrian, rows[:, 1].astype(np.int64) + identity_offset, -1)
            np.testing.assert_array_equal(record.identities, expected_ids)
            expected_clipped += int(outside_image(rows[:, 2:6], *MOT17_SIZE).sum())
            expected_pedestrians += int(pedestrian.sum())
            expected_ignored += int((~pedestrian).sum())
        identity_offset += int(gt[:, 1].max())
    # of the 156 + 792 gt rows, 444 are cars, bicycles and occluders: background, not boxes
    assert stats.boxes == 156 + 792 - 444
    assert stats.ignored == expected_ignored == 80
    assert stats.boxes - stats.ignored == expected_pedestrians == 88 + 336
    assert stats.clipped == expected_clipped > 0
    assert stats.degenerate == 0


def test_fingerprint_is_stable_and_depends_on_the_split(pets_dir: Path) -> None:
    manifest = load_manifest("pets09-s2l1-half1")
    first = dataset_fingerprint(manifest, "all", pets_dir)
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert dataset_fingerprint(manifest, "all", pets_dir) == first
    assert dataset_fingerprint(manifest, "train", pets_dir) != first


def test_image_header_matches_decoded_size(pets_dir: Path, mot17_mini_dir: Path) -> None:
    for path in (pets_dir / "img1" / "000001.jpg", mot17_mini_dir / "MOT17-04-FRCNN/img1/000008.jpg"):
        header = read_image_header(path)
        assert (header.height, header.width) == cv2.imread(str(path)).shape[:2]
        assert header.exif_orientation == 1


# ---------------------------------------------------------------- MOTChallenge, bad input


def test_mot_malformed_gt_line_names_file_and_line(tmp_path: Path, pets_dir: Path) -> None:
    lines = pets_gt_lines(pets_dir, {1})
    lines.insert(2, "1,7,300,abc,30,80,1,-1,-1,-1")
    make_sequence(tmp_path, pets_dir, [1], lines, seq_length=1)
    manifest = write_manifest(tmp_path, "seq", SEQUENCE_MANIFEST)
    with pytest.raises(AnnotationError, match=r"seq/gt/gt\.txt:3: .*abc"):
        read_records(manifest)


def test_mot_short_gt_line_names_file_and_line(tmp_path: Path, pets_dir: Path) -> None:
    make_sequence(tmp_path, pets_dir, [1], ["1,7,300,200,30"], seq_length=1)
    manifest = write_manifest(tmp_path, "seq", SEQUENCE_MANIFEST)
    with pytest.raises(AnnotationError, match=r"gt\.txt:1: expected frame,id,x,y,w,h"):
        read_records(manifest)


def test_mot_overclaimed_sequence_skips_gt_without_images(tmp_path: Path, pets_dir: Path) -> None:
    # images for frames 1-4, gt for frames 1-3 and 5-6, seqinfo claims 10 frames
    lines = pets_gt_lines(pets_dir, {1, 2, 3, 5, 6})
    make_sequence(tmp_path, pets_dir, [1, 2, 3, 4], lines, seq_length=10)
    manifest = write_manifest(tmp_path, "seq", SEQUENCE_MANIFEST)
    with pytest.warns(DatasetWarning) as caught:
        records, stats = read_records(manifest)
    messages = " | ".join(str(w.message) for w in caught)
    assert "seqinfo.ini claims 10 frames but img1/ holds 4" in messages
    skipped = len(pets_gt_lines(pets_dir, {5, 6}))
    assert f"skipped {skipped} gt rows on 2 frames" in messages
    assert stats.skipped_gt_rows == skipped
    assert [r.frame for r in records] == [1, 2, 3, 4]
    assert records[3].num_boxes == 0 and stats.negative_images == 1


@pytest.mark.parametrize(
    ("gt_format", "ignored_classes"), [("mot17", [2, 7, 8, 12]), ("mot20", [2, 6, 7, 8, 12])]
)
def test_mot17_and_mot20_classes_are_people_ignore_regions_or_background(
    tmp_path: Path, pets_dir: Path, gt_format: str, ignored_classes: list[int]
) -> None:
    # one row per MOTChallenge class (1..13) plus a mark-0 pedestrian, in MOT17 columns
    lines = [f"1,{cls},{20 * cls},100,30,80,1,{cls},1.0" for cls in range(1, 14)]
    lines.append("1,20,400,300,30,80,0,1,0.5")
    make_sequence(tmp_path, pets_dir, [1], lines, seq_length=1)
    manifest = write_manifest(
        tmp_path, "seq", SEQUENCE_MANIFEST.replace("{gt_format: mot15}", f"{{gt_format: {gt_format}}}")
    )
    (record,), stats = read_records(manifest)
    kept_x = (record.boxes[:, 0] / 20).round().astype(int).tolist()
    assert kept_x == [1, *ignored_classes, 20], "cars, bicycles, occluders, crowds: no box"
    assert record.ignore.tolist() == [False] + [True] * (len(ignored_classes) + 1)
    assert record.identities.tolist() == [1] + [-1] * (len(ignored_classes) + 1)
    assert (stats.boxes, stats.ignored) == (len(ignored_classes) + 2, len(ignored_classes) + 1)


def test_mot_sequence_without_images_is_an_error(tmp_path: Path, pets_dir: Path) -> None:
    make_sequence(tmp_path, pets_dir, [], pets_gt_lines(pets_dir, {1}), seq_length=397)
    manifest = write_manifest(tmp_path, "seq", SEQUENCE_MANIFEST)
    with pytest.raises(MissingImagesError, match=r"img1 holds no '\*\.jpg'.*claims 397"):
        read_records(manifest)


def test_mot_seqinfo_image_dir_cannot_escape(tmp_path: Path, pets_dir: Path) -> None:
    sequence = make_sequence(tmp_path, pets_dir, [1], pets_gt_lines(pets_dir, {1}), seq_length=1)
    seqinfo = sequence / "seqinfo.ini"
    seqinfo.write_text(seqinfo.read_text().replace("imDir=img1", "imDir=../../img1"))
    manifest = write_manifest(tmp_path, "seq", SEQUENCE_MANIFEST)
    with pytest.raises(AnnotationError, match=r"seqinfo\.ini: imDir.*'\.\.'"):
        read_records(manifest)


def test_empty_split_is_an_error(tmp_path: Path, pets_dir: Path) -> None:
    make_sequence(tmp_path, pets_dir, [1, 2], pets_gt_lines(pets_dir, {1, 2}), seq_length=2)
    manifest = write_manifest(tmp_path, "seq", SEQUENCE_MANIFEST)
    with pytest.raises(EmptyDatasetError, match="split 'late'"):
        read_records(manifest, "late")


def test_fingerprint_follows_annotation_bytes_not_location(tmp_path: Path, pets_dir: Path) -> None:
    sequence = make_sequence(tmp_path, pets_dir, [1, 2], pets_gt_lines(pets_dir, {1, 2}), 2)
    manifest = write_manifest(tmp_path, "seq", SEQUENCE_MANIFEST)
    original = dataset_fingerprint(manifest)
    moved = tmp_path / "moved"
    shutil.copytree(sequence, moved, symlinks=True)
    assert dataset_fingerprint(manifest, None, moved) == original

    gt = sequence / "gt" / "gt.txt"
    text = gt.read_text()
    gt.write_text(text.replace(",499,", ",498,", 1))
    assert dataset_fingerprint(manifest) != original
    gt.write_text(text)
    assert dataset_fingerprint(manifest) == original


# ---------------------------------------------------------------- CrowdHuman fixture


def crowdhuman_id(frame: int) -> str:
    return f"2732{frame:02d},c9db000d5146c{frame:02d}"


def make_crowdhuman(tmp_path: Path, mot17_mini_dir: Path) -> tuple[Path, list[dict]]:
    """CrowdHuman layout from MOT17-02 frames: class 1 → person, class 7 → mask, every
    fourth person extra.ignore=1."""
    root = tmp_path / "CrowdHuman"
    (root / "Images").mkdir(parents=True)
    sequence = mot17_mini_dir / "MOT17-02-FRCNN"
    gt = load_gt(sequence / "gt" / "gt.txt")
    entries = []
    for frame in range(1, 5):
        (root / "Images" / f"{crowdhuman_id(frame)}.jpg").symlink_to(sequence / "img1" / f"{frame:06d}.jpg")
        gtboxes = []
        for row in gt[(gt[:, 0] == frame) & np.isin(gt[:, 7], [1, 7])]:
            box = [int(v) for v in row[2:6]]
            tag = "person" if row[7] == 1 else "mask"
            extra = {"box_id": len(gtboxes), "occ": 0}
            if tag == "person" and len(gtboxes) % 4 == 0:
                extra["ignore"] = 1
            gtboxes.append({"tag": tag, "fbox": box, "vbox": box, "hbox": box, "extra": extra})
        entries.append({"ID": crowdhuman_id(frame), "gtboxes": gtboxes})
    write_odgt(root, entries)
    return root, entries


def write_odgt(root: Path, entries: list[dict], extra_lines: tuple[str, ...] = ()) -> None:
    lines = [json.dumps(entry) for entry in entries] + list(extra_lines)
    (root / "annotation_train.odgt").write_text("\n".join(lines) + "\n")


def test_crowdhuman_reader_on_real_frames(tmp_path: Path, mot17_mini_dir: Path) -> None:
    root, entries = make_crowdhuman(tmp_path, mot17_mini_dir)
    with no_dataset_warnings():
        records, stats = read_records(load_manifest("crowdhuman"), "train", root)
    assert len(records) == 4
    expected_clipped = 0
    for record, entry in zip(records, entries, strict=True):
        xywh = np.array([box["fbox"] for box in entry["gtboxes"]], dtype=np.float64)
        ignore = [box["tag"] == "mask" or box["extra"].get("ignore") == 1 for box in entry["gtboxes"]]
        assert record.image == f"Images/{entry['ID']}.jpg"
        assert (record.width, record.height) == MOT17_SIZE
        np.testing.assert_allclose(record.boxes, clipped_xyxy(xywh, *MOT17_SIZE), atol=1e-3)
        np.testing.assert_array_equal(record.ignore, ignore)
        assert (record.identities == -1).all()
        expected_clipped += int(outside_image(xywh, *MOT17_SIZE).sum())
    assert stats.clipped == expected_clipped
    assert 0 < stats.ignored < stats.boxes
    check_images_exist(records, root)


def test_crowdhuman_clips_and_ignores_tiny_boxes(tmp_path: Path, mot17_mini_dir: Path) -> None:
    root, _ = make_crowdhuman(tmp_path, mot17_mini_dir)
    boxes = [
        [-50, 100, 200, 300],  # crosses the left edge: clipped
        [1900, 500, 100, 200],  # crosses the right edge: clipped
        [100, 100, 1, 50],  # 1 px wide: degenerate
        [5000, 100, 50, 50],  # entirely outside: clipped and degenerate
        [300, 300, 40, 90],  # normal
    ]
    entry = {"ID": crowdhuman_id(1), "gtboxes": [{"tag": "person", "fbox": b} for b in boxes]}
    write_odgt(root, [entry])
    records, stats = read_records(load_manifest("crowdhuman"), "train", root)
    (record,) = records
    np.testing.assert_allclose(record.boxes[0], [0, 100, 150, 400])
    np.testing.assert_allclose(record.boxes[1], [1900, 500, 1920, 700])
    np.testing.assert_array_equal(record.ignore, [False, False, True, True, False])
    assert (stats.clipped, stats.degenerate, stats.ignored) == (3, 2, 2)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"ID": "x", "gtboxes": [', r"annotation_train\.odgt:5: not valid JSON"),
        ('{"ID": "x", "gtboxes": [{"tag": "person"}]}', r"odgt:5: gtboxes\[0\]: 'fbox' must be"),
        ('{"gtboxes": []}', r"odgt:5: expected an object with a string 'ID'"),
    ],
)
def test_crowdhuman_malformed_line_names_file_and_line(
    tmp_path: Path, mot17_mini_dir: Path, bad_line: str, message: str
) -> None:
    root, entries = make_crowdhuman(tmp_path, mot17_mini_dir)
    write_odgt(root, entries, extra_lines=(bad_line,))
    with pytest.raises(AnnotationError, match=message):
        read_records(load_manifest("crowdhuman"), "train", root)


def test_crowdhuman_missing_images_lists_first_and_count(tmp_path: Path, mot17_mini_dir: Path) -> None:
    root, entries = make_crowdhuman(tmp_path, mot17_mini_dir)
    absent = [{"ID": f"absent-{i}", "gtboxes": []} for i in range(7)]
    write_odgt(root, entries + absent)
    with pytest.raises(MissingImagesError) as caught:
        read_records(load_manifest("crowdhuman"), "train", root)
    message = str(caught.value)
    assert message.startswith("7 of 11 images")
    assert "Images/absent-0.jpg" in message and "Images/absent-4.jpg" in message
    assert "absent-5" not in message and "and 2 more" in message


def test_crowdhuman_id_cannot_escape_the_root(tmp_path: Path, mot17_mini_dir: Path) -> None:
    root, entries = make_crowdhuman(tmp_path, mot17_mini_dir)
    write_odgt(root, [{"ID": "../../../etc/passwd", "gtboxes": []}, *entries])
    with pytest.raises(AnnotationError, match=r"odgt:1: ID: path .*'\.\.' and would leave"):
        read_records(load_manifest("crowdhuman"), "train", root)


def test_exif_orientation_is_reported(tmp_path: Path, mot17_mini_dir: Path) -> None:
    root, entries = make_crowdhuman(tmp_path, mot17_mini_dir)
    image = root / "Images" / f"{entries[0]['ID']}.jpg"
    data = image.read_bytes()
    image.unlink()
    image.write_bytes(data[:2] + exif_app1(orientation=6) + data[2:])
    header = read_image_header(image)
    assert (header.width, header.height, header.exif_orientation) == (*MOT17_SIZE, 6)
    # the trap this guards against: OpenCV rotates such images unless told not to
    assert cv2.imread(str(image)).shape[:2] == MOT17_SIZE
    with pytest.warns(DatasetWarning, match=r"1 images carry an EXIF orientation"):
        read_records(load_manifest("crowdhuman"), "train", root)


def exif_app1(orientation: int) -> bytes:
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def test_png_header_and_truncated_jpeg(tmp_path: Path, pets_dir: Path) -> None:
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), np.zeros((37, 53, 3), dtype=np.uint8))
    assert (read_image_header(path).width, read_image_header(path).height) == (53, 37)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((pets_dir / "img1" / "000001.jpg").read_bytes()[:40])
    with pytest.raises(PipelineError, match=r"truncated\.jpg: truncated JPEG"):
        read_image_header(truncated)


# ---------------------------------------------------------------- JDE fixture

JDE_SEQUENCE = "MOT17-04-FRCNN"
JDE_UNLABELLED_FRAME = 8


def jde_image(frame: int) -> str:
    return f"MOT17/images/train/{JDE_SEQUENCE}/img1/{frame:06d}.jpg"


def make_jde(tmp_path: Path, mot17_mini_dir: Path) -> tuple[Path, np.ndarray]:
    """MOT17-04 in the JDE layout, labels written as FairMOT's gen_labels does (pedestrians
    only); frame 8 has no label file."""
    root = tmp_path / "MIX"
    gt = load_gt(mot17_mini_dir / JDE_SEQUENCE / "gt" / "gt.txt")
    pedestrians = gt[(gt[:, 6] == 1) & (gt[:, 7] == 1)]
    width, height = MOT17_SIZE
    for frame in range(1, 9):
        image = root / jde_image(frame)
        image.parent.mkdir(parents=True, exist_ok=True)
        image.symlink_to(mot17_mini_dir / JDE_SEQUENCE / "img1" / f"{frame:06d}.jpg")
        if frame == JDE_UNLABELLED_FRAME:
            continue
        label = root / jde_image(frame).replace("images", "labels_with_ids").replace(".jpg", ".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            f"0 {int(r[1])} {(r[2] + r[4] / 2) / width:.6f} {(r[3] + r[5] / 2) / height:.6f} "
            f"{r[4] / width:.6f} {r[5] / height:.6f}\n"
            for r in pedestrians[pedestrians[:, 0] == frame]
        ]
        label.write_text("".join(lines))
    (root / "lists").mkdir()
    (root / "lists" / "mot17.train").write_text("".join(jde_image(f) + "\n" for f in range(1, 9)))
    return root, pedestrians


def test_jde_reader_on_real_frames(tmp_path: Path, mot17_mini_dir: Path) -> None:
    root, pedestrians = make_jde(tmp_path, mot17_mini_dir)
    with pytest.warns(DatasetWarning, match=r"1 images have no label file"):
        records, stats = read_records(load_manifest("mot17-jde"), "train", root)
    assert [r.image for r in records] == [jde_image(f) for f in range(1, 9)]
    for frame, record in enumerate(records, start=1):
        rows = pedestrians[pedestrians[:, 0] == frame]
        assert (record.width, record.height) == MOT17_SIZE
        if frame == JDE_UNLABELLED_FRAME:
            assert record.num_boxes == 0
            continue
        # 6 decimals of a normalised coordinate are ~0.002 px at 1920
        np.testing.assert_allclose(record.boxes, clipped_xyxy(rows[:, 2:6], *MOT17_SIZE), atol=0.01)
        np.testing.assert_array_equal(record.identities, rows[:, 1].astype(np.int64))
        assert not record.ignore.any()
    assert stats.negative_images == 1
    assert stats.identities == len(np.unique(pedestrians[pedestrians[:, 0] < 8][:, 1]))


def test_jde_without_identities_drops_them(tmp_path: Path, mot17_mini_dir: Path) -> None:
    root, _ = make_jde(tmp_path, mot17_mini_dir)
    (root / "lists" / "eth.train").write_text(jde_image(1) + "\n")
    records, stats = read_records(load_manifest("eth"), "train", root)
    assert records[0].num_boxes > 0 and (records[0].identities == -1).all()
    assert stats.identities == 0


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("0 5 0.5 0.5 0.1", r"expected 'class id cx cy w h' \(6 values\), got 5"),
        ("0 5 0.5 half 0.1 0.2", r"could not convert string to float: 'half'"),
        ("0 5 0.5 nan 0.1 0.2", r"non-finite value"),
        ("0 5.5 0.5 0.5 0.1 0.2", r"class and id must be integers"),
    ],
)
def test_jde_malformed_label_line_names_file_and_line(
    tmp_path: Path, mot17_mini_dir: Path, bad_line: str, message: str
) -> None:
    root, _ = make_jde(tmp_path, mot17_mini_dir)
    label = root / "MOT17/labels_with_ids/train/MOT17-04-FRCNN/img1/000003.txt"
    lines = label.read_text().splitlines()
    label.write_text("\n".join([lines[0], bad_line, *lines[1:]]) + "\n")
    with pytest.raises(AnnotationError, match=r"000003\.txt:2: " + message):
        read_records(load_manifest("mot17-jde"), "train", root)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("../outside/images/x.jpg", r"'\.\.' and would leave"),
        ("/etc/images/x.jpg", r"absolute path"),
        ("MOT17/img1/000001.jpg", r"no 'images' folder"),
    ],
)
def test_jde_list_paths_are_checked(tmp_path: Path, mot17_mini_dir: Path, line: str, message: str) -> None:
    root, _ = make_jde(tmp_path, mot17_mini_dir)
    list_file = root / "lists" / "mot17.train"
    list_file.write_text(jde_image(1) + "\n" + line + "\n")
    with pytest.raises(AnnotationError, match=r"mot17\.train:2: .*" + message):
        read_records(load_manifest("mot17-jde"), "train", root)


def test_jde_missing_images(tmp_path: Path, mot17_mini_dir: Path) -> None:
    root, _ = make_jde(tmp_path, mot17_mini_dir)
    (root / jde_image(2)).unlink()
    with pytest.raises(MissingImagesError, match=r"^1 of 8 images .*img1/000002\.jpg"):
        read_quietly(load_manifest("mot17-jde"), "train", root)


def test_jde_fingerprint_covers_label_files(tmp_path: Path, mot17_mini_dir: Path) -> None:
    root, _ = make_jde(tmp_path, mot17_mini_dir)
    manifest = load_manifest("mot17-jde")
    original = dataset_fingerprint(manifest, "train", root)
    label = root / "MOT17/labels_with_ids/train/MOT17-04-FRCNN/img1/000005.txt"
    label.write_text(label.read_text().replace("0 ", "0 1", 1))
    assert dataset_fingerprint(manifest, "train", root) != original


# ---------------------------------------------------------------- check_images_exist


def test_check_images_exist_lists_first_missing_and_count(pets_dir: Path) -> None:
    empty = np.zeros((0, 4))
    present = [ImageRecord(f"img1/{f:06d}.jpg", 768, 576, empty, [], []) for f in (1, 2)]
    absent = [ImageRecord(f"img1/{f:06d}.jpg", 768, 576, empty, [], []) for f in range(900, 908)]
    expected_bytes = sum((pets_dir / r.image).stat().st_size for r in present)
    assert check_images_exist(present + present, pets_dir) == expected_bytes
    with pytest.raises(MissingImagesError) as caught:
        check_images_exist(present + absent, pets_dir)
    message = str(caught.value)
    assert message.startswith("8 of 10 images")
    assert "img1/000900.jpg, img1/000901.jpg" in message and "and 3 more" in message
    assert "--root" in message
