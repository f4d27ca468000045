"""One-stage vs two-stage tracking speed at two crowd densities (TDT Table 1's FPS column).

One-stage: the student detector with its embedding head (one forward pass
gives boxes and embeddings). Two-stage: the same detector without the
embedding head, then the re-ID teacher on one crop per person. Both detectors
share backbone and input size and are randomly initialised: this measures
time only, never accuracy.

A random detector finds nobody, so the two-stage teacher is fed the frame's
ground-truth target boxes instead of its detections: the detector's time is
measured as it is, and the number of crops equals the real density (people
per frame, from gt.txt), which is what the teacher's cost depends on.
Association is left out of both (it is the same code for both, about 1-2 ms
per frame at these densities, see benchmarks/association.py); so is image
decoding. Frames: real PETS09-S2L1 frames spread over the sequence (~6 people)
and the real MOT17-04 frames of MOT17-mini (~42 people). The models take turns
on each frame and the median time per frame is reported (interleaving and
medians keep other processes' load from favouring one side);
the first frame is a warm-up and not timed.

Threads: torch runs single-threaded by default. Where other processes keep
the cores busy, torch's OpenMP threads spin-wait for a core that is taken and
every model runs many times slower than with one thread; on idle cores pass
``--threads`` with the core count.

``bound`` is the speed-up a free
embedding head would give, (detector + teacher) / detector: with the same
detector, no one-stage model can beat it.

    python benchmarks/one_vs_two_stage.py                       # osnet_x0_25 and osnet_x1_0
    python benchmarks/one_vs_two_stage.py --backbone mobilenet_v2_fpn --input-size 608 1088

The last line is ``one-stage speed-up: <ratio> at <N> people/frame`` for
MOT17-04 with osnet_x1_0 (the TDT paper reports 3.2 on a GPU).
"""

from __future__ import annotations

import os

# Must be set before numpy loads OpenBLAS (see benchmarks/association.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tracker.sequence import open_sequence  # noqa: E402
from tracker.sources import FrameDetections, embed_with_teacher  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("TDT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
HEADLINE_TEACHER = "osnet_x1_0"
HEADLINE_SEQUENCE = "MOT17-04-FRCNN"


@dataclass(frozen=True)
class BenchmarkFrame:
    image: np.ndarray
    people: np.ndarray  # (M, 4) ground-truth target boxes, tlbr


@dataclass(frozen=True)
class DensityResult:
    sequence: str
    people_per_frame: float
    teacher: str
    one_stage_ms: float
    detector_ms: float
    teacher_ms: float

    @property
    def two_stage_ms(self) -> float:
        return self.detector_ms + self.teacher_ms

    @property
    def speed_up(self) -> float:
        return self.two_stage_ms / self.one_stage_ms

    @property
    def free_head_bound(self) -> float:
        """The speed-up if the embedding head cost nothing: (detector + teacher) / detector."""
        return self.two_stage_ms / self.detector_ms


def load_frames(sequence_dir: Path, count: int) -> list[BenchmarkFrame]:
    """``count`` frames spread evenly over the sequence, with their ground-truth target boxes."""
    sequence = open_sequence(sequence_dir)
    ground_truth = sequence.read_ground_truth()
    if ground_truth is None:
        raise SystemExit(f"{sequence_dir}: no gt/gt.txt (needed for the people per frame)")
    files = sequence.frame_files
    picks = sorted({round(position) for position in np.linspace(0, len(files) - 1, min(count, len(files)))})
    frames = []
    for number, path in (files[pick] for pick in picks):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"{path}: cannot decode")
        tlbr, _ = ground_truth.target_boxes(number)
        frames.append(BenchmarkFrame(image, tlbr))
    return frames


def median_ms_interleaved(
    frames: list[BenchmarkFrame], workloads: dict[str, Callable[[BenchmarkFrame], object]]
) -> dict[str, float]:
    """Median milliseconds per frame of each workload.

    The workloads take turns on every frame, so a burst of load from another
    process hits all of them alike; the median ignores
    single disturbed frames. Each workload's first call (the first frame) is a
    warm-up and is not timed.
    """
    durations: dict[str, list[float]] = {name: [] for name in workloads}
    for index, frame in enumerate(frames):
        for name, work in workloads.items():
            started = time.perf_counter()
            work(frame)
            if index > 0 or len(frames) == 1:
                durations[name].append(time.perf_counter() - started)
    return {name: 1000.0 * statistics.median(values) for name, values in durations.items()}


def build_detectors(backbone: str, input_size: tuple[int, int], embedding_dim: int, embedding_head: str):
    import torch

    from student import Detector, ModelConfig, build_student

    detectors = []
    for dim in (embedding_dim, 0):
        torch.manual_seed(0)
        config = ModelConfig(
            backbone=backbone,
            input_height=input_size[0],
            input_width=input_size[1],
            embedding_dim=dim,
            embedding_head=embedding_head,
        )
        detectors.append(Detector(build_student(config, warn_if_random_backbone=False)))
    return detectors


def build_random_teacher(name: str):
    from teacher import RandomTeacherWeightsWarning, TeacherConfig, build_teacher

    with warnings.catch_warnings():
        # Random weights on purpose: this benchmark measures time only.
        warnings.simplefilter("ignore", RandomTeacherWeightsWarning)
        return build_teacher(TeacherConfig(name=name), allow_random_weights=True)


def teacher_work(teacher) -> Callable[[BenchmarkFrame], object]:
    def embed(frame: BenchmarkFrame) -> object:
        people = FrameDetections(frame.people, np.ones(len(frame.people), np.float32))
        return embed_with_teacher(teacher, frame.image, people)

    return embed


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--backbone", default="resnet34_fpn", help="student backbone (both detectors)")
    parser.add_argument(
        "--input-size", type=int, nargs=2, default=(608, 1088), metavar=("H", "W"), help="detector input"
    )
    parser.add_argument("--embedding-dim", type=int, default=128, help="one-stage embedding dimension D_s")
    parser.add_argument(
        "--embedding-head",
        choices=("per_anchor", "per_location"),
        default="per_anchor",
        help="one-stage embedding head layout (per_anchor: A*D_s outputs, the paper's)",
    )
    parser.add_argument(
        "--frames", type=int, default=4, help="frames per sequence, spread over it (the first is a warm-up)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: see the note on busy cores in the module docstring)",
    )
    parser.add_argument(
        "--teachers", nargs="+", default=["osnet_x0_25", HEADLINE_TEACHER], help="two-stage re-ID models"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    sequences = {
        "PETS09-S2L1-half1": args.data / "PETS09-S2L1-half1",
        HEADLINE_SEQUENCE: args.data / "MOT17-mini" / HEADLINE_SEQUENCE,
    }
    missing = [str(path) for path in sequences.values() if not path.is_dir()]
    if missing:
        raise SystemExit(f"real data not found: {', '.join(missing)} (set TDT_SHARED_DATA or --data)")
    import torch

    from tdt.process import configure_for_cli

    configure_for_cli(torch_threads=args.threads)
    print(
        f"detector {args.backbone} at {args.input_size[0]}x{args.input_size[1]}, one-stage D_s "
        f"{args.embedding_dim}; random weights (timing only); torch threads {torch.get_num_threads()}; "
        f"{args.frames} frames per sequence, first one not timed; median ms per frame"
    )
    one_stage, detection_only = build_detectors(
        args.backbone, tuple(args.input_size), args.embedding_dim, args.embedding_head
    )
    teachers = {name: build_random_teacher(name) for name in args.teachers}
    results = []
    for sequence_name, path in sequences.items():
        frames = load_frames(path, args.frames)
        people = statistics.fmean(len(frame.people) for frame in frames)
        workloads: dict[str, Callable[[BenchmarkFrame], object]] = {
            "one-stage": lambda frame: one_stage.detect(frame.image),
            "detector": lambda frame: detection_only.detect(frame.image),
        }
        workloads.update({name: teacher_work(teacher) for name, teacher in teachers.items()})
        times = median_ms_interleaved(frames, workloads)
        for teacher_name in teachers:
            results.append(
                DensityResult(
                    sequence_name,
                    people,
                    teacher_name,
                    times["one-stage"],
                    times["detector"],
                    times[teacher_name],
                )
            )
    print(
        f"{'sequence':<20}{'people/frame':>13}{'teacher':>13}{'one-stage ms':>14}{'detector ms':>13}"
        f"{'teacher ms':>12}{'two-stage ms':>14}{'1-stage FPS':>12}{'2-stage FPS':>12}{'speed-up':>10}"
        f"{'bound':>8}"
    )
    for result in results:
        print(
            f"{result.sequence:<20}{result.people_per_frame:>13.1f}{result.teacher:>13}"
            f"{result.one_stage_ms:>14.1f}{result.detector_ms:>13.1f}{result.teacher_ms:>12.1f}"
            f"{result.two_stage_ms:>14.1f}{1000 / result.one_stage_ms:>12.2f}"
            f"{1000 / result.two_stage_ms:>12.2f}{result.speed_up:>9.2f}x{result.free_head_bound:>7.2f}x"
        )
    headline = [r for r in results if r.sequence == HEADLINE_SEQUENCE and r.teacher == HEADLINE_TEACHER]
    if headline:
        result = headline[0]
        print(f"one-stage speed-up: {result.speed_up:.2f} at {result.people_per_frame:.0f} people/frame")


if __name__ == "__main__":
    main()
