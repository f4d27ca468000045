"""Split a dataset into shards and decide which shards an output directory already holds.

A shard is *complete* when its file exists, a completion record for it exists
(``.partial/<file>.json`` during a run, ``manifest.json`` after one), the
record's plan key equals the current plan's, and the file's sha256 matches the
record. Anything else is redone. Temporary files of an interrupted run are
removed; files that are not ours are never touched.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.records import ImageRecord
from pipeline.shards.manifest import ManifestError, ShardEntry, read_manifest, sha256_file
from pipeline.shards.schema import MANIFEST_NAME, shard_file_name

PARTIAL_DIR = ".partial"
_OUR_FILE = re.compile(r"^(shard-\d{5}\.(parquet|h5)|manifest\.json|\..*\.tmp-\d+)$")


@dataclass(frozen=True)
class RunIdentity:
    """Everything that makes two runs produce the same shards."""

    dataset: str
    split: str
    dataset_fingerprint: str
    teacher_id: str
    format: str
    dtype: str
    shard_size: int


@dataclass(frozen=True)
class PlannedShard:
    index: int
    file: str
    plan_key: str
    records: tuple[ImageRecord, ...]

    @property
    def num_boxes(self) -> int:
        return sum(r.num_boxes for r in self.records)

    @property
    def num_embeddable(self) -> int:
        return sum(r.num_embeddable for r in self.records)


def plan_shards(records: list[ImageRecord], identity: RunIdentity) -> list[PlannedShard]:
    size = identity.shard_size
    if size < 1:
        raise PipelineError(f"--shard-size must be at least 1 (got {size})")
    shards = []
    for index, start in enumerate(range(0, len(records), size)):
        chunk = tuple(records[start : start + size])
        key_source = json.dumps(
            {"run": asdict(identity), "index": index, "images": [r.image for r in chunk]}, sort_keys=True
        )
        shards.append(
            PlannedShard(
                index=index,
                file=shard_file_name(index, identity.format),
                plan_key=hashlib.sha256(key_source.encode()).hexdigest(),
                records=chunk,
            )
        )
    return shards


def completion_record_path(out_dir: Path, file: str) -> Path:
    return out_dir / PARTIAL_DIR / f"{file}.json"


def write_completion_record(out_dir: Path, entry: ShardEntry) -> None:
    from pipeline.shards.manifest import write_atomically

    path = completion_record_path(out_dir, entry.file)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(asdict(entry), sort_keys=True).encode())


def _recorded_entries(out_dir: Path) -> dict[str, ShardEntry]:
    entries: dict[str, ShardEntry] = {}
    if (out_dir / MANIFEST_NAME).exists():
        try:
            manifest = read_manifest(out_dir)
        except ManifestError:
            manifest = None  # an unreadable manifest is rebuilt from the shards' completion records
        if manifest is not None:
            entries.update({s.file: s for s in manifest.shards})
    partial = out_dir / PARTIAL_DIR
    if partial.is_dir():
        for record in sorted(partial.glob("*.json")):
            try:
                entry = ShardEntry(**json.loads(record.read_text()))
            except (OSError, ValueError, TypeError):
                record.unlink()  # a record cut off mid-write: its shard is simply redone
                continue
            entries[entry.file] = entry
    return entries


def foreign_files(out_dir: Path) -> list[str]:
    if not out_dir.is_dir():
        return []
    return sorted(p.name for p in out_dir.iterdir() if p.name != PARTIAL_DIR and not _OUR_FILE.match(p.name))


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    """Create ``out_dir``; with ``overwrite`` remove our files from it. Refuse foreign content."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PipelineError(f"--out {out_dir} exists and is not a directory")
    strangers = foreign_files(out_dir)
    if strangers:
        shown = ", ".join(strangers[:5])
        raise PipelineError(
            f"--out {out_dir} holds files that are not shards of this tool ({shown}"
            f"{', …' if len(strangers) > 5 else ''}); choose an empty or new directory"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for path in out_dir.iterdir():
            if path.name == PARTIAL_DIR:
                for record in path.glob("*"):
                    record.unlink()
                path.rmdir()
            else:
                path.unlink()
    for stale in out_dir.glob(".*.tmp-*"):
        stale.unlink()


def find_complete(out_dir: Path, shards: list[PlannedShard]) -> dict[int, ShardEntry]:
    """Shards already written by an earlier run with the same plan and an intact checksum."""
    recorded = _recorded_entries(out_dir)
    planned_files = {s.file for s in shards}
    mismatched = [f for f, e in recorded.items() if f in planned_files and _plan_key(shards, f) != e.plan_key]
    complete: dict[int, ShardEntry] = {}
    for shard in shards:
        entry = recorded.get(shard.file)
        path = out_dir / shard.file
        if entry is None or entry.plan_key != shard.plan_key or not path.is_file():
            continue
        if path.stat().st_size == entry.bytes and sha256_file(path) == entry.sha256:
            complete[shard.index] = entry
    if mismatched:
        raise PipelineError(
            f"--out {out_dir} holds shards of a different run (dataset, split, teacher, format, dtype, "
            f"shard size or annotations differ: {', '.join(sorted(mismatched)[:3])}); "
            "pass --overwrite to replace them or choose another --out"
        )
    return complete


def _plan_key(shards: list[PlannedShard], file: str) -> str | None:
    return next((s.plan_key for s in shards if s.file == file), None)


def remove_stale_shards(out_dir: Path, shards: list[PlannedShard], fmt: str) -> None:
    """Delete shard files the new plan does not contain (e.g. after a smaller rerun)."""
    planned = {s.file for s in shards}
    for pattern in ("shard-*.parquet", "shard-*.h5"):
        for path in out_dir.glob(pattern):
            if path.name not in planned:
                path.unlink()
                record = completion_record_path(out_dir, path.name)
                if record.exists():
                    record.unlink()
