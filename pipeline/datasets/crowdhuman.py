"""CrowdHuman ``.odgt``: one JSON object per line, image at ``Images/<ID>.jpg``.

Each ``gtboxes`` entry has a ``tag`` ("person", or "mask" for crowd/reflection
regions) and x,y,w,h boxes; the manifest picks which (``fbox``, full body, by
default). ``tag`` other than "person" or ``extra.ignore == 1`` marks an ignore region.
Image sizes come from the file headers: the annotations do not carry them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets.boxes import build_record, xywh_to_xyxy
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


def read(manifest: DatasetManifest, split: SplitSpec, root: Path, stats: StatsCollector) -> list[ImageRecord]:
    image_dir = manifest.options["image_dir"]
    box_field = manifest.options["box_field"]
    records: list[ImageRecord] = []
    missing: list[str] = []
    rotated: list[str] = []
    for annotation_path in annotation_files(manifest, split, root):
        with open(annotation_path, encoding="utf-8") as lines:
            for line_number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"{annotation_path}:{line_number}"
                image_id, xywh, ignore = _parse_line(line, box_field, where)
                image = checked_relative_path(f"{image_dir}/{image_id}.jpg", where=f"{where}: ID")
                if not (root / image).is_file():
                    missing.append(image)
                    continue
                header = read_image_header(root / image)
                if header.exif_orientation != 1:
                    rotated.append(image)
                records.append(
                    build_record(
                        stats,
                        image=image,
                        width=header.width,
                        height=header.height,
                        xyxy=xywh_to_xyxy(xywh),
                        identities=np.full(len(xywh), -1, dtype=np.int64),
                        ignore=ignore,
                    )
                )
    if missing:
        raise missing_images_error(missing, len(records) + len(missing), root)
    warn_about_exif_orientation(rotated, stats)
    return records


def annotation_files(manifest: DatasetManifest, split: SplitSpec, root: Path) -> list[Path]:
    return manifest.annotation_paths(split, root)


def _parse_line(line: str, box_field: str, where: str) -> tuple[str, np.ndarray, np.ndarray]:
    try:
        entry = json.loads(line.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        # The line without its newline: an error at its end is at the line's last column + 1,
        # not at column 1 of a line after it.
        raise AnnotationError(f"{where}: not valid JSON: {exc.msg} at column {exc.pos + 1}") from exc
    if not isinstance(entry, dict) or not isinstance(entry.get("ID"), str) or not entry["ID"]:
        raise AnnotationError(f"{where}: expected an object with a string 'ID'")
    gtboxes = entry.get("gtboxes", [])
    if not isinstance(gtboxes, list) or not all(isinstance(gtbox, dict) for gtbox in gtboxes):
        raise AnnotationError(f"{where}: 'gtboxes' must be a list of objects")
    extras = [gtbox.get("extra") or {} for gtbox in gtboxes]
    if not all(isinstance(extra, dict) for extra in extras):
        raise AnnotationError(f"{where}: every gtboxes[].extra must be an object")
    ignore = [
        gtbox.get("tag") != "person" or extra.get("ignore", 0) == 1
        for gtbox, extra in zip(gtboxes, extras, strict=True)
    ]
    boxes = _boxes([gtbox.get(box_field) for gtbox in gtboxes], box_field, where)
    return entry["ID"], boxes, np.array(ignore, dtype=bool)


def _boxes(raw: list[Any], box_field: str, where: str) -> np.ndarray:
    # One vectorised check per image; the per-box check runs only when it fails, to name the box.
    if all(type(box) is list and len(box) == 4 for box in raw) and {
        type(value) for box in raw for value in box
    } <= {int, float}:
        boxes = np.array(raw, dtype=np.float64).reshape(-1, 4)
        if np.isfinite(boxes).all():
            return boxes
    for index, box in enumerate(raw):
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(type(value) in (int, float) and math.isfinite(value) for value in box)
        ):
            raise AnnotationError(
                f"{where}: gtboxes[{index}]: '{box_field}' must be four finite numbers x, y, w, h"
            )
    return np.array(raw, dtype=np.float64).reshape(-1, 4)
