"""Write a whole world under one directory, safely: plan, refuse or resume, write, then world.json.

``world.json`` is written last (temporary name, then ``os.replace``) and lists every file with
its size and sha256: it is the mark of a complete world. While generating, ``.synth-partial.json``
holds the config, so a crashed run is recognised as this generator's own and can be redone.
The file list is a function of the config alone, which is how ``--overwrite`` knows exactly which
files an earlier world wrote and never deletes anything else.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.synth import detection, sequences
from pipeline.synth.config import GENERATOR_VERSION, TrackingConfig, WorldConfig
from pipeline.synth.parallel import Renderer
from tdt.synthetic import SEQINFO_MARKER

WORLD_JSON = "world.json"
PARTIAL_JSON = ".synth-partial.json"
CROWDHUMAN_DIR = "crowdhuman"
MOT_DIR = "mot/train"


class WorldError(Exception):
    """A refusal the user can act on (printed in one line, exit status 2)."""


@dataclass(frozen=True)
class Outcome:
    status: str  # "generated" or "already generated"
    files: int
    bytes: int


def planned_files(config: dict) -> list[str]:
    """Every file a world with this config (as stored in world.json) writes, relative to its root."""
    det, trk = config["detection"], config["tracking"]
    files = ["README.md", f"{CROWDHUMAN_DIR}/annotation_train.odgt", f"{CROWDHUMAN_DIR}/annotation_val.odgt"]
    for split, count in (("train", det["train_images"]), ("val", det["val_images"])):
        files += [f"{CROWDHUMAN_DIR}/Images/{i}.jpg" for i in detection.image_ids(split, count)]
    for index in range(1, trk["sequences"] + 1):
        base = f"{MOT_DIR}/{sequences.sequence_name(index)}"
        files += [f"{base}/seqinfo.ini", f"{base}/gt/gt.txt"]
        files += [f"{base}/img1/{frame:06d}.jpg" for frame in range(1, trk["frames"] + 1)]
    return files


def generate(
    config: WorldConfig,
    out: Path,
    *,
    overwrite: bool = False,
    check: bool = False,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Outcome:
    """Write the world ``config`` describes under ``out``, or confirm it is already there.

    ``workers`` > 1 renders on that many spawned processes (one OpenCV thread each); the files
    are byte-identical to ``workers=1``, which renders in this process.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    out = Path(out)
    wanted = config.to_dict()
    previous = _previous_config(out)
    if previous is not None and previous[0] == WORLD_JSON and previous[1] == wanted:
        problem = _verify(out, rehash=check)
        if problem is None:
            listing = json.loads((out / WORLD_JSON).read_text(encoding="utf-8"))["files"]
            return Outcome("already generated", len(listing), sum(f["bytes"] for f in listing))
        if not overwrite:
            raise WorldError(f"{out} holds this world but {problem}; rerun with --overwrite to regenerate it")
    elif previous is not None and previous[1] != wanted and not overwrite:
        raise WorldError(
            f"{out} holds a synthetic world with a different config ({_difference(previous[1], wanted)}); "
            "pass --overwrite to replace it, or choose another --out"
        )
    elif previous is None and out.exists() and any(out.iterdir()) and not overwrite:
        raise WorldError(
            f"{out} is not empty and holds no synthetic world; pass --overwrite or choose another --out"
        )

    out.mkdir(parents=True, exist_ok=True)
    (out / WORLD_JSON).unlink(missing_ok=True)
    _write_atomically(out / PARTIAL_JSON, json.dumps(wanted, indent=2))
    if previous is not None:
        _remove_stale(out, planned_files(previous[1]), set(planned_files(wanted)))
    writer = _Writer(out)
    total = config.detection.train_images + config.detection.val_images
    total += config.tracking.sequences * config.tracking.frames
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    root = np.random.SeedSequence(config.seed)
    train_seeds, val_seeds, sequence_seeds = root.spawn(3)
    splits = [
        ("train", config.detection.train_images, train_seeds),
        ("val", config.detection.val_images, val_seeds),
    ]
    jobs = [
        job
        for split, count, seeds in splits
        for job in zip(detection.image_ids(split, count), seeds.spawn(count), strict=True)
    ]
    with Renderer(config, workers) as renderer:
        images = renderer.images(jobs)
        frames_by_sequence = renderer.frames_by_sequence(sequence_seeds.spawn(config.tracking.sequences))
        for split, count, _ in splits:
            _write_split(writer, split, itertools.islice(images, count), tick)
        for index, frames in enumerate(frames_by_sequence, start=1):
            _write_sequence(writer, config.tracking, index, frames, tick)
    writer.write("README.md", readme(config).encode())
    listing = writer.listing()
    _write_atomically(out / WORLD_JSON, json.dumps({**wanted, "files": listing}, indent=1) + "\n")
    (out / PARTIAL_JSON).unlink(missing_ok=True)
    return Outcome("generated", len(listing), sum(f["bytes"] for f in listing))


def _write_split(
    writer: _Writer, split: str, images: Iterable[detection.DetectionImage], tick: Callable[[], None]
) -> None:
    lines = []
    for image in images:
        writer.write(f"{CROWDHUMAN_DIR}/Images/{image.image_id}.jpg", image.jpeg)
        lines.append(detection.odgt_line(image.annotation))
        tick()
    writer.write(f"{CROWDHUMAN_DIR}/annotation_{split}.odgt", "".join(lines).encode())


def _write_sequence(
    writer: _Writer,
    tracking: TrackingConfig,
    index: int,
    frames: Iterable[sequences.SequenceFrame],
    tick: Callable[[], None],
) -> None:
    name = sequences.sequence_name(index)
    base = f"{MOT_DIR}/{name}"
    ids: dict[int, int] = {}
    gt = []
    for frame_number, frame in enumerate(frames, 1):
        writer.write(f"{base}/img1/{frame_number:06d}.jpg", frame.jpeg)
        for key, x1, y1, x2, y2, visibility in frame.rows:
            # identities numbered by first appearance, as in MOTChallenge files
            identity = ids.setdefault(key, len(ids) + 1)
            gt.append((identity, frame_number, x1, y1, x2, y2, visibility))
        tick()
    gt.sort()
    text = "".join(
        f"{f},{i},{round(x1)},{round(y1)},{round(x2) - round(x1)},{round(y2) - round(y1)},1,1,{v:.4f}\n"
        for i, f, x1, y1, x2, y2, v in gt
    )
    writer.write(f"{base}/gt/gt.txt", text.encode())
    writer.write(f"{base}/seqinfo.ini", _seqinfo(name, tracking).encode())


class _Writer:
    def __init__(self, root: Path):
        self.root = root
        self.files: list[dict] = []

    def write(self, relative: str, data: bytes) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files.append({"path": relative, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})

    def listing(self) -> list[dict]:
        return sorted(self.files, key=lambda f: f["path"])


def _previous_config(out: Path) -> tuple[str, dict] | None:
    for name in (WORLD_JSON, PARTIAL_JSON):
        path = out / name
        if path.is_file():
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as error:
                raise WorldError(
                    f"{path} is unreadable ({error}); delete it or choose another --out"
                ) from error
            return name, {key: value for key, value in document.items() if key != "files"}
    return None


def _verify(out: Path, *, rehash: bool) -> str | None:
    listing = json.loads((out / WORLD_JSON).read_text(encoding="utf-8"))["files"]
    for entry in listing:
        path = out / entry["path"]
        if not path.is_file():
            return f"{entry['path']} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{entry['path']} has the wrong size"
        if rehash and hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            return f"{entry['path']} has the wrong sha256"
    return None


def _remove_stale(out: Path, old: list[str], keep: set[str]) -> None:
    folders = set()
    for relative in old:
        if relative not in keep:
            path = out / relative
            path.unlink(missing_ok=True)
            folders.update(path.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder != out and out in folder.parents and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _difference(old: dict, new: dict) -> str:
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            for sub in sorted(set(old[key]) | set(new[key])):
                if old[key].get(sub) != new[key].get(sub):
                    changes.append(f"{key}.{sub} {old[key].get(sub)} -> {new[key].get(sub)}")
        else:
            changes.append(f"{key} {old.get(key)} -> {new.get(key)}")
    return ", ".join(changes[:4])


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _seqinfo(name: str, tracking: TrackingConfig) -> str:
    return (
        f"{SEQINFO_MARKER}\n"
        "[Sequence]\n"
        f"name={name}\n"
        "imDir=img1\n"
        f"frameRate={tracking.frame_rate}\n"
        f"seqLength={tracking.frames}\n"
        f"imWidth={tracking.width}\n"
        f"imHeight={tracking.height}\n"
        "imExt=.jpg\n"
    )


def readme(config: WorldConfig) -> str:
    d, t = config.detection, config.tracking
    return f"""# SYNTHETIC pedestrian world (not real footage)

Every image here was drawn by a program: `python -m pipeline.synth` (generator version
{GENERATOR_VERSION}), seed {config.seed}, preset `{config.preset}`. The people, streets and
cameras are procedural; nothing was filmed and no real person appears. It exists so that the
project's out-of-the-box demo and its tests run without downloading CrowdHuman or MOTChallenge.
Numbers measured on it say nothing about real-world accuracy.

Regenerate (byte-identical for the same seed and parameters):

    python -m pipeline.synth --out <this folder> --seed {config.seed} --preset {config.preset} \\
        --images {d.train_images} --val-images {d.val_images} --sequences {t.sequences} \\
        --frames {t.frames} --height {d.height} --width {d.width}

## Layout

    crowdhuman/                      CrowdHuman format (manifest: synth-crowdhuman)
      Images/<ID>.jpg                {d.train_images} train + {d.val_images} val images, {d.width}x{d.height}
      annotation_train.odgt          one JSON object per line: {{"ID", "gtboxes": [{{"tag", "fbox",
      annotation_val.odgt            "vbox", "hbox", "head_attr", "extra": {{"box_id", "occ", "ignore"}}}}]}}
    mot/train/SYNTH-NN/              MOTChallenge format (manifest: synth-mot), {t.sequences} sequences
      seqinfo.ini                    {t.frames} frames, {t.width}x{t.height}, {t.frame_rate} fps
      img1/000001.jpg ...
      gt/gt.txt                      frame,id,x,y,w,h,mark,class,visibility (MOT17 style)
    world.json                       generator version, config, sha256 of every file (written last)

## What is in it

- Still images: a new scene per image (street, plaza or park; facades, trees, lamp posts,
  benches, bins, bollards, parked cars), {d.min_people}-{d.max_people} people per image from
  {d.min_person_px:.0f} px tall up to {d.max_person_fraction:.0%} of the image height, no identities.
  `fbox` is the full body and may extend past the image border, as in CrowdHuman; `vbox` is
  the visible part. People less than {detection.IGNORE_BELOW_VISIBILITY:.0%} visible carry
  `extra.ignore: 1`.
- Sequences: a static camera, people with a fixed appearance per identity walking in and out
  through the borders and occluding each other. `visibility` is the visible share of the
  person's rendered silhouette (occluders and the image border hide it).
"""
