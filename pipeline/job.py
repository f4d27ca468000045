"""A distillation job as a typed config, and the steps that turn it into a runner request.

``python -m pipeline.distill`` builds a :class:`DistillConfig` from its options and stops;
:func:`prepare_distillation` reads the dataset and builds the teacher, and
:func:`pipeline.runner.distill` writes the shards. Library users (benchmarks, notebooks) call
the same functions with a config of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline import datasets
from pipeline.datasets import DatasetManifest, ReaderStats
from pipeline.records import ImageRecord
from pipeline.runner import ClusterConfig, DistillRequest
from pipeline.shards.schema import DTYPES, FORMATS
from teacher import Teacher, TeacherConfig, build_teacher

DEFAULT_OUT_PARENT = Path("out") / "shards"


@dataclass(frozen=True)
class DatasetSelection:
    """Which images: a manifest (built-in name or YAML path), one of its splits, and the root."""

    manifest: str
    split: str | None = None  # None: the manifest's default split
    root: Path | None = None  # None: $root_env, else the manifest's default root


@dataclass(frozen=True)
class ShardOutput:
    """Where and how the shards are written."""

    out_dir: Path | None = None  # None: out/shards/<dataset>-<split>-<teacher>
    format: str = "parquet"
    dtype: str = "float16"
    shard_size: int = 64
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"shard format must be one of {list(FORMATS)}, got {self.format!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"shard dtype must be one of {list(DTYPES)}, got {self.dtype!r}")


@dataclass(frozen=True)
class DistillConfig:
    """Everything one distillation run needs; ``allow_random_teacher`` is for timing benchmarks only."""

    dataset: DatasetSelection
    teacher: TeacherConfig
    output: ShardOutput = ShardOutput()
    cluster: ClusterConfig = ClusterConfig()
    allow_random_teacher: bool = False


@dataclass(frozen=True)
class LoadedDataset:
    """A dataset split read and checked: its records, reader statistics and fingerprint."""

    manifest: DatasetManifest
    root: Path
    split: str
    records: tuple[ImageRecord, ...]
    stats: ReaderStats
    source_bytes: int
    fingerprint: str

    @property
    def num_boxes(self) -> int:
        return sum(record.num_boxes for record in self.records)


@dataclass(frozen=True)
class PreparedDistillation:
    """The inputs of :func:`pipeline.runner.distill`: the request and the teacher it needs."""

    dataset: LoadedDataset
    teacher: Teacher
    request: DistillRequest


def load_dataset(selection: DatasetSelection) -> LoadedDataset:
    """Read every record of the selected split and check that its images exist."""
    manifest = datasets.load_manifest(selection.manifest)
    root = datasets.resolve_root(manifest, selection.root)
    split = selection.split or manifest.default_split
    records, stats = datasets.read_records(manifest, split, root)
    return LoadedDataset(
        manifest=manifest,
        root=root,
        split=split,
        records=tuple(records),
        stats=stats,
        source_bytes=datasets.check_images_exist(records, root),
        fingerprint=datasets.dataset_fingerprint(manifest, split, root),
    )


def distill_request(
    dataset: LoadedDataset, output: ShardOutput, *, teacher_name: str, allow_random_teacher: bool = False
) -> DistillRequest:
    """The runner's request for ``dataset``; the default folder names dataset, split and teacher."""
    out_dir = output.out_dir or DEFAULT_OUT_PARENT / f"{dataset.manifest.name}-{dataset.split}-{teacher_name}"
    return DistillRequest(
        dataset_name=dataset.manifest.name,
        split=dataset.split,
        dataset_root=dataset.root,
        dataset_fingerprint=dataset.fingerprint,
        records=dataset.records,
        source_bytes=dataset.source_bytes,
        reader_stats=dataset.stats.as_dict(),
        out_dir=out_dir,
        format=output.format,
        dtype=output.dtype,
        shard_size=output.shard_size,
        overwrite=output.overwrite,
        allow_random_teacher=allow_random_teacher,
    )


def prepare_distillation(config: DistillConfig) -> PreparedDistillation:
    """Read the dataset (errors first: they are cheaper than loading the teacher), then build the teacher."""
    dataset = load_dataset(config.dataset)
    teacher = build_teacher(config.teacher, allow_random_weights=config.allow_random_teacher)
    request = distill_request(
        dataset,
        config.output,
        teacher_name=config.teacher.name,
        allow_random_teacher=config.allow_random_teacher,
    )
    return PreparedDistillation(dataset=dataset, teacher=teacher, request=request)
