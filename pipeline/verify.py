"""Check a shard directory end to end; exit 0 only if every check holds.

    python -m pipeline.verify out/shards-pets [--json]

Checks: the manifest is readable and of a known schema version, and names only
files inside the directory; every listed shard is present (a link resolving outside
the directory is refused, not read) and no unlisted shard or leftover temporary
file is; each shard's size, sha256, row, box and embedding counts match the
manifest; the embeddings have the manifest's dimension and dtype, are finite and
unit-norm (within 1e-2); ignore boxes carry no embedding; boxes lie inside their
images; image paths stay inside the dataset root (relative, no '..'); every shard
names the manifest's teacher fingerprint.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.datasets.paths import checked_relative_path
from pipeline.errors import AnnotationError
from pipeline.plan import PARTIAL_DIR
from pipeline.shards.io import ShardReadError, read_shard
from pipeline.shards.manifest import (
    ManifestError,
    ShardEntry,
    ShardManifest,
    ShardPathError,
    read_manifest,
    sha256_file,
    shard_path,
)
from pipeline.shards.schema import KNOWN_SCHEMA_VERSIONS, MANIFEST_NAME, format_of
from tdt.process import configure_for_cli

NORM_TOLERANCE = 1e-2
BOX_TOLERANCE = 0.5  # pixels; clipped boxes are exact, this only absorbs float rounding


@dataclass(frozen=True)
class Defect:
    shard: str
    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.shard}: [{self.check}] {self.message}"


def verify_directory(directory: Path) -> tuple[list[Defect], ShardManifest | None]:
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except ManifestError as error:
        return [Defect(MANIFEST_NAME, "manifest", str(error))], None
    defects = _check_directory_listing(directory, manifest)
    for entry in manifest.shards:
        defects.extend(_check_shard(directory, manifest, entry))
    total_images = sum(s.rows for s in manifest.shards)
    if total_images != manifest.dataset.images:
        defects.append(
            Defect(
                MANIFEST_NAME,
                "counts",
                f"shards hold {total_images} images, dataset says {manifest.dataset.images}",
            )
        )
    return defects, manifest


def _check_directory_listing(directory: Path, manifest: ShardManifest) -> list[Defect]:
    listed = {s.file for s in manifest.shards}
    defects = []
    for path in sorted(directory.iterdir()):
        name = path.name
        if name == MANIFEST_NAME or name in listed:
            continue
        if name == PARTIAL_DIR or ".tmp-" in name:
            defects.append(Defect(name, "leftover", "temporary file of an unfinished run"))
        elif format_of(name) is not None:
            defects.append(Defect(name, "extra-shard", "shard file not listed in the manifest"))
    for name in sorted(listed):
        if not (directory / name).is_file():
            defects.append(Defect(name, "missing", "listed in the manifest but not present"))
    return defects


def _check_shard(directory: Path, manifest: ShardManifest, entry: ShardEntry) -> list[Defect]:
    try:
        path = shard_path(directory, entry.file)
    except ShardPathError as error:
        return [Defect(entry.file, "path", str(error))]  # never read a file outside the directory
    if not path.is_file():
        return []  # reported by the listing check
    defects: list[Defect] = []

    def defect(check: str, message: str) -> None:
        defects.append(Defect(entry.file, check, message))

    size = path.stat().st_size
    if size != entry.bytes:
        defect("size", f"{size} bytes, manifest says {entry.bytes} (truncated or replaced?)")
    if sha256_file(path) != entry.sha256:
        defect("sha256", "checksum differs from the manifest (corrupted or modified)")
    try:
        table, metadata = read_shard(path, manifest.format)
    except ShardReadError as error:
        defect("decode", str(error))
        return defects
    if metadata.get("schema_version") not in KNOWN_SCHEMA_VERSIONS:
        defect("schema", f"unknown schema version {metadata.get('schema_version')!r}")
    if metadata.get("teacher_id") != manifest.teacher_id:
        defect(
            "teacher",
            f"teacher fingerprint {metadata.get('teacher_id')!r} differs from the manifest's {manifest.teacher_id!r}",
        )
    if table.num_rows != entry.rows:
        defect("rows", f"{table.num_rows} rows, manifest says {entry.rows}")
    if table.num_boxes != entry.boxes:
        defect("boxes", f"{table.num_boxes} boxes, manifest says {entry.boxes}")
    if table.embedding_dim != manifest.embedding_dim:
        defect("dims", f"embedding dimension {table.embedding_dim}, manifest says {manifest.embedding_dim}")
    if str(table.embeddings.dtype) != manifest.dtype:
        defect("dtype", f"embedding dtype {table.embeddings.dtype}, manifest says {manifest.dtype}")
    defects.extend(Defect(entry.file, check, msg) for check, msg in _content_problems(table, entry))
    return defects


def _content_problems(table, entry: ShardEntry) -> list[tuple[str, str]]:
    problems = []
    embeddings = table.embeddings.astype(np.float32)
    # Null embeddings read back as all-NaN rows; a NaN inside a stored embedding is corruption.
    null = np.isnan(embeddings).all(axis=1) if embeddings.shape[1] else np.ones(len(embeddings), bool)
    partly_nan = np.isnan(embeddings).any(axis=1) & ~null
    if partly_nan.any():
        problems.append(("finite", f"{int(partly_nan.sum())} embeddings contain NaN values"))
    if np.isinf(embeddings).any():
        problems.append(("finite", f"{int(np.isinf(embeddings).any(axis=1).sum())} embeddings contain inf"))
    present = ~null
    if present.sum() != entry.embeddings:
        problems.append(("embeddings", f"{int(present.sum())} embeddings, manifest says {entry.embeddings}"))
    if (present & table.ignore).any():
        problems.append(("ignore", f"{int((present & table.ignore).sum())} ignore boxes carry an embedding"))
    if (~present & ~table.ignore).any():
        problems.append(
            ("embeddings", f"{int((~present & ~table.ignore).sum())} non-ignore boxes lack an embedding")
        )
    usable = present & np.isfinite(embeddings).all(axis=1)
    norms = np.linalg.norm(embeddings[usable], axis=1)
    off = np.abs(norms - 1) > NORM_TOLERANCE
    if off.any():
        problems.append(
            ("norms", f"{int(off.sum())} embeddings are not unit-norm (first {norms[off][0]:.4f})")
        )
    escaping = [image for image in table.images if not _inside_dataset_root(image)]
    if escaping:
        problems.append(
            (
                "image-path",
                f"{len(escaping)} image paths are absolute or use '..' and would leave the dataset root "
                f"(first {escaping[0]!r})",
            )
        )
    if not np.isfinite(table.boxes).all():
        problems.append(("finite", "boxes contain NaN or inf"))
    else:
        counts = np.diff(table.offsets)
        widths = np.repeat(table.widths, counts).astype(np.float32)
        heights = np.repeat(table.heights, counts).astype(np.float32)
        b = table.boxes
        outside = (
            (b[:, 0] < -BOX_TOLERANCE)
            | (b[:, 1] < -BOX_TOLERANCE)
            | (b[:, 2] > widths + BOX_TOLERANCE)
            | (b[:, 3] > heights + BOX_TOLERANCE)
            | (b[:, 2] < b[:, 0])
            | (b[:, 3] < b[:, 1])
        )
        if outside.any():
            row = int(np.searchsorted(table.offsets, np.flatnonzero(outside)[0], side="right") - 1)
            problems.append(
                ("boxes", f"{int(outside.sum())} boxes outside their image (first in {table.images[row]})")
            )
    return problems


def _inside_dataset_root(image: str) -> bool:
    try:
        checked_relative_path(image, where=image)
    except AnnotationError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.verify",
        description=(
            "Verify a shard directory written by pipeline.distill: manifest, checksums, counts, "
            "embedding dims/dtype/finiteness/unit norm, boxes inside images, one teacher fingerprint. "
            "Exit 0 when everything holds, 1 listing each defect otherwise."
        ),
    )
    parser.add_argument("directory", type=Path, help="shard directory (the one holding manifest.json)")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of text")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_for_cli()
    if not args.directory.is_dir():
        print(f"error: {args.directory} is not a directory", file=sys.stderr)
        return 2
    defects, manifest = verify_directory(args.directory)
    if args.json:
        report = {
            "directory": str(args.directory),
            "ok": not defects,
            "shards": len(manifest.shards) if manifest else 0,
            "images": manifest.num_images if manifest else 0,
            "boxes": manifest.num_boxes if manifest else 0,
            "defects": [asdict(d) for d in defects],
        }
        print(json.dumps(report, indent=2))
    elif defects:
        print(f"{args.directory}: {len(defects)} defect(s)")
        for d in defects:
            print(f"  {d}")
    else:
        print(
            f"{args.directory}: OK — {len(manifest.shards)} shards, {manifest.num_images} images, "
            f"{manifest.num_boxes} boxes, teacher {manifest.teacher.get('architecture', '?')} "
            f"({manifest.teacher_id}), {manifest.format}/{manifest.dtype}"
        )
    return 1 if defects else 0


if __name__ == "__main__":
    sys.exit(main())
