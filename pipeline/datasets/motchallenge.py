"""MOTChallenge sequences: ``seqinfo.ini`` + ``gt/gt.txt`` + ``img1/%06d.jpg``.

Boxes keep the gt.txt coordinates as written (MOTChallenge's 1-based convention, no
shift), as JDE/FairMOT do: detections written back in MOT format then line up with
the gt files the evaluation reads.

Which gt rows become boxes (MOT16/17/20, as the MOTChallenge evaluation treats them):

- class 1 (pedestrian) with mark 1: a person, with its identity;
- a distractor class (2 person on vehicle, 7 static person, 8 distractor, 12
  reflection; ``gt_format: mot20`` adds 6 non-MOT vehicle) or a pedestrian with
  mark 0: an ignore region, since a detection there is neither right nor wrong;
- every other class (cars, bicycles, motorbikes, occluders, crowds): no box at
  all, i.e. background the detector must learn not to fire on (the evaluation
  counts a detection on them as a false positive).

MOT15 has no class column: every row is a person. Identities are made unique across a split's
sequences: each sequence's ids are offset by the sum of the largest ids of the
sequences before it (sorted by path). Ignore rows carry identity -1.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from pipeline.datasets.boxes import annotation_numbers, build_record, xywh_to_xyxy
from pipeline.datasets.images import read_image_header
from pipeline.datasets.manifest import DatasetManifest, SplitSpec
from pipeline.datasets.paths import checked_relative_path
from pipeline.datasets.stats import StatsCollector
from pipeline.errors import AnnotationError, DatasetNotFoundError, MissingImagesError
from pipeline.records import ImageRecord

PEDESTRIAN_CLASS = 1
GT_COLUMNS = {
    # gt_format -> (columns read, layout named in error messages)
    "mot15": (6, "frame,id,x,y,w,h,conf,wx,wy,wz"),
    "mot17": (8, "frame,id,x,y,w,h,mark,class,visibility"),
    "mot20": (8, "frame,id,x,y,w,h,mark,class,visibility"),
}
# person on vehicle, static person, distractor, reflection; MOT20 adds non-MOT vehicle (6)
DISTRACTOR_CLASSES = {"mot17": (2, 7, 8, 12), "mot20": (2, 6, 7, 8, 12)}
GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class SequenceInfo:
    name: str
    image_dir: str
    image_ext: str
    length: int | None
    width: int | None
    height: int | None


@dataclass(frozen=True)
class SequenceGroundTruth:
    frames: np.ndarray  # int64 (N,)
    identities: np.ndarray  # int64 (N,), -1 for unknown and for ignored rows
    xywh: np.ndarray  # float64 (N, 4)
    ignore: np.ndarray  # bool (N,)
    max_identity: int


def read(manifest: DatasetManifest, split: SplitSpec, root: Path, stats: StatsCollector) -> list[ImageRecord]:
    records: list[ImageRecord] = []
    identity_offset = 0
    for sequence_dir in sequence_dirs(manifest, split, root):
        ground_truth = read_ground_truth(sequence_dir / "gt" / "gt.txt", manifest.options["gt_format"])
        if len(ground_truth.frames) == 0:
            stats.warn(
                f"{sequence_dir / 'gt' / 'gt.txt'} holds no ground-truth rows: every frame of the "
                "sequence becomes an image without people"
            )
        records.extend(
            _sequence_records(manifest, split, root, sequence_dir, ground_truth, identity_offset, stats)
        )
        identity_offset += ground_truth.max_identity
    return records


def annotation_files(manifest: DatasetManifest, split: SplitSpec, root: Path) -> list[Path]:
    files = []
    for sequence_dir in sequence_dirs(manifest, split, root):
        seqinfo = sequence_dir / "seqinfo.ini"
        files.extend([seqinfo] if seqinfo.is_file() else [])
        files.append(sequence_dir / "gt" / "gt.txt")
    return files


def sequence_dirs(manifest: DatasetManifest, split: SplitSpec, root: Path) -> list[Path]:
    found: list[Path] = []
    for entry in split.sequences:
        if entry == ".":
            matches = [root]
        elif GLOB_CHARACTERS & set(entry):
            matches = sorted(p for p in root.glob(entry) if p.is_dir() and not p.name.startswith("."))
        else:
            matches = [root / entry] if (root / entry).is_dir() else []
        if not matches:
            raise DatasetNotFoundError(
                f"dataset '{manifest.name}' split '{split.name}': no sequence folder matches "
                f"{entry!r} under {root}.\n{manifest.how_to_get()}"
            )
        found.extend(path for path in matches if path not in found)
    return sorted(found)


def read_seqinfo(sequence_dir: Path, stats: StatsCollector) -> SequenceInfo:
    path = sequence_dir / "seqinfo.ini"
    if not path.is_file():
        stats.warn(f"{sequence_dir}: no seqinfo.ini; assuming img1/*.jpg and the first image's size")
        return SequenceInfo(sequence_dir.name, "img1", ".jpg", None, None, None)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    except configparser.Error as exc:
        raise AnnotationError(f"{path}: not a valid ini file: {exc}") from exc
    if not parser.has_section("Sequence"):
        raise AnnotationError(f"{path}: no [Sequence] section")
    section = parser["Sequence"]

    def integer(key: str) -> int | None:
        value = section.get(key)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError as exc:
            raise AnnotationError(f"{path}: {key}={value!r} is not an integer") from exc

    image_ext = section.get("imExt", ".jpg").strip()
    if not image_ext.startswith(".") or "/" in image_ext or "\\" in image_ext:
        raise AnnotationError(f"{path}: imExt={image_ext!r} must look like '.jpg'")
    image_dir = checked_relative_path(section.get("imDir", "img1"), where=f"{path}: imDir")
    return SequenceInfo(
        name=section.get("name", sequence_dir.name).strip(),
        image_dir=image_dir,
        image_ext=image_ext,
        length=integer("seqLength"),
        width=integer("imWidth"),
        height=integer("imHeight"),
    )


def read_ground_truth(path: Path, gt_format: str) -> SequenceGroundTruth:
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{path} does not exist: the sequence has no ground truth (test sequences have none)"
        )
    columns, layout = GT_COLUMNS[gt_format]
    rows: list[list[float]] = []
    with open(path, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if line.strip():
                rows.append(_parse_gt_line(line, columns, layout, f"{path}:{line_number}"))
    values = np.array(rows, dtype=np.float64).reshape(-1, columns)
    max_identity = int(values[:, 1].max(initial=0))
    if gt_format == "mot15":
        ignore = np.zeros(len(values), dtype=bool)
    else:
        pedestrian = values[:, 7] == PEDESTRIAN_CLASS
        ignore = np.isin(values[:, 7], DISTRACTOR_CLASSES[gt_format]) | (pedestrian & (values[:, 6] == 0))
        person = pedestrian & (values[:, 6] != 0)
        values, ignore = values[person | ignore], ignore[person | ignore]
    identities = values[:, 1].astype(np.int64)
    identities[identities < 0] = -1
    return SequenceGroundTruth(
        frames=values[:, 0].astype(np.int64),
        identities=np.where(ignore, -1, identities),
        xywh=values[:, 2:6],
        ignore=ignore,
        max_identity=max_identity,
    )


def _parse_gt_line(line: str, columns: int, layout: str, where: str) -> list[float]:
    fields = line.split(",")
    if len(fields) < columns:
        raise AnnotationError(
            f"{where}: expected {layout} (at least {columns} comma-separated values), "
            f"got {len(fields)}: {line.strip()!r}"
        )
    return annotation_numbers(fields[:columns], line, where, integer_pair="frame and id")


def _frame_images(image_dir: Path, image_ext: str) -> dict[int, str]:
    if not image_dir.is_dir():
        return {}
    frames = {}
    with os.scandir(image_dir) as entries:
        for entry in entries:
            stem = entry.name[: -len(image_ext)]
            if entry.name.endswith(image_ext) and stem.isdigit():
                frames[int(stem)] = entry.name
    return frames


def _sequence_records(
    manifest: DatasetManifest,
    split: SplitSpec,
    root: Path,
    sequence_dir: Path,
    ground_truth: SequenceGroundTruth,
    identity_offset: int,
    stats: StatsCollector,
) -> list[ImageRecord]:
    info = read_seqinfo(sequence_dir, stats)
    image_dir = sequence_dir / info.image_dir
    images = _frame_images(image_dir, info.image_ext)
    if not images:
        raise MissingImagesError(
            f"{image_dir} holds no '*{info.image_ext}' frame images"
            + (f" (seqinfo.ini claims {info.length})" if info.length else "")
            + ". Check that the sequence's images were extracted."
        )
    # The frames present are the truth: seqinfo.ini may overclaim (MOT17-mini, cut sequences).
    if info.length is not None and sorted(images) != list(range(1, info.length + 1)):
        stats.warn(
            f"{info.name}: seqinfo.ini claims {info.length} frames but {info.image_dir}/ holds "
            f"{len(images)} frame images ({min(images)}..{max(images)}); using the frames present"
        )
    width, height = _image_size(info, image_dir / images[min(images)], stats)

    without_image = ~np.isin(ground_truth.frames, list(images))
    if without_image.any():
        skipped_frames = np.unique(ground_truth.frames[without_image])
        stats.skipped_gt_rows += int(without_image.sum())
        stats.warn(
            f"{info.name}: skipped {int(without_image.sum())} gt rows on {len(skipped_frames)} "
            f"frames that have no image file (e.g. frame {int(skipped_frames[0])})"
        )

    rows_by_frame = _rows_by_frame(ground_truth.frames)
    relative_dir = PurePosixPath(sequence_dir.relative_to(root).as_posix()) / info.image_dir
    records = []
    for frame in _split_frames(sorted(images), split):
        rows = rows_by_frame.get(frame, np.empty(0, dtype=np.int64))
        identities = ground_truth.identities[rows]
        records.append(
            build_record(
                stats,
                image=(relative_dir / images[frame]).as_posix(),
                width=width,
                height=height,
                xyxy=xywh_to_xyxy(ground_truth.xywh[rows]),
                identities=np.where(identities >= 0, identities + identity_offset, -1),
                ignore=ground_truth.ignore[rows],
                keep_identities=manifest.has_identities,
                sequence=info.name,
                frame=frame,
            )
        )
    return records


def _image_size(info: SequenceInfo, first_image: Path, stats: StatsCollector) -> tuple[int, int]:
    header = read_image_header(first_image)
    if info.width is not None and (info.width, info.height) != (header.width, header.height):
        stats.warn(
            f"{info.name}: seqinfo.ini says {info.width}x{info.height} but {first_image.name} is "
            f"{header.width}x{header.height}; using the image size"
        )
    return header.width, header.height


def _rows_by_frame(frames: np.ndarray) -> dict[int, np.ndarray]:
    if len(frames) == 0:
        return {}
    order = np.argsort(frames, kind="stable")
    unique_frames, starts = np.unique(frames[order], return_index=True)
    groups = np.split(order, starts[1:])
    return {int(frame): rows for frame, rows in zip(unique_frames, groups, strict=True)}


def _split_frames(frames: list[int], split: SplitSpec) -> list[int]:
    if split.frames is not None:
        first, last = split.frames
        return [frame for frame in frames if first <= frame <= last]
    if split.frame_fraction is not None:
        start, end = split.frame_fraction
        return frames[int(start * len(frames)) : int(end * len(frames))]
    return frames
