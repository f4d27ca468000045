"""Distil a detection dataset into teacher-embedding shards.

    python -m pipeline.distill --dataset pets09-s2l1-half1 --teacher osnet_x0_25 \\
        --teacher-weights ../shared/data/weights/osnet_x0_25_msmt17.pth --out out/shards-pets

Reads every ground-truth box, crops it, runs the re-ID teacher and writes
checksummed shards plus ``manifest.json``. Rerunning the same command resumes:
complete shards are kept, the rest are redone.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.job import DatasetSelection, DistillConfig, ShardOutput, prepare_distillation
from pipeline.runner import ClusterConfig, DistillReport, DistillRequest, distill
from pipeline.shards.schema import DTYPES, FORMATS
from pipeline.stages import ResourceUse, format_per_box
from tdt.process import configure_for_cli
from teacher import TeacherError, add_teacher_arguments, teacher_config_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.distill",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Datasets are described by YAML manifests in manifests/ (--list-datasets). Teacher weights "
            "are local files from the torchreid model zoo; nothing is downloaded."
        ),
    )
    _add_dataset_arguments(parser)
    add_teacher_arguments(parser, short_aliases=True)
    _add_output_arguments(parser)
    _add_compute_arguments(parser)
    return parser


def _add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("dataset")
    which = source.add_mutually_exclusive_group()
    which.add_argument("--dataset", help="dataset name (a manifest in manifests/), e.g. crowdhuman")
    which.add_argument("--manifest", type=Path, help="path to a dataset manifest YAML instead of a name")
    source.add_argument("--split", help="named split of the manifest (default: the manifest's default split)")
    source.add_argument("--root", help="dataset root directory (overrides the manifest and its env variable)")
    source.add_argument("--list-datasets", action="store_true", help="list the known datasets and exit")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out", type=Path, help="shard directory (default: out/shards/<dataset>-<split>-<teacher>)"
    )
    output.add_argument(
        "--format", choices=FORMATS, default="parquet", help="shard file format (default %(default)s)"
    )
    output.add_argument(
        "--dtype", choices=DTYPES, default="float16", help="stored embedding precision (default %(default)s)"
    )
    output.add_argument(
        "--shard-size",
        type=int,
        default=64,
        help="images per shard, one Dask task each (default %(default)s)",
    )
    output.add_argument("--overwrite", action="store_true", help="replace shards of a different earlier run")


def _add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    compute = parser.add_argument_group("compute")
    compute.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="LocalCluster worker processes (one torch thread each; default %(default)s); "
        "0 runs in this process without Dask, with this process's torch threads",
    )
    compute.add_argument(
        "--preprocess-workers",
        type=int,
        default=0,
        metavar="N",
        help="instead of Dask: N processes decode, crop and resize, and this process runs the teacher "
        "(--device, large --batch-size) on their crops and writes the shards; the layout for a GPU "
        "(default %(default)s: off)",
    )
    compute.add_argument(
        "--scheduler",
        help="address of an existing Dask scheduler (e.g. tcp://10.0.0.5:8786 or tls://…) instead of a LocalCluster; "
        "its workers must see the dataset root and --out at the same paths",
    )
    compute.add_argument(
        "--scheduler-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for --scheduler (default %(default)s)",
    )
    compute.add_argument("--tls-ca-file", help="CA certificate for a tls:// scheduler")
    compute.add_argument("--tls-cert", help="client certificate for a tls:// scheduler")
    compute.add_argument("--tls-key", help="client private key for a tls:// scheduler")
    compute.add_argument("--quiet", action="store_true", help="no progress bar")
    compute.add_argument(
        "--allow-random-teacher",
        action="store_true",
        help=argparse.SUPPRESS,  # timing benchmarks only: embeddings from random weights are meaningless
    )


def config_from_args(args: argparse.Namespace) -> DistillConfig:
    """The :class:`~pipeline.job.DistillConfig` the options describe (teacher weights fall back to the env)."""
    return DistillConfig(
        dataset=DatasetSelection(
            manifest=str(args.manifest) if args.manifest else args.dataset,
            split=args.split,
            root=Path(args.root) if args.root else None,
        ),
        teacher=teacher_config_from_args(args),
        output=ShardOutput(
            out_dir=args.out,
            format=args.format,
            dtype=args.dtype,
            shard_size=args.shard_size,
            overwrite=args.overwrite,
        ),
        cluster=ClusterConfig(
            workers=args.workers,
            preprocess_workers=args.preprocess_workers,
            scheduler=args.scheduler,
            tls_ca_file=args.tls_ca_file,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            connect_timeout_s=args.scheduler_timeout,
        ),
        allow_random_teacher=args.allow_random_teacher,
    )


def run(config: DistillConfig, *, quiet: bool = False) -> DistillReport:
    """Prepare the run ``config`` describes and write its shards, with a progress bar unless ``quiet``."""
    prepared = prepare_distillation(config)
    request = prepared.request
    if not quiet:
        print(
            f"distilling {request.dataset_name}/{request.split}: {len(request.records)} images, "
            f"{prepared.dataset.num_boxes} boxes -> {request.out_dir} ({request.format}, {request.dtype}); "
            f"teacher {config.teacher.name} ({prepared.teacher.fingerprint_id()})",
            file=sys.stderr,
        )
    with _progress_bar(request, quiet=quiet) as progress:
        return distill(request, prepared.teacher, config.cluster, progress=progress)


class _progress_bar:
    """A tqdm bar over boxes still to embed (quiet: no bar)."""

    def __init__(self, request: DistillRequest, quiet: bool):
        self._request = request
        self._quiet = quiet
        self._bar = None

    def __enter__(self):
        if self._quiet:
            return None
        from tqdm import tqdm

        total = sum(r.num_embeddable for r in self._request.records)
        self._bar = tqdm(total=total, unit="box", desc="distil", dynamic_ncols=True, file=sys.stderr)
        return self._update

    def _update(self, result) -> None:
        self._bar.update(result.entry.embeddings)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()
        return False


def format_summary(report: DistillReport) -> str:
    m = report.manifest
    stats = m.stats
    overhead = 100.0 * m.num_bytes / m.dataset.source_bytes if m.dataset.source_bytes else float("nan")
    embedded = sum(s.embeddings for s in m.shards)
    lines = [
        f"shards      {len(m.shards)} in {report.out_dir}",
        f"  written {report.shards_written}, reused from an earlier run {report.shards_reused}",
        f"images      {m.num_images}",
        f"boxes       {m.num_boxes} ({embedded} embedded, {m.num_boxes - embedded} ignore/degenerate without embedding)",
        f"reader      clipped {stats.get('clipped', 0)}, degenerate {stats.get('degenerate', 0)}, "
        f"ignore {stats.get('ignored', 0)}",
        f"throughput  {report.boxes_per_second:.1f} boxes/s ({report.boxes_embedded_now} boxes in {report.seconds:.1f} s)",
        f"storage     {m.num_bytes / 1e6:.2f} MB shards = {overhead:.1f}% of {m.dataset.source_bytes / 1e6:.1f} MB "
        f"source images ({m.format}, {m.dtype}, dim {m.embedding_dim})",
        f"teacher     {m.teacher.get('architecture', '?')} {m.teacher_id}",
    ]
    boxes = report.boxes_embedded_now
    if boxes:
        lines += [
            f"layout      {report.layout}",
            f"per box     {format_per_box(report.stages, boxes)}",
            f"            {_cpu_per_box(report.resources, boxes)} in the shard tasks",
            f"            {_cpu_per_box(report.all_processes, boxes)} in all processes of the run",
        ]
    return "\n".join(lines)


def _cpu_per_box(use: ResourceUse, boxes: int) -> str:
    return (
        f"CPU user {1000 * use.user_seconds / boxes:.2f} ms, system {1000 * use.system_seconds / boxes:.2f} ms, "
        f"{use.minor_faults / boxes:.0f} page faults"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_datasets:
        from pipeline import datasets

        for name in datasets.available_datasets():
            print(name)
        return 0
    if not args.dataset and not args.manifest:
        parser.error("one of --dataset or --manifest is required (see --list-datasets)")
    configure_for_cli()
    try:
        report = run(config_from_args(args), quiet=args.quiet)
    except (PipelineError, TeacherError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: complete shards are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    print(format_summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
