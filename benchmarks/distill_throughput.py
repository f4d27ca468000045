"""Distillation throughput: whole pipeline vs the bare teacher, on the same real crops.

    python benchmarks/distill_throughput.py [--frames 120] [--teachers osnet_x0_25 osnet_x1_0]

For each teacher and shard format, in one run:
- bare teacher: a tight loop of ``embed_tensor`` over pre-cut, pre-processed
  batches of every box (torch using all cores), boxes/s;
- pipeline: ``pipeline.runner.distill`` on the same images (read, decode, crop,
  teacher, write shards; Dask LocalCluster, one torch thread per worker), boxes/s
  measured from the first task submitted to the last shard written (workers
  already started, teacher loaded), and end to end including the cluster's
  start and the teacher load in every worker.
Random teacher weights are used (timing only). The last line is
``distill efficiency: <ratio>`` for osnet_x1_0 with Parquet (steady state).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _pets_frames(frames: int):
    """The first ``frames`` images of the PETS09 half (a LoadedDataset cut to size)."""
    import dataclasses

    from pipeline import datasets
    from pipeline.job import DatasetSelection, load_dataset

    dataset = load_dataset(DatasetSelection("pets09-s2l1-half1", split="all"))
    records = dataset.records[:frames]
    return dataclasses.replace(
        dataset, records=records, source_bytes=datasets.check_images_exist(records, dataset.root)
    )


def bare_teacher_boxes_per_second(teacher, root: Path, records, repeats: int = 1) -> float:
    import cv2
    import torch

    crops = []
    for record in records:
        keep = ~record.ignore
        if keep.any():
            image = cv2.imread(str(root / record.image))
            crops.append(teacher.preprocess_crops(image, record.boxes[keep]))
    batch_size = teacher.config.batch_size
    everything = torch.cat(crops)
    batches = [everything[i : i + batch_size] for i in range(0, len(everything), batch_size)]
    teacher.embed_tensor(batches[0])  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        for batch in batches:
            teacher.embed_tensor(batch)
    return repeats * len(everything) / (time.perf_counter() - started)


def pipeline_boxes_per_second(teacher, dataset, fmt, workers, shard_size):
    from pipeline.job import ShardOutput, distill_request
    from pipeline.runner import ClusterConfig, distill

    with tempfile.TemporaryDirectory() as out:
        output = ShardOutput(out_dir=Path(out) / "shards", format=fmt, shard_size=shard_size)
        request = distill_request(dataset, output, teacher_name=teacher.name, allow_random_teacher=True)
        started = time.perf_counter()
        report = distill(request, teacher, ClusterConfig(workers=workers))
        end_to_end = time.perf_counter() - started
    boxes = report.boxes_embedded_now
    return boxes / report.seconds, boxes / end_to_end, boxes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="PETS09 frames to use (about 6 boxes each)")
    parser.add_argument("--teachers", nargs="+", default=["osnet_x0_25", "osnet_x1_0"])
    parser.add_argument("--formats", nargs="+", default=["parquet", "hdf5"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--shard-size", type=int, default=8, help="images per shard (small: balanced workers)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    import warnings

    import torch

    from tdt.process import configure_for_cli
    from teacher import RandomTeacherWeightsWarning, TeacherConfig, build_teacher

    # Random weights are the point here (timing only); workers inherit this through the env.
    warnings.simplefilter("ignore", RandomTeacherWeightsWarning)
    os.environ["PYTHONWARNINGS"] = "ignore::UserWarning"

    configure_for_cli(torch_threads=os.cpu_count() or 2)
    dataset = _pets_frames(args.frames)
    records = dataset.records
    print(
        f"{len(records)} PETS09 frames, {sum(r.num_embeddable for r in records)} boxes, "
        f"{args.workers} workers, torch {torch.__version__}, {os.cpu_count()} cores"
    )
    print(
        f"{'teacher':<12} {'format':<8} {'bare box/s':>10} {'pipe box/s':>10} {'e2e box/s':>10} "
        f"{'ratio':>6} {'e2e ratio':>9}"
    )
    efficiency = None
    for name in args.teachers:
        config = TeacherConfig(name=name, weights=None, batch_size=args.batch_size)
        teacher = build_teacher(config, allow_random_weights=True)
        bare = bare_teacher_boxes_per_second(teacher, dataset.root, records)
        for fmt in args.formats:
            steady, end_to_end, _ = pipeline_boxes_per_second(
                teacher, dataset, fmt, args.workers, args.shard_size
            )
            print(
                f"{name:<12} {fmt:<8} {bare:>10.1f} {steady:>10.1f} {end_to_end:>10.1f} "
                f"{steady / bare:>6.2f} {end_to_end / bare:>9.2f}",
                flush=True,
            )
            if name == "osnet_x1_0" and fmt == "parquet":
                efficiency = steady / bare
    if efficiency is not None:
        print(f"distill efficiency: {efficiency:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
