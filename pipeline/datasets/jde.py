"""JDE/FairMOT "MIX" layout: ``.train`` list files + ``labels_with_ids`` text files.

Each list line is an image path relative to the dataset root; its label file is the
same path with the folder ``images`` replaced by ``labels_with_ids`` and the
extension by ``.txt``. Label lines are ``class id cx cy w h``, box values normalised
by the image size, id -1 where unknown. Class 0 (pedestrian, the only class the
published labels use) is kept; any other class becomes an ignore region. An image
without a label file is a negative image, as in JDE, and is reported in a warning.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from pipeline.datasets.boxes import annotation_numbers, build_record
from pipeline.datasets.images import (
    missing_images_error,
    read_image_header,
    warn_about_exif_orientation,
)
from pipeline.datasets.manifest import DatasetManifest, SplitSpec
from pipeline.datasets.paths import checked_relative_path
from pipeline.datasets.stats import StatsCollector
from pipeline.errors import AnnotationError
from pipeline.records import ImageRecord

PEDESTRIAN_CLASS = 0
LABEL_COLUMNS = 6


def read(manifest: DatasetManifest, split: SplitSpec, root: Path, stats: StatsCollector) -> list[ImageRecord]:
    records: list[ImageRecord] = []
    missing: list[str] = []
    without_labels: list[str] = []
    rotated: list[str] = []
    for image, label in image_and_label_paths(manifest, split, root):
        image_path = root / image
        if not image_path.is_file():
            missing.append(image)
            continue
        header = read_image_header(image_path)
        if header.exif_orientation != 1:
            rotated.append(image)
        label_path = root / label
        if label_path.is_file():
            identities, xyxy, ignore = read_labels(label_path, header.width, header.height)
        else:
            without_labels.append(label)
            identities, xyxy, ignore = np.empty(0), np.empty((0, 4)), np.empty(0, dtype=bool)
        records.append(
            build_record(
                stats,
                image=image,
                width=header.width,
                height=header.height,
                xyxy=xyxy,
                identities=identities,
                ignore=ignore,
                keep_identities=manifest.has_identities,
            )
        )
    if missing:
        raise missing_images_error(missing, len(records) + len(missing), root)
    warn_about_exif_orientation(rotated, stats)
    if without_labels:
        stats.warn(
            f"{len(without_labels)} images have no label file (e.g. {without_labels[0]}); "
            "they are kept as images without boxes"
        )
    return records


def annotation_files(manifest: DatasetManifest, split: SplitSpec, root: Path) -> list[Path]:
    """The list files, then every label file they reference (absent ones included)."""
    labels = [root / label for _image, label in image_and_label_paths(manifest, split, root)]
    return list_files(manifest, split, root) + labels


def list_files(manifest: DatasetManifest, split: SplitSpec, root: Path) -> list[Path]:
    return manifest.annotation_paths(split, root, kind="list file")


def image_and_label_paths(manifest: DatasetManifest, split: SplitSpec, root: Path) -> list[tuple[str, str]]:
    pairs = []
    for list_path in list_files(manifest, split, root):
        with open(list_path, encoding="utf-8") as lines:
            for line_number, line in enumerate(lines, start=1):
                if line.strip():
                    where = f"{list_path}:{line_number}"
                    image = checked_relative_path(line, where=where)
                    pairs.append((image, label_path_for(image, where)))
    return pairs


def label_path_for(image: str, where: str) -> str:
    parts = PurePosixPath(image).parts
    if "images" not in parts[:-1]:
        raise AnnotationError(
            f"{where}: {image!r} has no 'images' folder, so its labels_with_ids file is unknown"
        )
    folders = ["labels_with_ids" if part == "images" else part for part in parts[:-1]]
    return PurePosixPath(*folders, parts[-1]).with_suffix(".txt").as_posix()


def read_labels(path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """identities (N,), boxes x1,y1,x2,y2 in pixels (N, 4), ignore (N,)."""
    with open(path, encoding="utf-8") as stream:
        lines = stream.read().split("\n")
    values = _label_values(lines, path)
    centre_x, centre_y = values[:, 2] * width, values[:, 3] * height
    half_w, half_h = values[:, 4] * width / 2, values[:, 5] * height / 2
    xyxy = np.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], 1)
    identities = values[:, 1].astype(np.int64)
    identities[identities < 0] = -1
    return identities, xyxy, values[:, 0] != PEDESTRIAN_CLASS


def _label_values(lines: list[str], path: Path) -> np.ndarray:
    # One vectorised parse per file; the line-by-line parse runs only when it fails,
    # to name the bad line.
    rows = [line.split() for line in lines if line.strip()]
    if all(len(row) == LABEL_COLUMNS for row in rows):
        try:
            values = np.array(rows, dtype=np.float64).reshape(-1, LABEL_COLUMNS)
        except ValueError:
            values = None  # a non-number: the line-by-line parse below reports where
        if (
            values is not None
            and np.isfinite(values).all()
            and (values[:, :2] == np.round(values[:, :2])).all()
        ):
            return values
    parsed = [
        _parse_label_line(line, f"{path}:{line_number}")
        for line_number, line in enumerate(lines, start=1)
        if line.strip()
    ]
    return np.array(parsed, dtype=np.float64).reshape(-1, LABEL_COLUMNS)


def _parse_label_line(line: str, where: str) -> list[float]:
    fields = line.split()
    if len(fields) != LABEL_COLUMNS:
        raise AnnotationError(
            f"{where}: expected 'class id cx cy w h' ({LABEL_COLUMNS} values), got "
            f"{len(fields)}: {line.strip()!r}"
        )
    return annotation_numbers(fields, line, where, integer_pair="class and id")
