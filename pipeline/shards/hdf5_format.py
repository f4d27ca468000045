"""HDF5 encoding of a :class:`ShardTable` (same logical content as Parquet)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from pipeline.shards.schema import METADATA_KEY
from pipeline.shards.table import ShardTable

_STRING = h5py.string_dtype(encoding="utf-8")


def write(path: Path, table: ShardTable, metadata: dict) -> None:
    has_embedding = table.has_embedding
    stored = np.where(has_embedding[:, None], table.embeddings, 0).astype(table.embeddings.dtype)
    norms = np.where(has_embedding, table.teacher_norms, 0).astype(np.float32)
    # track_times=False keeps files byte-identical across runs, so resumed shards checksum equal.
    options = {"track_times": False}
    with h5py.File(path, "w", libver=("earliest", "v110"), track_order=False) as f:
        f.attrs[METADATA_KEY] = json.dumps(metadata, sort_keys=True)
        f.create_dataset("image", data=np.array(table.images, dtype=object), dtype=_STRING, **options)
        f.create_dataset("sequence", data=np.array(table.sequences, dtype=object), dtype=_STRING, **options)
        f.create_dataset("width", data=table.widths.astype(np.int32), **options)
        f.create_dataset("height", data=table.heights.astype(np.int32), **options)
        f.create_dataset("frame", data=table.frames.astype(np.int32), **options)
        f.create_dataset("offsets", data=table.offsets.astype(np.int64), **options)
        f.create_dataset("boxes", data=table.boxes.reshape(-1, 4).astype(np.float32), **options)
        f.create_dataset("identities", data=table.identities.astype(np.int64), **options)
        f.create_dataset("ignore", data=table.ignore.astype(bool), **options)
        f.create_dataset("has_embedding", data=has_embedding, **options)
        f.create_dataset("embedding", data=stored.reshape(-1, table.embedding_dim), **options)
        f.create_dataset("teacher_norm", data=norms, **options)


def read_metadata(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs[METADATA_KEY])


def read(path: Path) -> tuple[ShardTable, dict]:
    with h5py.File(path, "r") as f:
        metadata = json.loads(f.attrs[METADATA_KEY])
        has_embedding = f["has_embedding"][()].astype(bool)
        embeddings = f["embedding"][()]
        embeddings = embeddings.copy()
        embeddings[~has_embedding] = np.nan
        norms = f["teacher_norm"][()].astype(np.float32)
        norms[~has_embedding] = np.nan
        table = ShardTable(
            images=[s.decode("utf-8") if isinstance(s, bytes) else s for s in f["image"][()]],
            widths=f["width"][()].astype(np.int32),
            heights=f["height"][()].astype(np.int32),
            sequences=[s.decode("utf-8") if isinstance(s, bytes) else s for s in f["sequence"][()]],
            frames=f["frame"][()].astype(np.int32),
            offsets=f["offsets"][()].astype(np.int64),
            boxes=f["boxes"][()].astype(np.float32).reshape(-1, 4),
            identities=f["identities"][()].astype(np.int64),
            ignore=f["ignore"][()].astype(bool),
            embeddings=embeddings,
            teacher_norms=norms,
        )
    return table, metadata
