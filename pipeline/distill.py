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
from pipeline.runner import ClusterConfig, DistillReport, DistillRequest, distill
from pipeline.shards.schema import DTYPES, FORMATS

DEFAULT_TEACHER = "osnet_x1_0"


def build_parser() -> argparse.ArgumentParser:
    from teacher import TEACHER_NAMES

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.distill",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Datasets are described by YAML manifests in manifests/ (--list-datasets). Teacher weights "
            "are local files from the torchreid model zoo; nothing is downloaded."
        ),
    )
    source = parser.add_argument_group("dataset")
    which = source.add_mutually_exclusive_group()
    which.add_argument("--dataset", help="dataset name (a manifest in manifests/), e.g. crowdhuman")
    which.add_argument("--manifest", type=Path, help="path to a dataset manifest YAML instead of a name")
    source.add_argument("--split", help="named split of the manifest (default: the manifest's default split)")
    source.add_argument("--root", help="dataset root directory (overrides the manifest and its env variable)")
    source.add_argument("--list-datasets", action="store_true", help="list the known datasets and exit")

    model = parser.add_argument_group("teacher")
    model.add_argument(
        "--teacher",
        default=DEFAULT_TEACHER,
        choices=TEACHER_NAMES,
        help="re-ID architecture (default %(default)s, as in the paper)",
    )
    model.add_argument(
        "--teacher-weights",
        type=Path,
        default=None,
        help="local torchreid weights file (default: $TDT_TEACHER_WEIGHTS)",
    )
    model.add_argument(
        "--trust-teacher-pickle",
        action="store_true",
        help="allow loading a weights file that is a full pickle not in the known model-zoo list "
        "(pickles can run code: only for files you trust)",
    )
    model.add_argument(
        "--batch-size", type=int, default=64, help="crops per teacher forward pass (default %(default)s)"
    )
    model.add_argument(
        "--device",
        default="cpu",
        help="torch device for the teacher, e.g. cpu or cuda:0 (default %(default)s)",
    )

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

    compute = parser.add_argument_group("compute")
    compute.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="LocalCluster worker processes (one torch thread each; default %(default)s); 0 runs in this process without Dask",
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
    return parser


def _load_dataset(args):
    from pipeline import datasets

    manifest = datasets.load_manifest(str(args.manifest) if args.manifest else args.dataset)
    root = datasets.resolve_root(manifest, args.root)
    split = args.split or manifest.default_split
    records, stats = datasets.read_records(manifest, split, root)
    source_bytes = datasets.check_images_exist(records, root)
    fingerprint = datasets.dataset_fingerprint(manifest, split, root)
    return manifest, root, split, records, stats, source_bytes, fingerprint


def run(args) -> DistillReport:
    from teacher import TeacherConfig, build_teacher

    manifest, root, split, records, stats, source_bytes, fingerprint = _load_dataset(args)
    teacher_config = TeacherConfig.from_env_and_args(
        name=args.teacher,
        weights=args.teacher_weights,
        device=args.device,
        batch_size=args.batch_size,
        trust_pickle=args.trust_teacher_pickle,
    )
    teacher = build_teacher(teacher_config, allow_random_weights=args.allow_random_teacher)
    out_dir = args.out or Path("out") / "shards" / f"{manifest.name}-{split}-{args.teacher}"
    request = DistillRequest(
        dataset_name=manifest.name,
        split=split,
        dataset_root=Path(root),
        dataset_fingerprint=fingerprint,
        records=tuple(records),
        source_bytes=source_bytes,
        reader_stats=stats.as_dict(),
        out_dir=out_dir,
        format=args.format,
        dtype=args.dtype,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        allow_random_teacher=args.allow_random_teacher,
    )
    cluster = ClusterConfig(
        workers=args.workers,
        scheduler=args.scheduler,
        tls_ca_file=args.tls_ca_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        connect_timeout_s=args.scheduler_timeout,
    )
    if not args.quiet:
        print(
            f"distilling {manifest.name}/{split}: {len(records)} images, {sum(r.num_boxes for r in records)} boxes "
            f"-> {out_dir} ({args.format}, {args.dtype}); teacher {args.teacher} ({teacher.fingerprint_id()})",
            file=sys.stderr,
        )
    with _progress_bar(request, quiet=args.quiet) as progress:
        report = distill(request, teacher, cluster, progress=progress)
    return report


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
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from teacher import TeacherError

    if args.list_datasets:
        from pipeline import datasets

        for name in datasets.available_datasets():
            print(name)
        return 0
    if not args.dataset and not args.manifest:
        parser.error("one of --dataset or --manifest is required (see --list-datasets)")
    try:
        report = run(args)
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
