"""Hostile or careless input (issue 15): nothing corrupt is trained on, evaluated or tracked silently.

Fixtures are small copies of the real PETS09 frames and shard directories built from them
(random embeddings, see student_fixtures): flipped shard bytes, NaN embeddings, manifest
entries and shard rows that point outside their directory, truncated JPEG / PNG / video
files, pickles that torch's weights-only loader refuses, and the small annotation, recipe
and checkpoint cases.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from student_fixtures import TINY_MODEL, write_pets_shard_dir

from pipeline.datasets import DatasetWarning, load_manifest, read_records
from pipeline.datasets.motchallenge import read_ground_truth
from pipeline.errors import AnnotationError
from pipeline.shards import ManifestError, open_shards, read_manifest, read_shard, write_shard
from pipeline.shards.manifest import sha256_file
from pipeline.verify import main as verify_main
from pipeline.verify import verify_directory
from student.checkpoint import CheckpointError, CheckpointKeeper, TrainingCheckpoint, load_checkpoint
from student.data import DatasetOptions, StudentDataError, StudentDataset, read_image
from student.families import build_student
from student.recipe import CONFIGS_DIR
from student.sources import ShardSource

REPO = Path(__file__).resolve().parents[1]
FIRST_SHARD = "shard-00000.parquet"
SECOND_SHARD = "shard-00001.parquet"


# ---- helpers ---------------------------------------------------------------------------------
def shard_error() -> type[Exception]:
    from pipeline.shards import ShardError

    return ShardError


def read_checked_image(path: Path) -> np.ndarray:
    from tdt.images import read_image as read_image_file

    return read_image_file(path)


def image_file_error() -> type[Exception]:
    from tdt.images import ImageFileError

    return ImageFileError


@pytest.fixture
def shards(pets_dir: Path, tmp_path: Path) -> Path:
    """Frames 133, 150, 200 | 250, 300 (negative) of PETS09 in three Parquet shards of two rows."""
    return write_pets_shard_dir(tmp_path / "shards", pets_dir)


def rewrite_shard(directory: Path, file: str, change, *, fix_manifest: bool) -> None:
    """Rewrite ``file`` with ``change(table, metadata)`` applied; with ``fix_manifest`` its
    checksum and size in the manifest follow, so only the content is wrong."""
    table, metadata = read_shard(directory / file)
    table, metadata = change(table, metadata)
    write_shard(directory / file, table, metadata, "parquet")
    if fix_manifest:
        path = directory / "manifest.json"
        data = json.loads(path.read_text())
        for entry in data["shards"]:
            if entry["file"] == file:
                entry["sha256"] = sha256_file(directory / file)
                entry["bytes"] = (directory / file).stat().st_size
        path.write_text(json.dumps(data))


def change_an_identity(table, metadata):
    table.identities[0] += 1000  # still decodes: a corrupted byte that a checksum alone can see
    return table, metadata


def poison_an_embedding(table, metadata):
    row = int(np.flatnonzero(~table.ignore)[0])
    table.embeddings[row, 3] = np.nan
    return table, metadata


def dataset_of(shards: Path, **options) -> StudentDataset:
    return StudentDataset([ShardSource(str(shards))], DatasetOptions(input_size=(128, 160), **options))


def train_cli(shards: Path, out: Path, weights: Path, *extra: str) -> list[str]:
    return [
        "--config", str(CONFIGS_DIR / "tiny.yaml"), "--shards", str(shards), "--val-shards", str(shards),
        "--out", str(out), "--backbone-weights", str(weights), "--max-steps", "1", "--threads", "1",
        "--quiet", *extra,
    ]  # fmt: skip


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


def truncated_copy(source: Path, destination: Path, keep: float = 0.6) -> Path:
    data = source.read_bytes()
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(data[: int(len(data) * keep)])
    return destination


def tiny_checkpoint(path: Path, *, poison: bool = False) -> Path:
    torch.manual_seed(0)
    model = build_student(TINY_MODEL, warn_if_random_backbone=False)
    state = model.state_dict()
    if poison:
        name = next(key for key, value in state.items() if value.is_floating_point())
        state[name] = torch.full_like(state[name], float("nan"))
    from student.checkpoint import save_checkpoint

    return save_checkpoint(
        path,
        TrainingCheckpoint(
            step=1, model_state=state, model_config=TINY_MODEL.to_dict(), teacher_id="test-teacher-0"
        ),
    )


# ---- 1. checksums and finite embeddings on read ---------------------------------------------
def test_training_refuses_a_shard_whose_bytes_changed_but_still_decode(
    shards, tmp_path, mobilenet_v2_features, capsys
):
    from student.train import main

    rewrite_shard(shards, SECOND_SHARD, change_an_identity, fix_manifest=False)
    read_shard(shards / SECOND_SHARD)  # it still decodes
    assert main(train_cli(shards, tmp_path / "run", mobilenet_v2_features)) == 2
    line = error_line(capsys.readouterr().err)
    assert str(shards / SECOND_SHARD) in line and "sha256" in line
    assert f"python -m pipeline.verify {shards}" in line
    assert not (tmp_path / "run" / "last.pt").exists()


def test_no_verify_skips_the_checksum_and_is_part_of_the_run_settings(shards, tmp_path):
    from student.train import build_parser, recipe_from_arguments

    rewrite_shard(shards, SECOND_SHARD, change_an_identity, fix_manifest=False)
    with pytest.raises(StudentDataError, match="sha256"):
        dataset_of(shards)
    assert len(dataset_of(shards, verify_checksums=False)) == 5
    arguments = ["--config", str(CONFIGS_DIR / "tiny.yaml"), "--shards", str(shards)]
    config, _ = recipe_from_arguments(build_parser().parse_args(arguments))
    assert config.run.verify_shards is True
    config, _ = recipe_from_arguments(build_parser().parse_args([*arguments, "--no-verify"]))
    assert config.run.verify_shards is False


def test_evaluation_refuses_a_modified_shard_unless_told_not_to_verify(shards, tmp_path, capsys):
    from student.evaluate import main

    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    rewrite_shard(shards, FIRST_SHARD, change_an_identity, fix_manifest=False)
    assert main(["--checkpoint", str(checkpoint), "--shards", str(shards), "--quiet"]) == 2
    line = error_line(capsys.readouterr().err)
    assert str(shards / FIRST_SHARD) in line and "pipeline.verify" in line
    out = tmp_path / "report.json"
    code = main(["--checkpoint", str(checkpoint), "--shards", str(shards), "--no-verify", "--quiet",
                 "--out", str(out)])  # fmt: skip
    assert code == 0 and out.is_file()


def test_a_nan_where_an_embedding_should_be_is_refused_naming_the_shard(shards):
    rewrite_shard(shards, SECOND_SHARD, poison_an_embedding, fix_manifest=True)
    for verify in (True, False):  # the finiteness check is cheap and always on
        with pytest.raises(StudentDataError, match=rf"{SECOND_SHARD}.*non-finite embedding"):
            dataset_of(shards, verify_checksums=verify)
    with pytest.raises(shard_error(), match="non-finite"):
        list(open_shards(shards))


def test_ignore_boxes_keep_their_nan_marker(shards):
    dataset = dataset_of(shards)
    record = dataset.record(1)  # frame 150 has an ignore box
    assert record.ignore.any()
    assert np.isnan(record.embeddings[record.ignore]).all()
    assert np.isfinite(record.embeddings[~record.ignore]).all()


# ---- 2. paths confined to their directory ------------------------------------------------------
@pytest.mark.parametrize("escape", ["../outside.parquet", "ABSOLUTE", "sub/../../outside.parquet"])
def test_manifest_entries_must_name_a_file_inside_the_shard_directory(shards, escape, capsys):
    outside = shards.parent / "outside.parquet"
    shutil.copy(shards / FIRST_SHARD, outside)  # a reader that followed the entry would read this
    name = str(outside) if escape == "ABSOLUTE" else escape
    path = shards / "manifest.json"
    data = json.loads(path.read_text())
    data["shards"][0]["file"] = name
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="inside the shard directory"):
        read_manifest(shards)
    with pytest.raises(shard_error()):
        open_shards(shards)
    assert verify_main([str(shards)]) == 1
    assert repr(name) in capsys.readouterr().out


def test_a_shard_that_is_a_link_out_of_the_directory_is_refused(shards, tmp_path):
    outside = tmp_path / "elsewhere" / SECOND_SHARD
    outside.parent.mkdir()
    shutil.move(shards / SECOND_SHARD, outside)
    (shards / SECOND_SHARD).symlink_to(outside)  # same bytes: the checksum alone would pass
    defects = verify_directory(shards)[0]
    assert [(d.shard, d.check) for d in defects] == [(SECOND_SHARD, "path")]
    assert str(outside) in defects[0].message
    with pytest.raises(shard_error(), match="outside the shard directory"):
        list(open_shards(shards))
    with pytest.raises(StudentDataError, match=rf"{SECOND_SHARD}.*outside the shard directory"):
        dataset_of(shards)


def test_verify_refuses_image_paths_that_leave_the_dataset_root(shards):
    def escape(table, metadata):
        return replace(table, images=["../../../etc/passwd", *table.images[1:]]), metadata

    rewrite_shard(shards, FIRST_SHARD, escape, fix_manifest=True)
    defects = verify_directory(shards)[0]
    assert [(d.shard, d.check) for d in defects] == [(FIRST_SHARD, "image-path")]
    assert "../../../etc/passwd" in defects[0].message


def test_verify_refuses_a_shard_of_another_teacher(shards):
    rewrite_shard(shards, FIRST_SHARD, lambda t, m: (t, {**m, "teacher_id": "other"}), fix_manifest=True)
    assert [(d.shard, d.check) for d in verify_directory(shards)[0]] == [(FIRST_SHARD, "teacher")]


# ---- 3. truncated images -----------------------------------------------------------------------
def test_truncated_jpeg_and_png_are_refused_where_images_are_read(pets_dir, tmp_path):
    frame = pets_dir / "img1" / "000001.jpg"
    image = read_checked_image(frame)
    assert image.shape == (576, 768, 3)
    jpeg = truncated_copy(frame, tmp_path / "cut.jpg")
    assert cv2.imread(str(jpeg)) is not None  # libjpeg fills the rest with grey and says nothing here
    with pytest.raises(image_file_error(), match=r"cut\.jpg: truncated JPEG"):
        read_checked_image(jpeg)
    png = tmp_path / "whole.png"
    cv2.imwrite(str(png), image[:64, :64])
    read_checked_image(png)
    # libpng already refuses a PNG cut short; the IEND check covers decoders that would not
    with pytest.raises(image_file_error(), match=r"cut\.png: (cannot decode|truncated PNG)"):
        read_checked_image(truncated_copy(png, tmp_path / "cut.png", keep=0.9))
    from tdt.images import truncation_problem

    assert truncation_problem(png) is None and truncation_problem(frame) is None
    assert "truncated PNG" in truncation_problem(truncated_copy(png, tmp_path / "no-end.png", keep=0.99))
    with pytest.raises(StudentDataError, match=r"cut\.jpg: truncated JPEG"):
        read_image(jpeg, 768, 576)


def test_a_trailer_after_the_end_of_image_marker_is_not_truncation(pets_dir, tmp_path):
    padded = tmp_path / "padded.jpg"
    for trailer in (b"\x00" * 100 + b"trailer", b"\x00" * 10_000):  # inside and past the first look
        padded.write_bytes((pets_dir / "img1" / "000001.jpg").read_bytes() + trailer)
        assert read_checked_image(padded).shape == (576, 768, 3)


def small_sequence(pets_dir: Path, root: Path, frames: int = 2) -> Path:
    """A copy of PETS09 frames 1..frames with their ground truth and a matching seqinfo.ini."""
    (root / "img1").mkdir(parents=True)
    (root / "gt").mkdir()
    for frame in range(1, frames + 1):
        shutil.copy(pets_dir / "img1" / f"{frame:06d}.jpg", root / "img1" / f"{frame:06d}.jpg")
    rows = [line for line in (pets_dir / "gt" / "gt.txt").read_text().splitlines() if line]
    (root / "gt" / "gt.txt").write_text(
        "\n".join(line for line in rows if int(line.split(",")[0]) <= frames) + "\n"
    )
    info = (pets_dir / "seqinfo.ini").read_text().replace("seqLength=397", f"seqLength={frames}")
    (root / "seqinfo.ini").write_text(info)
    return root


def test_distillation_stops_at_a_truncated_frame_naming_it(pets_dir, osnet_x0_25_msmt17, tmp_path, capsys):
    from pipeline.distill import main

    root = small_sequence(pets_dir, tmp_path / "seq")
    truncated_copy(pets_dir / "img1" / "000002.jpg", root / "img1" / "000002.jpg")
    code = main(["--dataset", "pets09-s2l1-half1", "--root", str(root), "--teacher", "osnet_x0_25",
                 "--teacher-weights", str(osnet_x0_25_msmt17), "--out", str(tmp_path / "out"),
                 "--workers", "0", "--quiet"])  # fmt: skip
    assert code == 2
    assert f"{root / 'img1' / '000002.jpg'}: truncated JPEG" in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_training_data_and_the_tracker_refuse_a_truncated_frame(pets_dir, shards, tmp_path):
    from tracker.sequence import SequenceError, open_sequence

    root = tmp_path / "root"
    shutil.copytree(pets_dir / "img1", root / "img1", ignore=lambda d, names: [n for n in names if
                    n not in {"000133.jpg", "000150.jpg", "000200.jpg", "000250.jpg", "000300.jpg"}])  # fmt: skip
    truncated_copy(pets_dir / "img1" / "000150.jpg", root / "img1" / "000150.jpg")
    dataset = StudentDataset(
        [ShardSource(str(shards), dataset_root=str(root))],
        DatasetOptions(input_size=(128, 160), mode="validation"),
    )
    dataset[0]
    with pytest.raises(StudentDataError, match=r"000150\.jpg: truncated JPEG"):
        dataset[1]
    sequence = open_sequence(root / "img1")
    with pytest.raises(SequenceError, match=r"000150\.jpg: truncated JPEG"):
        list(sequence.frames())


# ---- 4. unreadable shards during training / evaluation ----------------------------------------
def link_to_another_shard(shards: Path) -> None:
    (shards / SECOND_SHARD).unlink()
    (shards / SECOND_SHARD).symlink_to(shards / FIRST_SHARD)


def truncate_shard(shards: Path) -> None:
    path = shards / SECOND_SHARD
    path.write_bytes(path.read_bytes()[:-200])


@pytest.mark.parametrize(
    ("damage", "extra", "says"),
    [
        (lambda shards: (shards / SECOND_SHARD).unlink(), (), "missing"),
        (truncate_shard, (), "sha256"),
        (truncate_shard, ("--no-verify",), "cannot read"),
        (link_to_another_shard, (), "sha256"),
    ],
)
def test_an_unreadable_shard_is_one_line_with_the_fix_and_exit_2(
    shards, tmp_path, mobilenet_v2_features, capsys, damage, extra, says
):
    from student.train import main

    damage(shards)
    assert main(train_cli(shards, tmp_path / "run", mobilenet_v2_features, *extra)) == 2
    line = error_line(capsys.readouterr().err)
    assert str(shards / SECOND_SHARD) in line and says in line
    assert f"python -m pipeline.verify {shards}" in line and "pipeline.distill" in line


# ---- 5. videos that decode to nothing, or to less than announced --------------------------------
def write_avi(path: Path, image: np.ndarray, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 7, (image.shape[1], image.shape[0]))
    assert writer.isOpened()
    for _ in range(frames):
        writer.write(image)
    writer.release()
    return path


def test_a_video_without_a_decodable_frame_is_an_error(pets_dir, tmp_path):
    from tracker.sequence import SequenceError, open_sequence

    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image, but cv2 opens it as a one-frame image sequence\n")
    with pytest.raises(SequenceError, match=r"fake\.jpg: no frame could be decoded"):
        list(open_sequence(fake).frames())
    image = cv2.imread(str(pets_dir / "img1" / "000001.jpg"))
    video = write_avi(tmp_path / "clip.avi", image, 10)
    video.write_bytes(video.read_bytes()[:6000])  # the header survives, no frame does
    with pytest.raises(SequenceError, match=r"clip\.avi: no frame could be decoded"):
        list(open_sequence(video).frames())


def test_a_video_shorter_than_its_header_says_warns(pets_dir, tmp_path):
    from tracker.sequence import ShortVideoWarning, open_sequence

    image = cv2.imread(str(pets_dir / "img1" / "000001.jpg"))
    video = write_avi(tmp_path / "clip.avi", image, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShortVideoWarning)
        assert len(list(open_sequence(video).frames())) == 10
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    with pytest.warns(ShortVideoWarning, match=r"clip\.avi: the header announces 10 frames, \d decoded"):
        decoded = list(open_sequence(video).frames())
    assert 0 < len(decoded) < 10


def test_tracking_a_file_that_decodes_to_nothing_exits_2(tmp_path, capsys):
    from tracker.track import main

    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    code = main(["--input", str(fake), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"),
                 "--threads", "1", "--no-progress"])  # fmt: skip
    assert code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: ") and "no frame could be decoded" in last


# ---- 6. messages about pickles torch refuses ----------------------------------------------------
class NotAllowed:
    """A class torch's weights-only unpickler does not know."""


@pytest.mark.parametrize(
    ("payload", "needs"), [({"x": os.system}, "system"), ({"x": NotAllowed()}, "NotAllowed")]
)
def test_teacher_weights_that_need_full_unpickling_are_refused_as_such(tmp_path, payload, needs):
    from teacher.errors import TeacherError
    from teacher.weights import read_weights_file

    path = tmp_path / "weights.pth"
    torch.save(payload, path)
    with pytest.raises(TeacherError) as caught:
        read_weights_file(path, architecture="osnet_x0_25", trust_pickle=False)
    message = str(caught.value)
    assert "refused: this file needs full unpickling, which can run code" in message
    assert needs in message and "--trust-teacher-pickle" in message
    assert "corrupt" not in message


def test_a_checkpoint_that_needs_full_unpickling_is_refused_without_torchs_advice(tmp_path):
    path = tmp_path / "student.pt"
    torch.save({"kind": "tdt-student-checkpoint", "extra": NotAllowed()}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "refused: this file needs full unpickling, which can run code" in message
    assert "NotAllowed" in message
    assert "weights_only" not in message and "allowlist" not in message and "corrupt" not in message
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(300))
    with pytest.raises(CheckpointError, match="not a readable") as caught:
        load_checkpoint(garbage)
    assert "weights_only" not in str(caught.value)


# ---- 7. the small ones ----------------------------------------------------------------------------
def test_a_gt_identity_too_large_for_int64_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("1,3,10,10,20,40,1,-1,-1,-1\n2,99999999999999999999,10,10,20,40,1,-1,-1,-1\n")
    with pytest.raises(AnnotationError, match=r"gt\.txt:2: .*identity"):
        read_ground_truth(path, "mot15")


def test_a_malformed_odgt_line_reports_the_column_within_the_line(tmp_path):
    from pipeline.datasets.crowdhuman import _parse_line

    line = '{"ID": "x", "gtboxes": [\n'
    with pytest.raises(AnnotationError, match=r"a\.odgt:5: not valid JSON: Expecting value at column 25"):
        _parse_line(line, "fbox", "a.odgt:5")


def test_a_recipe_with_a_duplicate_key_is_refused_by_the_command(tmp_path, capsys):
    from student.train import main

    text = (
        (CONFIGS_DIR / "tiny.yaml")
        .read_text()
        .replace("  head_depth: 1\n", "  head_depth: 1\n  head_depth: 2\n")
    )
    recipe = tmp_path / "dup.yaml"
    recipe.write_text(text)
    assert main(["--config", str(recipe), "--print-config"]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    first = stderr.splitlines()[0]
    assert first.startswith(f"error: {recipe}") and "duplicate key 'head_depth' (first on line 9)" in first
    assert "line 10" in stderr


def test_an_empty_gt_file_warns(pets_dir, tmp_path):
    root = small_sequence(pets_dir, tmp_path / "seq")
    (root / "gt" / "gt.txt").write_text("")
    with pytest.warns(DatasetWarning, match=r"gt\.txt holds no ground-truth rows"):
        records, _ = read_records(load_manifest("pets09-s2l1-half1"), "all", root)
    assert len(records) == 2 and all(len(record.boxes) == 0 for record in records)


def test_a_checkpoint_temp_file_left_by_a_kill_is_removed_on_the_next_save(tmp_path):
    keeper = CheckpointKeeper(tmp_path, keep_last=2)
    dead = 2**22 + 12345  # above Linux's default pid_max: no process has it
    leftovers = [tmp_path / f".step_000002.pt.tmp-{dead}", tmp_path / f".last.pt.tmp-{dead}"]
    for path in leftovers:
        path.write_bytes(b"half a checkpoint")
    model = build_student(TINY_MODEL, warn_if_random_backbone=False)
    checkpoint = TrainingCheckpoint(step=4, model_state=model.state_dict(), model_config=TINY_MODEL.to_dict())
    with pytest.warns(UserWarning, match=r"removed 2 temporary checkpoint files .*interrupted"):
        keeper.save(checkpoint)
    assert not any(path.exists() for path in leftovers)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.pt", "step_000004.pt"]


def test_nan_weights_are_refused_instead_of_evaluating_to_ap_zero(shards, tmp_path, capsys):
    from student.evaluate import main

    checkpoint = tiny_checkpoint(tmp_path / "nan.pt", poison=True)
    with pytest.raises(CheckpointError, match="non-finite"):
        load_checkpoint(checkpoint)
    assert main(["--checkpoint", str(checkpoint), "--shards", str(shards), "--quiet"]) == 2
    line = error_line(capsys.readouterr().err)
    assert "nan.pt" in line and "non-finite" in line
