"""Small real shard directories for the student's tests.

Images and boxes are real (PETS09-S2L1 frames and their MOT15 ground truth);
the embeddings are random unit vectors, which is enough for plumbing tests.
MOT15 rows with confidence 0 become ignore boxes (identity -1, no embedding),
as the pipeline's MOTChallenge reader does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.shards import (
    SCHEMA_VERSION,
    DatasetInfo,
    ShardEntry,
    ShardManifest,
    ShardRecord,
    ShardTable,
    sha256_file,
    shard_file_name,
    write_manifest,
    write_shard,
)
from student.config import ModelConfig

PETS_WIDTH, PETS_HEIGHT = 768, 576
# A student small enough to train a few steps in a test (random backbone weights).
TINY_MODEL = ModelConfig(
    backbone="mobilenet_v2_fpn",
    fpn_channels=32,
    head_width=32,
    head_depth=1,
    embedding_dim=16,
    embedding_head="per_location",
    embedding_head_width=32,
    input_height=128,
    input_width=160,
)

BUSY_PETS_FRAMES = (133, 150, 200, 250)


def pets_ground_truth(pets_dir: Path) -> np.ndarray:
    return np.loadtxt(pets_dir / "gt" / "gt.txt", delimiter=",", dtype=np.float64, ndmin=2)


def pets_records(
    pets_dir: Path,
    frames: tuple[int, ...] = BUSY_PETS_FRAMES,
    negative_frames: tuple[int, ...] = (300,),
    *,
    dim: int = 16,
    seed: int = 0,
) -> list[ShardRecord]:
    """Records of the given frames; ``negative_frames`` are real images listed with no boxes."""
    ground_truth = pets_ground_truth(pets_dir)
    rng = np.random.default_rng(seed)
    records = []
    for frame in frames:
        rows = ground_truth[ground_truth[:, 0] == frame]
        boxes = np.stack([rows[:, 2], rows[:, 3], rows[:, 2] + rows[:, 4], rows[:, 3] + rows[:, 5]], axis=1)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, PETS_WIDTH)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, PETS_HEIGHT)
        ignore = rows[:, 6] == 0
        identities = np.where(ignore, -1, rows[:, 1]).astype(np.int64)
        embeddings = rng.standard_normal((len(rows), dim)).astype(np.float32)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        embeddings[ignore] = np.nan
        norms = rng.uniform(5, 20, len(rows)).astype(np.float32)
        norms[ignore] = np.nan
        records.append(
            ShardRecord(
                f"img1/{frame:06d}.jpg",
                PETS_WIDTH,
                PETS_HEIGHT,
                boxes.astype(np.float32),
                identities,
                ignore,
                embeddings,
                norms,
                "PETS09-S2L1",
                frame,
            )
        )
    for frame in negative_frames:
        records.append(
            ShardRecord(
                f"img1/{frame:06d}.jpg",
                PETS_WIDTH,
                PETS_HEIGHT,
                np.zeros((0, 4), np.float32),
                np.zeros(0, np.int64),
                np.zeros(0, bool),
                np.zeros((0, dim), np.float32),
                np.zeros(0, np.float32),
                "PETS09-S2L1",
                frame,
            )
        )
    return records


def write_shard_dir(
    out_dir: Path,
    records: list[ShardRecord],
    *,
    dataset_root: Path,
    dim: int = 16,
    teacher_id: str = "test-teacher-0",
    dataset_name: str = "pets09",
    shard_size: int = 2,
    fmt: str = "parquet",
    dtype: str = "float16",
) -> Path:
    """A complete shard directory (shards + manifest.json) holding ``records``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, start in enumerate(range(0, len(records), shard_size)):
        chunk = records[start : start + shard_size]
        table = ShardTable.from_records(chunk, dim, dtype)
        name = shard_file_name(index, fmt)
        write_shard(out_dir / name, table, {"schema_version": SCHEMA_VERSION, "teacher_id": teacher_id}, fmt)
        entries.append(
            ShardEntry(
                file=name,
                index=index,
                rows=table.num_rows,
                boxes=table.num_boxes,
                embeddings=table.num_embeddings,
                bytes=(out_dir / name).stat().st_size,
                sha256=sha256_file(out_dir / name),
                plan_key=f"test-{index}",
            )
        )
    manifest = ShardManifest(
        format=fmt,
        dtype=dtype,
        embedding_dim=dim,
        shard_size=shard_size,
        dataset=DatasetInfo(
            name=dataset_name,
            split="train",
            root=str(Path(dataset_root).resolve()),
            fingerprint=f"fingerprint-{dataset_name}",
            images=len(records),
            boxes=sum(len(r.boxes) for r in records),
            source_bytes=0,
        ),
        teacher={"architecture": "random-test-teacher", "dim": dim, "id": teacher_id},
        teacher_id=teacher_id,
        shards=tuple(entries),
    )
    write_manifest(out_dir, manifest)
    return out_dir


def write_pets_shard_dir(out_dir: Path, pets_dir: Path, **options) -> Path:
    """PETS frames 133, 150, 200, 250 (frame 150 has an ignore box) plus negative frame 300."""
    dim = options.pop("dim", 16)
    frames = options.pop("frames", BUSY_PETS_FRAMES)
    negative_frames = options.pop("negative_frames", (300,))
    records = pets_records(pets_dir, frames, negative_frames, dim=dim, seed=options.pop("seed", 0))
    return write_shard_dir(out_dir, records, dataset_root=pets_dir, dim=dim, **options)


def mot17_records(sequence_dir: Path, frames: tuple[int, ...] = (1, 2), *, dim: int = 16, seed: int = 0):
    """Records of MOT17 frames (1920x1080): class-1 rows with mark 1 are people, the rest ignore."""
    ground_truth = np.loadtxt(sequence_dir / "gt" / "gt.txt", delimiter=",", dtype=np.float64, ndmin=2)
    rng = np.random.default_rng(seed)
    records = []
    for frame in frames:
        rows = ground_truth[ground_truth[:, 0] == frame]
        boxes = np.stack([rows[:, 2], rows[:, 3], rows[:, 2] + rows[:, 4], rows[:, 3] + rows[:, 5]], axis=1)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, 1920)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, 1080)
        ignore = (rows[:, 6] == 0) | (rows[:, 7] != 1)
        embeddings = rng.standard_normal((len(rows), dim)).astype(np.float32)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        embeddings[ignore] = np.nan
        records.append(
            ShardRecord(
                f"img1/{frame:06d}.jpg",
                1920,
                1080,
                boxes.astype(np.float32),
                np.where(ignore, -1, rows[:, 1]).astype(np.int64),
                ignore,
                embeddings,
                np.where(ignore, np.nan, 10.0).astype(np.float32),
                sequence_dir.name,
                frame,
            )
        )
    return records


def distill_real_pets_frames(folder: Path, pets_dir: Path, teacher_weights: Path) -> Path:
    """PETS frames 131-134 (7-8 people each) distilled by the real OSNet x0.25 teacher into ``folder/shards``."""
    from pipeline.distill import main as distill_main

    manifest = folder / "pets-few.yaml"
    manifest.write_text(
        "format: motchallenge\n"
        "description: four real PETS09 frames\n"
        f"root: {{default: {pets_dir}, env: TDT_TEST_PETS_ROOT}}\n"
        "has_identities: true\n"
        "options: {gt_format: mot15}\n"
        "default_split: few\n"
        "splits:\n"
        "  few: {sequences: ['.'], frames: [131, 134]}\n"
        "source: {url: 'https://motchallenge.net', instructions: test, layout: test}\n"
    )
    out = folder / "shards"
    args = ["--manifest", str(manifest), "--teacher", "osnet_x0_25", "--teacher-weights", str(teacher_weights),
            "--out", str(out), "--workers", "0", "--quiet"]  # fmt: skip
    assert distill_main(args) == 0
    return out


def small_centernet(**changes) -> ModelConfig:
    """A CenterNet config small enough for tests at 64 x 96 (random weights); ``changes`` override."""
    values = dict(
        family="centernet",
        backbone="mobilenet_v2_fpn",
        neck_channels=(32, 32, 32),
        head_width=32,
        embedding_dim=8,
        embedding_head_width=32,
        input_height=64,
        input_width=96,
    )
    return ModelConfig(**{**values, **changes})
