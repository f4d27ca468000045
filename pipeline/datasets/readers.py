"""Format dispatch: read a split into ImageRecords, and fingerprint its annotations."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

from pipeline.datasets import crowdhuman, jde, motchallenge
from pipeline.datasets.manifest import DatasetManifest, resolve_root
from pipeline.datasets.stats import ReaderStats, StatsCollector
from pipeline.errors import EmptyDatasetError
from pipeline.records import ImageRecord

FORMAT_READERS: dict[str, ModuleType] = {
    "crowdhuman": crowdhuman,
    "motchallenge": motchallenge,
    "jde": jde,
}
FINGERPRINT_VERSION = 1
HASH_CHUNK_BYTES = 1 << 20


def read_records(
    manifest: DatasetManifest, split: str | None = None, root: Path | str | None = None
) -> tuple[list[ImageRecord], ReaderStats]:
    """All records of ``split`` (default: the manifest's default split) and their statistics.

    ``root`` None resolves it from the environment variable or the manifest default.
    Warnings (DatasetWarning) are both emitted and listed in the statistics.
    """
    spec = manifest.split(split)
    dataset_root = resolve_root(manifest, root)
    stats = StatsCollector()
    records = FORMAT_READERS[manifest.format].read(manifest, spec, dataset_root, stats)
    if not records:
        raise EmptyDatasetError(
            f"dataset '{manifest.name}' split '{spec.name}' under {dataset_root} selects no images"
        )
    return records, stats.freeze()


def dataset_fingerprint(
    manifest: DatasetManifest, split: str | None = None, root: Path | str | None = None
) -> str:
    """sha256 over the format, options and split spec and every annotation file's bytes.

    Files enter by their path relative to the root, so moving the dataset keeps the
    fingerprint; editing any annotation, or the split, changes it. A referenced file
    that does not exist (a JDE image without labels) enters as a marker.
    """
    spec = manifest.split(split)
    dataset_root = resolve_root(manifest, root)
    digest = hashlib.sha256()
    header = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "format": manifest.format,
        "options": manifest.options,
        "has_identities": manifest.has_identities,
        "split": asdict(spec),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path in FORMAT_READERS[manifest.format].annotation_files(manifest, spec, dataset_root):
        digest.update(b"\0file\0" + path.relative_to(dataset_root).as_posix().encode() + b"\0")
        if not path.is_file():
            digest.update(b"absent")
            continue
        digest.update(str(path.stat().st_size).encode() + b"\0")
        with open(path, "rb") as stream:
            while chunk := stream.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()
