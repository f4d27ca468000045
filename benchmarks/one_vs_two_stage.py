"""One-stage vs two-stage tracking speed at two crowd densities (TDT Table 1's FPS column).

One-stage: the student detector with its embedding head (one forward pass
gives boxes and embeddings), run two ways: with the head evaluated only at the
kept detections (sparse, the default everywhere) and on the whole map (dense,
``dense_embeddings``). Two-stage: the same detector without the embedding
head, then the re-ID teacher on one crop per person. All detectors share
backbone and input size and are randomly initialised, and so are the teachers
(osnet_x1_0 has no weights in the shared data folder; time does not depend on
the weights): this measures time only, never accuracy.

A random detector finds nobody, so every side is made to handle exactly the
frame's number of people N (from gt.txt): the detectors post-process with
score threshold 0 and keep their best N detections after NMS (the one-stage
side embeds exactly those N; checked on every frame), and the teacher gets
crops of the frame's N ground-truth boxes. A sparse head therefore pays for N
embeddings, as it would on a real frame with N people. Each level passes at
most 200 candidates to NMS, about as many as a trained detector has above its
score threshold in a crowded frame (``forced_detections.py``). Association is left
out (the same code for both, about 1-2 ms per frame at these densities, see
benchmarks/association.py); so is image decoding. Frames: real PETS09-S2L1
frames spread over the sequence (~6 people) and the real MOT17-04 frames of
MOT17-mini (~42 people). All models take turns on each frame and the median
time per frame is reported (interleaving and medians keep other processes'
load from favouring one model); the first frame is a warm-up and not timed.

Threads: torch runs single-threaded by default. Where other processes keep
the cores busy, torch's OpenMP threads spin-wait for a core that is taken and
every model runs many times slower than with one thread; on idle cores pass
``--threads`` with the core count.

Per head: ``overhead`` = one-stage / detection-only - 1 (TDT Table 6 pays 39%
for D_s 512); ``speed-up`` = two-stage / one-stage; ``bound`` = (detector +
teacher) / detector, the speed-up a free embedding head would give (with the
same detector no one-stage model can beat it); ``of bound`` = speed-up / bound.

    python benchmarks/one_vs_two_stage.py            # both densities, both teachers, both heads
    python benchmarks/one_vs_two_stage.py --quick    # one timed frame per density
    python benchmarks/one_vs_two_stage.py --backbone mobilenet_v2_fpn --heads per_location:128

The last line is ``one-stage speed-up: <ratio> at <N> people/frame (bound <b>,
<f> of bound)`` for MOT17-04, osnet_x1_0 and the first head's sparse evaluation
(per-anchor D_s 512, the paper's head, by default).
"""

from __future__ import annotations

import os

# Must be set before numpy loads OpenBLAS (see benchmarks/association.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.forced_detections import check_kept, keeping_exactly  # noqa: E402
from tracker.sequence import open_sequence  # noqa: E402
from tracker.sources import FrameDetections, embed_with_teacher  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("TDT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
HEADLINE_TEACHER = "osnet_x1_0"
HEADLINE_SEQUENCE = "MOT17-04-FRCNN"
DEFAULT_HEADS = ("per_anchor:512", "per_location:128")
QUICK_FRAMES = 2


@dataclasses.dataclass(frozen=True)
class BenchmarkFrame:
    image: np.ndarray
    people: np.ndarray  # (N, 4) ground-truth target boxes, tlbr


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    layout: str  # "per_anchor" or "per_location"
    dim: int

    @classmethod
    def parse(cls, text: str) -> HeadSpec:
        layout, _, dim = text.partition(":")
        if layout not in ("per_anchor", "per_location") or not dim.isdigit() or int(dim) <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: expected per_anchor:<D_s> or per_location:<D_s>")
        return cls(layout, int(dim))

    @property
    def name(self) -> str:
        return f"{self.layout.replace('_', '-')} {self.dim}"


@dataclasses.dataclass(frozen=True)
class Row:
    """One density x head x teacher, all times median ms per frame."""

    sequence: str
    people_per_frame: float
    head: str
    teacher: str
    detector_ms: float
    teacher_ms: float
    sparse_ms: float
    dense_ms: float

    @property
    def two_stage_ms(self) -> float:
        return self.detector_ms + self.teacher_ms

    def overhead(self, one_stage_ms: float) -> float:
        return one_stage_ms / self.detector_ms - 1.0

    def speed_up(self, one_stage_ms: float) -> float:
        return self.two_stage_ms / one_stage_ms

    @property
    def bound(self) -> float:
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
        if len(tlbr) == 0:
            raise SystemExit(f"{sequence_dir}: frame {number} has no people in gt.txt")
        frames.append(BenchmarkFrame(image, tlbr))
    return frames


def median_ms_interleaved(
    frames: list[BenchmarkFrame], workloads: dict[str, Callable[[BenchmarkFrame], object]]
) -> dict[str, float]:
    """Median milliseconds per frame of each workload.

    The workloads take turns on every frame, so a burst of load from another
    process hits all of them alike; the median ignores single disturbed
    frames. Each workload's first call (the first frame) is a warm-up and is
    not timed.
    """
    durations: dict[str, list[float]] = {name: [] for name in workloads}
    for index, frame in enumerate(frames):
        for name, work in workloads.items():
            started = time.perf_counter()
            work(frame)
            if index > 0 or len(frames) == 1:
                durations[name].append(time.perf_counter() - started)
    return {name: 1000.0 * statistics.median(values) for name, values in durations.items()}


def build_detector(backbone: str, input_size: tuple[int, int], head: HeadSpec | None):
    import torch

    from student import Detector, ModelConfig, build_student

    torch.manual_seed(0)
    head_fields = (
        {"embedding_dim": 0} if head is None else {"embedding_dim": head.dim, "embedding_head": head.layout}
    )
    config = ModelConfig(
        backbone=backbone, input_height=input_size[0], input_width=input_size[1], **head_fields
    )
    return Detector(build_student(config, warn_if_random_backbone=False))


def detector_work(detector, dense_embeddings: bool = False) -> Callable[[BenchmarkFrame], object]:
    """The Detector's steps (letterbox, forward, post-process, boxes back to the image) keeping
    exactly the frame's number of people; the one-stage side embeds exactly those."""
    import torch

    from student import postprocess
    from student.transforms import bgr_to_input_tensor, boxes_to_original

    def detect(frame: BenchmarkFrame) -> object:
        people = len(frame.people)
        config = keeping_exactly(detector.config, people, dense_embeddings=dense_embeddings)
        tensor, placement = bgr_to_input_tensor(frame.image, config.input_size)
        with torch.inference_mode():
            outputs = detector.model(tensor[None].to(detector.device), dense_embeddings=dense_embeddings)
            (found,) = postprocess(outputs, config)
        check_kept(found, people)
        return boxes_to_original(placement, found.boxes.cpu().numpy()), found.embeddings

    return detect


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
    parser.add_argument("--backbone", default="resnet34_fpn", help="student backbone (all detectors)")
    parser.add_argument(
        "--input-size", type=int, nargs=2, default=(608, 1088), metavar=("H", "W"), help="detector input"
    )
    parser.add_argument(
        "--heads",
        nargs="+",
        type=HeadSpec.parse,
        default=[HeadSpec.parse(text) for text in DEFAULT_HEADS],
        metavar="LAYOUT:D_S",
        help="one-stage embedding heads (per_anchor: A*D_s outputs per location, the paper's)",
    )
    parser.add_argument(
        "--frames", type=int, default=4, help="frames per sequence, spread over it (the first is a warm-up)"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_FRAMES} frames per sequence (one timed): a smoke test"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: see the note on shared machines in the module docstring)",
    )
    parser.add_argument(
        "--teachers", nargs="+", default=["osnet_x0_25", HEADLINE_TEACHER], help="two-stage re-ID models"
    )
    args = parser.parse_args()
    if args.quick:
        args.frames = QUICK_FRAMES
    return args


def measure(args: argparse.Namespace, sequences: dict[str, Path]) -> list[Row]:
    """Every model on every frame of both densities, interleaved."""
    detection_only = build_detector(args.backbone, tuple(args.input_size), None)
    workloads: dict[str, Callable[[BenchmarkFrame], object]] = {"detector": detector_work(detection_only)}
    for head in args.heads:
        one_stage = build_detector(args.backbone, tuple(args.input_size), head)
        workloads[f"{head.name} sparse"] = detector_work(one_stage, dense_embeddings=False)
        workloads[f"{head.name} dense"] = detector_work(one_stage, dense_embeddings=True)
    workloads.update({name: teacher_work(build_random_teacher(name)) for name in args.teachers})
    rows = []
    for sequence_name, path in sequences.items():
        frames = load_frames(path, args.frames)
        people = statistics.fmean(len(frame.people) for frame in frames)
        times = median_ms_interleaved(frames, workloads)
        for head in args.heads:
            for teacher_name in args.teachers:
                rows.append(
                    Row(
                        sequence_name,
                        people,
                        head.name,
                        teacher_name,
                        detector_ms=times["detector"],
                        teacher_ms=times[teacher_name],
                        sparse_ms=times[f"{head.name} sparse"],
                        dense_ms=times[f"{head.name} dense"],
                    )
                )
    return rows


def print_table(rows: list[Row]) -> None:
    print(
        f"{'sequence':<19}{'people':>7}{'head':>17}{'teacher':>12}{'det ms':>9}{'teach ms':>9}"
        f"{'1-st sparse':>12}{'1-st dense':>11}{'ovh sparse':>11}{'ovh dense':>10}"
        f"{'speed-up sp':>12}{'speed-up de':>12}{'bound':>7}{'of bound':>9}"
    )
    for row in rows:
        print(
            f"{row.sequence:<19}{row.people_per_frame:>7.1f}{row.head:>17}{row.teacher:>12}"
            f"{row.detector_ms:>9.1f}{row.teacher_ms:>9.1f}{row.sparse_ms:>12.1f}{row.dense_ms:>11.1f}"
            f"{row.overhead(row.sparse_ms):>10.1%} {row.overhead(row.dense_ms):>9.1%} "
            f"{row.speed_up(row.sparse_ms):>11.2f}x{row.speed_up(row.dense_ms):>11.2f}x"
            f"{row.bound:>6.2f}x{row.speed_up(row.sparse_ms) / row.bound:>9.2f}"
        )


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
        f"detectors {args.backbone} at {args.input_size[0]}x{args.input_size[1]}, one-stage heads "
        f"{', '.join(head.name for head in args.heads)}; detectors and teachers ({', '.join(args.teachers)}) "
        f"randomly initialised: timing only; every side handles the frame's N people (gt.txt); "
        f"CPU, torch threads {torch.get_num_threads()}; {args.frames} frames per "
        "sequence, first one not timed; median ms per frame"
    )
    rows = measure(args, sequences)
    print_table(rows)
    headline = [
        row
        for row in rows
        if row.sequence == HEADLINE_SEQUENCE
        and row.teacher == HEADLINE_TEACHER
        and row.head == args.heads[0].name
    ]
    if headline:
        row = headline[0]
        speed_up = row.speed_up(row.sparse_ms)
        print(f"headline: {row.head} sparse head, {row.teacher}")
        print(
            f"one-stage speed-up: {speed_up:.2f} at {row.people_per_frame:.0f} people/frame "
            f"(bound {row.bound:.2f}, {speed_up / row.bound:.2f} of bound)"
        )


if __name__ == "__main__":
    main()
