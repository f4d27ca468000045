"""Association time per frame against the number of objects, on synthetic scenes.

Each scene: N people-sized boxes in a 1920x1080 frame moving linearly (bouncing
off the borders) with Gaussian jitter on the detected boxes, a few missed
detections per frame, a share of weak detections (score 0.1-0.4, as occluded
people get), detections shuffled, and 128-d embeddings made of a per-identity
base vector plus noise. Only ``Tracker.update`` is timed, once per association
mode (FairMOT drops the weak detections, BYTE matches them in a second IoU
step); the scenes are generated beforehand. Growth is reported relative to the
smallest N of the same mode and run.

    python benchmarks/association.py                 # N = 10, 50, 200, 500, both modes
    python benchmarks/association.py --sizes 50 500 --frames 200 --evaluate --modes byte
    OPENBLAS_NUM_THREADS=2 python benchmarks/association.py   # multi-threaded BLAS

numpy's BLAS runs single-threaded here unless OPENBLAS_NUM_THREADS is set:
the association's matrix products are small, and where other processes keep
the cores busy a second BLAS thread mostly waits for a core and makes each
frame slower.
"""

from __future__ import annotations

import os

# Must be set before numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracker import FrameTracks, Tracker, TrackerConfig  # noqa: E402
from tracker.config import ASSOCIATION_MODES  # noqa: E402

FRAME_WIDTH = 1920.0
FRAME_HEIGHT = 1080.0


@dataclass(frozen=True)
class SceneFrame:
    tlbr: npt.NDArray[np.float32]
    score: npt.NDArray[np.float32]
    embedding: npt.NDArray[np.float32] | None
    identity: npt.NDArray[np.int64]


def synthetic_scene(
    num_objects: int,
    num_frames: int,
    *,
    embedding_dim: int,
    miss_rate: float,
    weak_rate: float,
    seed: int,
) -> list[SceneFrame]:
    rng = np.random.default_rng(seed)
    height = rng.uniform(60.0, 200.0, num_objects)
    width = height * rng.uniform(0.35, 0.5, num_objects)
    centre = np.stack(
        [
            rng.uniform(width / 2, FRAME_WIDTH - width / 2),
            rng.uniform(height / 2, FRAME_HEIGHT - height / 2),
        ],
        axis=1,
    )
    velocity = rng.normal(0.0, 2.5, (num_objects, 2))
    identity_base = rng.normal(size=(num_objects, embedding_dim))
    identity_base /= np.linalg.norm(identity_base, axis=1, keepdims=True)
    half_size = np.stack([width / 2, height / 2], axis=1)
    frames = []
    for _ in range(num_frames):
        centre += velocity
        low, high = half_size, np.array([FRAME_WIDTH, FRAME_HEIGHT]) - half_size
        bounced = (centre < low) | (centre > high)
        velocity[bounced] *= -1.0
        centre = np.clip(centre, low, high)
        visible = np.flatnonzero(rng.random(num_objects) >= miss_rate)
        rng.shuffle(visible)
        jitter = rng.normal(0.0, 1.5, (len(visible), 4))
        tlbr = np.concatenate(
            [centre[visible] - half_size[visible], centre[visible] + half_size[visible]], axis=1
        )
        embedding = None
        if embedding_dim:
            noisy = identity_base[visible] + rng.normal(0.0, 0.04, (len(visible), embedding_dim))
            embedding = noisy.astype(np.float32)
        score = rng.uniform(0.5, 1.0, len(visible))
        weak = rng.random(len(visible)) < weak_rate
        score[weak] = rng.uniform(0.1, 0.4, int(weak.sum()))
        frames.append(
            SceneFrame(
                tlbr=(tlbr + jitter).astype(np.float32),
                score=score.astype(np.float32),
                embedding=embedding,
                identity=visible.astype(np.int64),
            )
        )
    return frames


@dataclass(frozen=True)
class Timing:
    cpu_mean_ms: float  # this thread's CPU time: robust to other processes on the machine
    wall_mean_ms: float
    wall_median_ms: float


def time_association(
    frames: list[SceneFrame], warmup: int, config: TrackerConfig
) -> tuple[Timing, list[FrameTracks]]:
    """Per-frame timing of ``Tracker.update`` over the frames after ``warmup``."""
    tracker = Tracker(config, frame_rate=30.0)
    wall, cpu, outputs = [], [], []
    for index, frame in enumerate(frames):
        wall_start, cpu_start = time.perf_counter(), time.thread_time()
        outputs.append(tracker.update(frame.tlbr, frame.score, frame.embedding))
        cpu_elapsed, wall_elapsed = time.thread_time() - cpu_start, time.perf_counter() - wall_start
        if index >= warmup:
            wall.append(wall_elapsed)
            cpu.append(cpu_elapsed)
    wall_ms, cpu_ms = 1e3 * np.asarray(wall), 1e3 * np.asarray(cpu)
    timing = Timing(
        cpu_mean_ms=float(cpu_ms.mean()),
        wall_mean_ms=float(wall_ms.mean()),
        wall_median_ms=float(np.median(wall_ms)),
    )
    return timing, outputs


def tracking_accuracy(
    frames: list[SceneFrame], outputs: list[FrameTracks]
) -> tuple[float, float, float, int]:
    """HOTA, MOTA, IDF1 and ID switches of the run against the scene's true identities."""
    from tracker.evaluation import evaluate_sequences
    from tracker.mot_format import frame_tracks_to_mot_rows, stack_mot_rows

    gt_rows = []
    for frame_number, frame in enumerate(frames, start=1):
        rows = np.ones((len(frame.identity), 9))
        rows[:, 0] = frame_number
        rows[:, 1] = frame.identity + 1
        rows[:, 2:4] = frame.tlbr[:, :2]
        rows[:, 4:6] = frame.tlbr[:, 2:] - frame.tlbr[:, :2]
        gt_rows.append(rows)
    predictions = stack_mot_rows(
        frame_tracks_to_mot_rows(frame_number, tracks) for frame_number, tracks in enumerate(outputs, start=1)
    )
    metrics = evaluate_sequences({"synthetic": (np.concatenate(gt_rows), predictions)}, "MOT17")
    scene = metrics["synthetic"]
    return scene.hota, scene.mota, scene.idf1, scene.id_switches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time Tracker.update per frame at several object counts (synthetic scenes)."
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200, 500], help="objects per scene")
    parser.add_argument("--frames", type=int, default=150, help="frames per scene (timed part)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed frames at the start")
    parser.add_argument(
        "--embedding-dim", type=int, default=128, help="embedding size; 0 = IoU-only tracking"
    )
    parser.add_argument("--miss-rate", type=float, default=0.05, help="fraction of missed boxes")
    parser.add_argument(
        "--weak-rate", type=float, default=0.1, help="fraction of detections scored 0.1-0.4 (occluded)"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=ASSOCIATION_MODES,
        default=list(ASSOCIATION_MODES),
        help="association modes to time",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="also report MOTA / IDF1 / ID switches against the scene identities",
    )
    args = parser.parse_args(argv)
    if any(size <= 0 for size in args.sizes) or args.frames <= 0 or args.warmup < 0:
        parser.error("--sizes and --frames must be positive, --warmup non-negative")

    print(
        f"Tracker.update, {args.frames} timed frames after {args.warmup} warm-up, "
        f"embedding dim {args.embedding_dim}, miss rate {args.miss_rate}, weak rate {args.weak_rate}, "
        f"seed {args.seed}, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}"
    )
    growth_label = f"growth vs N={args.sizes[0]}"
    header = (
        f"{'mode':>8} {'N':>6} {'cpu ms/frame':>13} {'wall median':>12} {'wall mean':>10} {growth_label:>17}"
    )
    if args.evaluate:
        header += f" {'HOTA':>7} {'MOTA':>7} {'IDF1':>7} {'IDs':>5}"
    print(header)
    scenes = {
        size: synthetic_scene(
            size,
            args.warmup + args.frames,
            embedding_dim=args.embedding_dim,
            miss_rate=args.miss_rate,
            weak_rate=args.weak_rate,
            seed=args.seed,
        )
        for size in args.sizes
    }
    for mode in args.modes:
        baseline = None
        for size, frames in scenes.items():
            timing, outputs = time_association(frames, args.warmup, TrackerConfig(association=mode))
            baseline = baseline if baseline is not None else timing.cpu_mean_ms
            line = (
                f"{mode:>8} {size:>6} {timing.cpu_mean_ms:>13.3f} {timing.wall_median_ms:>12.3f} "
                f"{timing.wall_mean_ms:>10.3f} {timing.cpu_mean_ms / baseline:>16.1f}x"
            )
            if args.evaluate:
                hota, mota, idf1, switches = tracking_accuracy(frames, outputs)
                line += f" {100 * hota:>6.1f}% {100 * mota:>6.1f}% {100 * idf1:>6.1f}% {switches:>5}"
            print(line, flush=True)
    print("growth is the ratio of mean CPU time per frame to the first size's, same mode and run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
