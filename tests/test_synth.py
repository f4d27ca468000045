"""The synthetic world generator (tiny preset): determinism, formats our readers parse, reruns."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets import load_manifest, read_records
from pipeline.synth import build_config, generate
from pipeline.synth.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    assert generate(build_config("tiny"), out).status == "generated"
    return out


def _hashes(out: Path) -> dict[str, str]:
    listing = json.loads((out / "world.json").read_text())["files"]
    return {entry["path"]: entry["sha256"] for entry in listing}


def test_same_seed_is_byte_identical_and_another_seed_differs(world: Path, tmp_path: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    generate(build_config("tiny"), again)
    generate(build_config("tiny", seed=1), other)
    assert _hashes(again) == _hashes(world)
    assert (again / "world.json").read_bytes() == (world / "world.json").read_bytes()
    differing = [path for path, digest in _hashes(other).items() if _hashes(world)[path] != digest]
    assert len(differing) > len(_hashes(world)) // 2


def test_worker_processes_write_the_same_bytes_and_tick_every_item(world: Path, tmp_path: Path) -> None:
    ticks: list[tuple[int, int]] = []
    out = tmp_path / "parallel"
    generate(build_config("tiny"), out, workers=2, progress=lambda done, total: ticks.append((done, total)))
    assert (out / "world.json").read_bytes() == (world / "world.json").read_bytes()
    for path in _hashes(world):
        assert (out / path).read_bytes() == (world / path).read_bytes(), path
    total = 12 + 4 + 2 * 12
    assert ticks == [(done, total) for done in range(1, total + 1)]


def test_a_failing_worker_is_a_clear_error_and_leaves_no_world_json(tmp_path: Path) -> None:
    tiny = build_config("tiny")
    # fewer people allowed than required: the renderer itself raises, inside a worker process
    broken = replace(tiny, detection=replace(tiny.detection, min_people=5, max_people=3))
    with pytest.raises(RuntimeError, match=r"rendering images synth_train_000001\.\..* failed in a worker"):
        generate(broken, tmp_path / "w", workers=2)
    assert not (tmp_path / "w" / "world.json").exists()
    assert (tmp_path / "w" / ".synth-partial.json").exists()
    with pytest.raises(ValueError, match="workers"):
        generate(tiny, tmp_path / "v", workers=0)


def test_world_json_lists_every_file_with_its_hash(world: Path) -> None:
    document = json.loads((world / "world.json").read_text())
    assert document["seed"] == 0 and document["detection"]["train_images"] == 12
    written = {p.relative_to(world).as_posix() for p in world.rglob("*") if p.is_file()}
    assert written - {"world.json"} == {entry["path"] for entry in document["files"]}
    assert not (world / ".synth-partial.json").exists()


def test_crowdhuman_split_parses_with_sane_boxes(world: Path) -> None:
    manifest = load_manifest("synth-crowdhuman")
    records, stats = read_records(manifest, "all", world / "crowdhuman")
    assert len(records) == 16 and not stats.warnings
    for record in records:
        assert 2 <= len(record.boxes) <= 15
        assert record.width == 160 and record.height == 128
        boxes = record.boxes
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= record.width).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= record.height).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert (record.identities == -1).all()
        assert (~record.ignore).sum() >= 1
    train, _ = read_records(manifest, "train", world / "crowdhuman")
    assert len(train) == 12
    line = json.loads((world / "crowdhuman" / "annotation_train.odgt").read_text().splitlines()[0])
    assert set(line["gtboxes"][0]) >= {"tag", "fbox", "vbox", "hbox", "extra"}
    assert set(line["gtboxes"][0]["extra"]) == {"box_id", "occ", "ignore"}


def test_sequences_parse_with_persistent_identities_and_occlusion(world: Path) -> None:
    records, stats = read_records(load_manifest("synth-mot"), None, world / "mot")
    assert not stats.warnings
    sequences = sorted({r.sequence for r in records})
    assert sequences == ["SYNTH-01", "SYNTH-02"]
    overlaps = 0
    for name in sequences:
        frames = sorted((r for r in records if r.sequence == name), key=lambda r: r.frame)
        assert [r.frame for r in frames] == list(range(1, 13))
        spans: dict[int, list[int]] = {}
        for record in frames:
            assert len(set(record.identities.tolist())) == len(record.identities)
            for identity in record.identities.tolist():
                spans.setdefault(identity, []).append(record.frame)
            boxes = record.boxes.astype(np.float64)
            for i in range(len(boxes)):
                for j in range(i + 1, len(boxes)):
                    w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
                    h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
                    overlaps += w > 0 and h > 0
        assert all(identity >= 0 for identity in spans)
        persistent = [f for f in spans.values() if len(f) >= 6]
        assert persistent, "some identity is tracked over many frames"
        assert all(f == list(range(f[0], f[-1] + 1)) for f in spans.values()), "no gaps in a track"
        assert any(f[0] > 1 or f[-1] < 12 for f in spans.values()), "someone enters or leaves"
        gt = np.loadtxt(world / "mot" / "train" / name / "gt" / "gt.txt", delimiter=",", ndmin=2)
        assert gt.shape[1] == 9 and (gt[:, 6] == 1).all() and (gt[:, 7] == 1).all()
        assert ((gt[:, 8] >= 0) & (gt[:, 8] <= 1)).all() and (gt[:, 8] < 1).any()
    assert overlaps > 0
    seqinfo = (world / "mot" / "train" / "SYNTH-01" / "seqinfo.ini").read_text()
    assert seqinfo.startswith("; synthetic") and "imExt=.jpg" in seqinfo


def test_readme_says_synthetic(world: Path) -> None:
    text = (world / "README.md").read_text()
    assert "SYNTHETIC" in text and "python -m pipeline.synth" in text and "seed 0" in text


def test_rerun_is_a_no_op_and_other_options_are_refused(
    world: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p: p.stat().st_mtime_ns for p in world.rglob("*")}
    assert main(["--out", str(world), "--preset", "tiny", "--quiet"]) == 0
    assert "already generated" in capsys.readouterr().out
    assert main(["--out", str(world), "--preset", "tiny", "--quiet", "--check"]) == 0
    assert {p: p.stat().st_mtime_ns for p in world.rglob("*")} == before
    assert main(["--out", str(world), "--preset", "tiny", "--seed", "3", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "--overwrite" in error and "seed 0 -> 3" in error and len(error.strip().splitlines()) == 1


def test_overwrite_removes_only_its_own_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "w"
    generate(build_config("tiny", sequences=3, frames=4, images=3, val_images=1), out)
    (out / "notes.txt").write_text("mine")
    assert main(["--out", str(out), "--preset", "tiny", "--sequences", "1", "--frames", "4", "--quiet"]) == 2
    assert (
        main(
            [
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--sequences",
                "1",
                "--frames",
                "4",
                "--overwrite",
                "--quiet",
            ]
        )
        == 0
    )
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "mot" / "train" / "SYNTH-03").exists()
    assert sorted(p.name for p in (out / "mot" / "train").iterdir()) == ["SYNTH-01"]


def test_foreign_non_empty_directory_and_bad_arguments_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data.txt").write_text("x")
    assert main(["--out", str(tmp_path), "--preset", "tiny", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x"), "--frames", "1", "--quiet"]) == 2
    assert "--frames" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x"), "--workers", "0", "--quiet"]) == 2
    assert "--workers" in capsys.readouterr().err


def test_crash_leaves_no_world_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.synth import sequences

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(sequences, "render_sequence", broken)
    with pytest.raises(RuntimeError):
        generate(build_config("tiny"), tmp_path / "w")
    assert not (tmp_path / "w" / "world.json").exists()
    assert (tmp_path / "w" / ".synth-partial.json").exists()
    monkeypatch.undo()
    assert generate(build_config("tiny"), tmp_path / "w").status == "generated"  # its own crash: redone


def test_help_describes_the_tool() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.synth", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "SYNTHETIC" in result.stdout and "--preset" in result.stdout and "--overwrite" in result.stdout
    assert "--workers" in result.stdout
