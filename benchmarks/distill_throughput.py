"""Distillation throughput against its bound: bare teacher, bare pre-processing, pipeline.

    python benchmarks/distill_throughput.py            # 200 PETS09 frames, 3 teachers, 2 formats
    python benchmarks/distill_throughput.py --quick    # 80 frames: a few minutes' check
    python benchmarks/distill_throughput.py --teachers osnet_x1_0 --formats parquet --rounds 3

For every teacher, in one run, on the same real PETS09 boxes:
- bare teacher: a tight loop of ``embed_tensor`` over pre-cut, pre-normalised batches (the
  batches the pipeline forms: each shard's boxes cut into ``--batch-size`` pieces), boxes/s,
  the faster of two ways of using the cores: one process with torch on every core, and one
  single-thread process per core each embedding its share of the batches (as the Dask workers
  do; on a small CPU two one-thread teachers often beat one two-thread teacher, and a bound
  taken from the slower way would be beaten by the pipeline);
- bare pre-processing: decode + crop + resize + normalise of the same boxes, no teacher, in one
  spawned process per core (started before the clock), boxes/s;
- bound: the best rate when both share the cores, 1 / (1/teacher + 1/pre-processing);
- pipeline: ``pipeline.runner.distill`` on the same images (decode, crop, teacher, write
  shards) from the first task submitted to the last shard written, workers already started,
  for each shard format with the default layout (Dask LocalCluster, one process per core), and
  for Parquet with the GPU layout too (``--preprocess-workers``: pre-processing processes
  feeding this process's teacher);
- the ratios pipeline / bare teacher and pipeline / bound, and the pipeline's time per box and
  stage (see ``pipeline.stages``), CPU time and page faults per box;
- CPU time per box, which other jobs on the machine change far less than boxes/s: the bare
  teacher on one thread (as in a Dask worker), the bare pre-processing, their sum (what the
  pipeline cannot do without) and the pipeline's, all its processes over the run (Dask's own
  threads and scheduler included). The difference is the pipeline's waste.

osnet_x0_25 and mobilenetv2_imagenet use the shared real weights when present; osnet_x1_0
(no weights available here) is randomly initialised: its rows are timings only. The last line
is ``distill efficiency: <pipeline / bare teacher> (<pipeline / bound> of bound)`` for
osnet_x1_0 with Parquet and the default layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("TDT_SHARED_DATA", REPO.parent / "shared" / "data"))
WEIGHTS = {
    "osnet_x0_25": SHARED / "weights" / "osnet_x0_25_msmt17.pth",
    "mobilenetv2_imagenet": SHARED / "weights" / "mobilenet_v2_imagenet_features.pt",
}
TEACHERS = ("osnet_x0_25", "osnet_x1_0", "mobilenetv2_imagenet")
DEFAULT_LAYOUT, GPU_LAYOUT = "dask", "teacher-process"


@dataclasses.dataclass(frozen=True)
class Row:
    teacher: str
    weights: str
    format: str
    layout: str
    bare_teacher: float
    bare_pre: float
    pipeline: float
    boxes: int
    report: object  # pipeline.runner.DistillReport
    teacher_cpu_ms: float  # CPU ms per box of the bare teacher on one thread
    pre_cpu_ms: float  # CPU ms per box of the bare pre-processing

    @property
    def pipeline_cpu_ms(self) -> float:
        use = self.report.all_processes
        return 1000.0 * (use.user_seconds + use.system_seconds) / self.boxes

    @property
    def bound(self) -> float:
        return 1.0 / (1.0 / self.bare_teacher + 1.0 / self.bare_pre)


def _pets_frames(frames: int):
    """The first ``frames`` images of the PETS09 half (a LoadedDataset cut to size)."""
    from pipeline import datasets
    from pipeline.job import DatasetSelection, load_dataset

    dataset = load_dataset(
        DatasetSelection("pets09-s2l1-half1", split="all", root=SHARED / "PETS09-S2L1-half1")
    )
    records = dataset.records[:frames]
    return dataclasses.replace(
        dataset, records=records, source_bytes=datasets.check_images_exist(records, dataset.root)
    )


def _teacher(name: str, batch_size: int):
    from teacher import TeacherConfig, build_teacher

    weights = WEIGHTS.get(name)
    weights = weights if weights is not None and weights.is_file() else None
    config = TeacherConfig(name=name, weights=weights, batch_size=batch_size)
    label = weights.name if weights else "random (timing only)"
    return build_teacher(config, allow_random_weights=weights is None), label


def bare_teacher_boxes_per_second(teacher, crops) -> float:
    """Pre-cut, pre-normalised batches through ``embed_tensor`` (crops: the uint8 (n, H, W, 3) batches)."""
    batches = [teacher.normalise(batch) for batch in crops]
    teacher.embed_tensor(batches[0])  # warm-up
    started = time.perf_counter()
    for batch in batches:
        teacher.embed_tensor(batch)
    return sum(len(batch) for batch in crops) / (time.perf_counter() - started)


_WORKER_STATE: dict = {}


def _load_share_in_worker(name: str, batch_size: int, batches) -> None:
    """Build this process's single-thread teacher, keep its share of the batches, run one batch.

    Outside the clock: sending the pre-cut float batches to the process (hundreds of MB) is not
    the teacher's work, and a timed map that carried them would charge it to the teacher.
    """
    import torch

    torch.set_num_threads(1)
    _WORKER_STATE["teacher"] = _teacher(name, batch_size)[0]
    _WORKER_STATE["batches"] = batches
    _WORKER_STATE["teacher"].embed_tensor(batches[0])


def _embed_share_in_worker(_: int) -> float:
    """Embed the kept share with the kept teacher; seconds taken."""
    teacher = _WORKER_STATE["teacher"]
    started = time.perf_counter()
    for batch in _WORKER_STATE["batches"]:
        teacher.embed_tensor(batch)
    return time.perf_counter() - started


def bare_teacher_per_core_boxes_per_second(teacher, crops, processes: int) -> float:
    """One single-thread teacher per spawned process, each on its share of the pre-cut batches.

    Each process is a pool of its own, so that each gets exactly one share, and gets it before
    the clock starts.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tdt.process import configure_worker_process

    name, batch_size = teacher.config.name, teacher.config.batch_size
    batches = [teacher.normalise(batch) for batch in crops]
    # fewer batches than processes (a tiny --frames): only as many processes as there are shares
    shares = [share for share in (batches[i::processes] for i in range(processes)) if share]
    context = multiprocessing.get_context("spawn")
    pools = [ProcessPoolExecutor(1, mp_context=context, initializer=configure_worker_process) for _ in shares]
    try:
        for loading in [
            pool.submit(_load_share_in_worker, name, batch_size, share)
            for pool, share in zip(pools, shares, strict=True)
        ]:
            loading.result()
        started = time.perf_counter()
        for embedding in [pool.submit(_embed_share_in_worker, 0) for pool in pools]:
            embedding.result()
        seconds = time.perf_counter() - started
    finally:
        for pool in pools:
            pool.shutdown()
    return sum(len(batch) for batch in crops) / seconds


def bare_teacher_cpu_ms_per_box(teacher, crops, batches: int = 4) -> float:
    """CPU ms per box of ``embed_tensor`` on one torch thread, over ``batches`` of the pre-cut
    batches spread over the run (shards end in short batches)."""
    import torch

    from pipeline.stages import ResourceUse

    inputs = [teacher.normalise(batch) for batch in crops[:: max(1, len(crops) // batches)][:batches]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        teacher.embed_tensor(inputs[0])  # warm-up
        before = ResourceUse.now()
        for batch in inputs:
            teacher.embed_tensor(batch)
        used = ResourceUse.now().since(before)
    finally:
        torch.set_num_threads(threads)
    return 1000.0 * (used.user_seconds + used.system_seconds) / sum(len(b) for b in inputs)


def _preprocess_part(root: str, records, config) -> tuple[int, dict[str, float], float]:
    """Decode, crop, resize and normalise ``records`` (runs in a worker process); boxes, stages, CPU s."""
    import torch

    from pipeline.stages import ResourceUse, StageTimes
    from pipeline.worker import image_pixels
    from teacher.preprocess import Preprocessor

    before = ResourceUse.now()
    preprocessor = Preprocessor(config.input_size, config.mean, config.std)
    stages, boxes = StageTimes(), 0
    for record in records:
        pixels = image_pixels(Path(root), record, preprocessor.pixels, stages)
        if pixels is not None:
            with stages.timing("normalise"):
                preprocessor.normalise(torch.from_numpy(pixels))
            boxes += len(pixels)
    used = ResourceUse.now().since(before)
    return boxes, stages.seconds, used.user_seconds + used.system_seconds


def bare_preprocessing(dataset, config, processes: int) -> tuple[float, dict[str, float], float]:
    """Decode + crop + resize + normalise in ``processes`` spawned processes: boxes/s, stage seconds, CPU ms per box."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, wait

    from pipeline.stages import total_stage_seconds
    from tdt.process import configure_worker_process

    records = list(dataset.records)
    parts = [records[i :: processes * 4] for i in range(processes * 4)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=configure_worker_process) as pool:
        wait(
            [pool.submit(_preprocess_part, str(dataset.root), parts[0][:1], config) for _ in range(processes)]
        )
        started = time.perf_counter()
        done = list(
            pool.map(_preprocess_part, [str(dataset.root)] * len(parts), parts, [config] * len(parts))
        )
        seconds = time.perf_counter() - started
    boxes = sum(b for b, _, _ in done)
    cpu_ms = 1000.0 * sum(c for _, _, c in done) / boxes
    return boxes / seconds, total_stage_seconds(s for _, s, _ in done), cpu_ms


def pipeline_batches(teacher, dataset, shard_size: int) -> list:
    """The crops (uint8 (n, H, W, 3)) in the batches the pipeline forms: each shard's boxes in
    order, cut into ``teacher.config.batch_size`` pieces (batches never span shards, so a
    shard ends in a short one). The bare teacher runs these same batches: small shards give
    small batches, and a small network pays more per box in a small batch."""
    import numpy as np

    from pipeline.stages import StageTimes
    from pipeline.worker import image_pixels

    batch_size = teacher.config.batch_size
    batches = []
    for first in range(0, len(dataset.records), shard_size):
        parts = [
            image_pixels(dataset.root, r, teacher.pixels, StageTimes())
            for r in dataset.records[first : first + shard_size]
        ]
        parts = [part for part in parts if part is not None and len(part)]
        if parts:
            shard = np.concatenate(parts)
            batches += [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)]
    return batches


def pipeline_run(teacher, dataset, fmt: str, layout: str, workers: int, shard_size: int):
    from pipeline.job import ShardOutput, distill_request
    from pipeline.runner import ClusterConfig, distill

    cluster = (
        ClusterConfig(workers=workers)
        if layout == DEFAULT_LAYOUT
        else ClusterConfig(preprocess_workers=workers)
    )
    with tempfile.TemporaryDirectory() as out:
        output = ShardOutput(out_dir=Path(out) / "shards", format=fmt, shard_size=shard_size)
        request = distill_request(dataset, output, teacher_name=teacher.name, allow_random_teacher=True)
        return distill(request, teacher, cluster)


def print_table(rows: list[Row]) -> None:
    print(
        f"{'teacher':<21}{'format':<8}{'layout':<16}{'teacher':>8}{'pre':>8}{'bound':>8}{'pipeline':>9}"
        f"{'pipe/teacher':>13}{'pipe/bound':>11}   (boxes/s)"
    )
    for r in rows:
        print(
            f"{r.teacher:<21}{r.format:<8}{r.layout:<16}{r.bare_teacher:>8.1f}{r.bare_pre:>8.1f}{r.bound:>8.1f}"
            f"{r.pipeline:>9.1f}{r.pipeline / r.bare_teacher:>13.2f}{r.pipeline / r.bound:>11.2f}"
        )


def print_cpu_table(rows: list[Row]) -> None:
    print(
        "\nCPU ms per box (user + system): bare teacher on one thread, bare pre-processing, their sum, "
        "the pipeline (all its processes over the run), pipeline - sum"
    )
    print(
        f"{'teacher':<21}{'format':<8}{'layout':<16}{'teacher':>8}{'pre':>8}{'sum':>8}{'pipeline':>9}{'excess':>8}"
    )
    for r in rows:
        floor = r.teacher_cpu_ms + r.pre_cpu_ms
        print(
            f"{r.teacher:<21}{r.format:<8}{r.layout:<16}{r.teacher_cpu_ms:>8.2f}{r.pre_cpu_ms:>8.2f}{floor:>8.2f}"
            f"{r.pipeline_cpu_ms:>9.2f}{r.pipeline_cpu_ms - floor:>8.2f}"
        )


def print_profile(rows: list[Row], bare_stages: dict[str, float], bare_boxes: int) -> None:
    from pipeline.stages import format_per_box

    print("\nbare pre-processing, ms per box (summed over its processes):")
    print("  " + format_per_box(bare_stages, bare_boxes))
    print("pipeline, ms per box per stage (summed over threads and processes), CPU time and page faults:")
    for r in rows:
        use = r.report.resources
        print(
            f"  {r.teacher} {r.format} {r.layout}: user {1000 * use.user_seconds / r.boxes:.2f} ms, "
            f"system {1000 * use.system_seconds / r.boxes:.2f} ms, {use.minor_faults / r.boxes:.0f} minor faults"
        )
        print("    " + format_per_box(r.report.stages, r.boxes))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="80 frames (403 boxes): a few minutes' check")
    parser.add_argument("--frames", type=int, help="PETS09 frames to use, about 6 boxes each (default 200)")
    parser.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=TEACHERS)
    parser.add_argument("--formats", nargs="+", default=["parquet", "hdf5"], choices=["parquet", "hdf5"])
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 2, help="Dask workers (default: cores)"
    )
    parser.add_argument(
        "--preprocess-workers",
        type=int,
        default=1,
        help="pre-processing processes of the teacher-process layout (0: skip that layout)",
    )
    parser.add_argument(
        "--shard-size", type=int, default=8, help="images per shard (small: balanced workers)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="per teacher, alternate the bare teacher and the pipeline runs this many times and "
        "report medians (the machine's speed drifts between runs; default 1)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    frames = args.frames or (80 if args.quick else 200)
    import torch

    from tdt.process import configure_for_cli
    from teacher import RandomTeacherWeightsWarning

    # Random weights are the point for osnet_x1_0 (timing only); workers inherit this through the env.
    warnings.simplefilter("ignore", RandomTeacherWeightsWarning)
    os.environ["PYTHONWARNINGS"] = "ignore::UserWarning"
    cores = os.cpu_count() or 2
    configure_for_cli(torch_threads=cores)
    dataset = _pets_frames(frames)
    boxes = sum(r.num_embeddable for r in dataset.records)
    print(
        f"{len(dataset.records)} PETS09 frames, {boxes} boxes, {cores} cores, torch {torch.__version__}, "
        f"{args.workers} Dask workers, teacher process + {args.preprocess_workers} pre-processing processes, "
        f"load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    rows, bare_stages = run_all(args, dataset, cores)
    print_table(rows)
    print_cpu_table(rows)
    print_profile(rows, bare_stages, boxes)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    for r in rows:
        if r.teacher == "osnet_x1_0" and r.format == "parquet" and r.layout == DEFAULT_LAYOUT:
            print(
                f"distill efficiency: {r.pipeline / r.bare_teacher:.2f} ({r.pipeline / r.bound:.2f} of bound)"
            )
    return 0


def run_all(args, dataset, cores: int) -> tuple[list[Row], dict[str, float]]:
    rows: list[Row] = []
    bare_pre, bare_stages, pre_cpu_ms, crops = None, {}, 0.0, None
    for name in args.teachers:
        teacher, weights = _teacher(name, args.batch_size)
        if crops is None:  # the same for every teacher: same input size, mean, std and batch size
            bare_pre, bare_stages, pre_cpu_ms = bare_preprocessing(dataset, teacher.config, cores)
            crops = pipeline_batches(teacher, dataset, args.shard_size)
        teacher_cpu_ms = bare_teacher_cpu_ms_per_box(teacher, crops)
        runs = [(fmt, DEFAULT_LAYOUT, args.workers) for fmt in args.formats]
        if args.preprocess_workers:
            runs.append((args.formats[0], GPU_LAYOUT, args.preprocess_workers))
        bare_rates: list[float] = []
        reports: dict[tuple, list] = {run: [] for run in runs}
        # Rounds alternate the bare teacher and the pipeline, so that a slow stretch of the
        # machine lands on both sides instead of on one of them.
        for round_index in range(args.rounds):
            all_cores = bare_teacher_boxes_per_second(teacher, crops)
            per_core = bare_teacher_per_core_boxes_per_second(teacher, crops, cores)
            bare_rates.append(max(all_cores, per_core))
            print(
                f"  {name}{_round_label(round_index, args.rounds)}: bare teacher {all_cores:.1f} boxes/s with "
                f"{cores} threads, {per_core:.1f} as {cores} one-thread processes; the faster is the teacher's rate",
                flush=True,
            )
            for fmt, layout, workers in runs:
                report = pipeline_run(teacher, dataset, fmt, layout, workers, args.shard_size)
                reports[(fmt, layout, workers)].append(report)
                print(
                    f"  {name}{_round_label(round_index, args.rounds)} ({weights}) {fmt} {layout}: pipeline "
                    f"{report.boxes_per_second:.1f} boxes/s ({report.boxes_per_second / bare_rates[-1]:.2f} of "
                    "this round's teacher)",
                    flush=True,
                )
        bare = statistics.median(bare_rates)
        for (fmt, layout, _), run_reports in reports.items():
            # the round with the median pipeline rate gives the row its CPU and stage figures
            report = sorted(run_reports, key=lambda r: r.boxes_per_second)[len(run_reports) // 2]
            pipeline = statistics.median(r.boxes_per_second for r in run_reports)
            row = Row(
                name,
                weights,
                fmt,
                layout,
                bare,
                bare_pre,
                pipeline,
                report.boxes_embedded_now,
                report,
                teacher_cpu_ms,
                pre_cpu_ms,
            )
            rows.append(row)
            print(
                f"  {name} ({weights}) {fmt} {layout}: teacher {bare:.1f}, pipeline {row.pipeline:.1f} boxes/s "
                f"({row.pipeline / bare:.2f} of teacher, {row.pipeline / row.bound:.2f} of bound){_median_note(args.rounds)}; "
                f"CPU ms per box {row.pipeline_cpu_ms:.2f} against {teacher_cpu_ms + pre_cpu_ms:.2f} for teacher + "
                "pre-processing",
                flush=True,
            )
    return rows, bare_stages


def _round_label(round_index: int, rounds: int) -> str:
    return f" round {round_index + 1}/{rounds}" if rounds > 1 else ""


def _median_note(rounds: int) -> str:
    return f", medians of {rounds} rounds" if rounds > 1 else ""


if __name__ == "__main__":
    sys.exit(main())
