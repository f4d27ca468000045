"""Shard encodings: Parquet and HDF5 hold the same logical content, deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.shards import ShardReadError, ShardRecord, ShardTable, read_shard, write_shard
from pipeline.shards.manifest import sha256_file


def _records(dim: int = 16) -> list[ShardRecord]:
    rng = np.random.default_rng(7)
    records = []
    for i, n in enumerate([3, 0, 5, 1]):
        ignore = np.arange(n) % 3 == 2
        emb = rng.standard_normal((n, dim)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        emb[ignore] = np.nan
        norms = rng.uniform(5, 20, n).astype(np.float32)
        norms[ignore] = np.nan
        xy = rng.uniform(0, 50, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(2, 40, (n, 2))], axis=1).astype(np.float32)
        records.append(
            ShardRecord(
                f"img1/{i:06d}.jpg", 100, 90, boxes, np.arange(n) - 1, ignore, emb, norms, "seq", i + 1
            )
        )
    return records


def _assert_same(a: ShardTable, b: ShardTable) -> None:
    assert a.images == b.images and a.sequences == b.sequences
    for name in ("widths", "heights", "frames", "offsets", "boxes", "identities", "ignore"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_array_equal(a.teacher_norms, b.teacher_norms)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_parquet_and_hdf5_hold_the_same_content(tmp_path, dtype):
    table = ShardTable.from_records(_records(), 16, dtype)
    tables = {}
    for fmt, name in (("parquet", "a.parquet"), ("hdf5", "a.h5")):
        write_shard(tmp_path / name, table, {"teacher_id": "t"}, fmt)
        tables[fmt], metadata = read_shard(tmp_path / name)
        assert metadata == {"teacher_id": "t"}
        assert tables[fmt].embeddings.dtype == np.dtype(dtype)
    _assert_same(tables["parquet"], tables["hdf5"])
    _assert_same(tables["parquet"], table)
    record = tables["hdf5"].record(2)
    assert np.isnan(record.embeddings[record.ignore]).all()
    assert record.has_embedding.tolist() == (~record.ignore).tolist()


@pytest.mark.parametrize("fmt,name", [("parquet", "s.parquet"), ("hdf5", "s.h5")])
def test_writes_are_byte_deterministic_and_leave_no_temporary(tmp_path, fmt, name):
    table = ShardTable.from_records(_records(), 16, "float16")
    write_shard(tmp_path / name, table, {"k": 1}, fmt)
    first = sha256_file(tmp_path / name)
    write_shard(tmp_path / name, table, {"k": 1}, fmt)
    assert sha256_file(tmp_path / name) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("fmt,name", [("parquet", "s.parquet"), ("hdf5", "s.h5")])
def test_truncated_shard_is_a_read_error_naming_the_file(tmp_path, fmt, name):
    write_shard(tmp_path / name, ShardTable.from_records(_records(), 16, "float16"), {}, fmt)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardReadError, match=name):
        read_shard(tmp_path / name)


def test_empty_images_are_kept(tmp_path):
    records = [r for r in _records() if len(r.boxes) == 0]
    table = ShardTable.from_records(records, 16, "float16")
    write_shard(tmp_path / "e.parquet", table, {}, "parquet")
    back, _ = read_shard(tmp_path / "e.parquet")
    assert back.num_rows == 1 and back.num_boxes == 0
