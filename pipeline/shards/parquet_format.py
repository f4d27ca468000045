"""Parquet encoding of a :class:`ShardTable` (the default format)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.shards.schema import METADATA_KEY
from pipeline.shards.table import ShardTable

_ARROW_FLOAT = {"float16": pa.float16(), "float32": pa.float32()}


def _list_of(values: pa.Array, offsets: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


def encode(table: ShardTable, metadata: dict) -> pa.Table:
    dim = table.embedding_dim
    dtype = str(table.embeddings.dtype)
    has_embedding = table.has_embedding
    stored = np.where(has_embedding[:, None], table.embeddings, 0).astype(dtype)
    embedding_items = pa.FixedSizeListArray.from_arrays(
        pa.array(stored.reshape(-1), type=_ARROW_FLOAT[dtype]), dim, mask=pa.array(~has_embedding)
    )
    norms = pa.array(table.teacher_norms, type=pa.float32(), mask=~has_embedding)
    box_items = pa.FixedSizeListArray.from_arrays(pa.array(table.boxes.reshape(-1)), 4)
    columns = {
        "image": pa.array(table.images, type=pa.string()),
        "width": pa.array(table.widths, type=pa.int32()),
        "height": pa.array(table.heights, type=pa.int32()),
        "sequence": pa.array(table.sequences, type=pa.string()),
        "frame": pa.array(table.frames, type=pa.int32()),
        "boxes": _list_of(box_items, table.offsets),
        "identities": _list_of(pa.array(table.identities, type=pa.int64()), table.offsets),
        "ignore": _list_of(pa.array(table.ignore, type=pa.bool_()), table.offsets),
        "embedding": _list_of(embedding_items, table.offsets),
        "teacher_norm": _list_of(norms, table.offsets),
    }
    arrow = pa.table(columns)
    return arrow.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True)})


def write(path: Path, table: ShardTable, metadata: dict) -> None:
    pq.write_table(encode(table, metadata), path, compression="zstd", write_statistics=False)


def read_metadata(path: Path) -> dict:
    schema = pq.read_schema(path)
    raw = (schema.metadata or {}).get(METADATA_KEY.encode())
    if raw is None:
        raise ValueError("no tdt metadata in the Parquet schema")
    return json.loads(raw)


def _flat(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    combined = column.combine_chunks()
    offsets = combined.offsets.to_numpy().astype(np.int64)
    values = combined.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    return offsets - offsets[0], values


def read(path: Path) -> tuple[ShardTable, dict]:
    arrow = pq.read_table(path)
    metadata = json.loads((arrow.schema.metadata or {})[METADATA_KEY.encode()])
    offsets, box_items = _flat(arrow.column("boxes"))
    _, identities = _flat(arrow.column("identities"))
    _, ignore = _flat(arrow.column("ignore"))
    _, embedding_items = _flat(arrow.column("embedding"))
    _, norms = _flat(arrow.column("teacher_norm"))
    dim = int(embedding_items.type.list_size)
    missing = embedding_items.is_null().to_numpy(zero_copy_only=False)
    embeddings = (
        embedding_items.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        if not missing.any()
        else _values_with_nulls(embedding_items, dim)
    )
    embeddings = embeddings.copy()
    embeddings[missing] = np.nan
    table = ShardTable(
        images=arrow.column("image").to_pylist(),
        widths=arrow.column("width").to_numpy().astype(np.int32),
        heights=arrow.column("height").to_numpy().astype(np.int32),
        sequences=arrow.column("sequence").to_pylist(),
        frames=arrow.column("frame").to_numpy().astype(np.int32),
        offsets=offsets,
        boxes=box_items.flatten().to_numpy(zero_copy_only=False).reshape(-1, 4).astype(np.float32),
        identities=identities.to_numpy(zero_copy_only=False).astype(np.int64),
        ignore=ignore.to_numpy(zero_copy_only=False).astype(bool),
        embeddings=embeddings,
        teacher_norms=norms.fill_null(np.nan).to_numpy(zero_copy_only=False).astype(np.float32),
    )
    return table, metadata


def _values_with_nulls(items: pa.FixedSizeListArray, dim: int) -> np.ndarray:
    # flatten() drops the slots of null lists; the child array keeps them, aligned by index.
    start = items.offset * dim
    child = items.values.slice(start, len(items) * dim)
    return child.to_numpy(zero_copy_only=False).reshape(-1, dim)
