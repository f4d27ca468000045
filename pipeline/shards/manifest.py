"""``manifest.json``: the index of a shard directory, and atomic file helpers."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from pipeline.shards.errors import ShardError
from pipeline.shards.schema import KNOWN_SCHEMA_VERSIONS, MANIFEST_KIND, MANIFEST_NAME, SCHEMA_VERSION


class ManifestError(ShardError):
    """The manifest is missing, unreadable or of an unknown schema, or names files outside its directory."""


class ShardPathError(ShardError):
    """A listed shard file that resolves (through a link) to a file outside the shard directory."""


@dataclass(frozen=True)
class ShardEntry:
    file: str
    index: int
    rows: int
    boxes: int
    embeddings: int
    bytes: int
    sha256: str
    plan_key: str


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    split: str
    root: str
    fingerprint: str
    images: int
    boxes: int
    source_bytes: int


@dataclass(frozen=True)
class ShardManifest:
    format: str
    dtype: str
    embedding_dim: int
    shard_size: int
    dataset: DatasetInfo
    teacher: dict
    teacher_id: str
    shards: tuple[ShardEntry, ...]
    schema_version: int = SCHEMA_VERSION
    kind: str = MANIFEST_KIND
    stats: dict = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def num_boxes(self) -> int:
        return sum(s.boxes for s in self.shards)

    @property
    def num_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def to_json(self) -> str:
        data = asdict(self)
        data["shards"] = [asdict(s) for s in self.shards]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> ShardManifest:
        version = data.get("schema_version")
        if data.get("kind") != MANIFEST_KIND:
            raise ManifestError(f"not a tdt shard manifest (kind={data.get('kind')!r})")
        if version not in KNOWN_SCHEMA_VERSIONS:
            raise ManifestError(
                f"unknown shard schema version {version!r} (this tool reads {sorted(KNOWN_SCHEMA_VERSIONS)})"
            )
        try:
            return cls(
                format=data["format"],
                dtype=data["dtype"],
                embedding_dim=int(data["embedding_dim"]),
                shard_size=int(data["shard_size"]),
                dataset=DatasetInfo(**data["dataset"]),
                teacher=dict(data["teacher"]),
                teacher_id=data["teacher_id"],
                shards=tuple(
                    _checked_entry(position, ShardEntry(**s)) for position, s in enumerate(data["shards"])
                ),
                schema_version=version,
                kind=data["kind"],
                stats=dict(data.get("stats", {})),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ManifestError(f"malformed manifest: {error}") from error


def _checked_entry(position: int, entry: ShardEntry) -> ShardEntry:
    """``entry`` when its file is a plain name: a manifest cannot point outside its directory."""
    name = entry.file
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "\\" in name
        or PurePosixPath(name).name != name
    ):
        raise ManifestError(
            f"shard entry {position} names the file {name!r}: a shard must be a file name inside "
            "the shard directory (no folders, '..' or absolute paths)"
        )
    return entry


def shard_path(directory: Path, file: str) -> Path:
    """``directory / file``, refused when links make it resolve outside ``directory``.

    ``file`` is a manifest entry's name (a plain name, see :func:`read_manifest`).
    """
    path = Path(directory) / file
    resolved = path.resolve()
    if not resolved.is_relative_to(Path(directory).resolve()):
        raise ShardPathError(f"{path}: resolves to {resolved}, outside the shard directory {directory}")
    return path


def read_manifest(directory: Path) -> ShardManifest:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest (is this a shard directory written by pipeline.distill?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path}: unreadable manifest: {error}") from error
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: manifest is not a JSON object")
    try:
        return ShardManifest.from_dict(data)
    except ManifestError as error:
        raise ManifestError(f"{path}: {error}") from error


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, fsync, then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_manifest(directory: Path, manifest: ShardManifest) -> None:
    write_atomically(Path(directory) / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
