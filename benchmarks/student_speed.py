"""Student speed: training step time and peak memory per backbone, inference frames/s per head.

Part 1, training. For each backbone, one training step is forward + StudentCriterion
loss + backward + gradient clipping + SGD step, as ``student.engine`` does it in
float32 (its default optimiser groups and clipping), on random images with a
synthetic target: 8 person-shaped boxes per image with random unit 512-d teacher
embeddings. Each backbone runs in a fresh spawned process so that its peak
memory is its own: on CPU the worker's peak RSS (``ru_maxrss``, a per-process
high-water mark) minus its RSS after importing torch, i.e. model + optimiser
state + activations; on CUDA ``torch.cuda.max_memory_allocated``. ``vs det`` is
the step time over that of mobilenet_v2_fpn without an embedding head, which is
always measured first in the same run. Then CSTrack's options (``--options``) on
the ``--backbone`` with the per-location head at the first ``--train-dim``: the reciprocal
network (REN), the scale-aware embedding map (SAAN) and both; their ``vs det``
against the same baseline, and against that backbone's plain per-location row
where ``--backbones`` includes it. Backbones are randomly initialised: this
measures time, never accuracy.

Part 2, inference. One backbone (mobilenet_v2_fpn by default) in eval mode under
``torch.inference_mode``: model forward + ``student.inference.postprocess`` on one
frame, detection-only and with the per-location and per-anchor embedding heads
at D_s 64, 128 and 512 (TDT Tab. 6's speed trade) and CSTrack's options at D_s
128, each embedding model twice: evaluated only at the kept detections (sparse,
the default) and on the whole map (dense, ``dense_embeddings``). A random
detector scores every anchor near its prior, below any useful score threshold,
so every model is made to keep exactly ``--detections`` detections per frame
(score threshold 0, best N after NMS; checked on every frame, see
``forced_detections.py``): a sparse head then pays for N embeddings, as on a
real frame with N people. The models take turns on each frame and the median
frames/s is reported with ``fps / fps_det``, the ratio to the detection-only
model of the same run (interleaving and medians keep other processes' load from
favouring one model).

Defaults: 576x768 input (H x W), batch 1, 3 timed steps after 1 warm-up step per
backbone and 5 timed frames after 1 warm-up frame per head. A resnet50_fpn step
takes seconds on a CPU and each worker first spends a few seconds importing
torch, so these counts keep the whole run within minutes on two CPU cores;
raise ``--steps`` / ``--frames`` for steadier numbers on faster hardware.

Threads: all cores by default, for numbers from idle cores. Where other
processes keep the cores busy, torch's OpenMP threads spin-wait for a taken
core and everything runs many times slower; use ``--threads 1`` there.
``--quick`` is a smoke test and uses 1 thread.

    python benchmarks/student_speed.py                      # the full run (make bench)
    python benchmarks/student_speed.py --quick              # seconds: smoke test
    # training step per head layout of one backbone (what student/step_timing.py did)
    python benchmarks/student_speed.py --backbones mobilenet_v2_fpn --input 432 576 --batch 2 \\
        --train-heads detection_only per_location per_anchor --skip-inference
    # the sparse head's training saving: each head evaluated at the positives (BN statistics of
    # the whole map, or of the positives only) and densely
    python benchmarks/student_speed.py --backbones mobilenet_v2_fpn --input 432 576 --batch 2 \\
        --train-heads detection_only per_location per_anchor --train-dim 128 512 --train-dense \\
        --train-assigned-statistics --options --skip-inference
    # the pets09 recipes' step with and without REN / SAAN
    python benchmarks/student_speed.py --backbones mobilenet_v2_fpn --input 432 576 --batch 2 --skip-inference
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.forced_detections import check_kept, keeping_exactly  # noqa: E402
from student.config import BACKBONE_NAMES, LossConfig, ModelConfig  # noqa: E402
from student.families import build_student  # noqa: E402
from student.inference import postprocess  # noqa: E402
from student.losses import StudentCriterion  # noqa: E402
from student.model import StudentDetector  # noqa: E402
from student.recipe import OptimConfig  # noqa: E402
from student.schedule import build_optimizer  # noqa: E402

BASELINE_BACKBONE = "mobilenet_v2_fpn"
TEACHER_DIM = 512  # the widest D_s measured; the student regresses the leading D_s dims
BOXES_PER_IMAGE = 8
HEAD_LAYOUTS = ("detection_only", "per_location", "per_anchor")
INFERENCE_EMBEDDING_DIMS = (64, 128, 512)
# CSTrack's options, timed with the per-location head (the pets09 recipes' layout)
CSTRACK_OPTIONS = {
    "ren": {"reciprocal_network": True},
    "saan": {"scale_aware_embedding": True},
    "ren+saan": {"reciprocal_network": True, "scale_aware_embedding": True},
}
OPTIONS_INFERENCE_DIM = 128
DEFAULT_DETECTIONS = 8


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


FULL_DEFAULTS = {
    "input": (576, 768),
    "steps": 3,
    "frames": 5,
    "backbones": ["resnet18_fpn", "resnet34_fpn", "resnet50_fpn", "mobilenet_v2_fpn"],
    "threads": available_cores(),
}
QUICK_DEFAULTS = {
    "input": (128, 160),
    "steps": 2,
    "frames": 2,
    "backbones": ["mobilenet_v2_fpn", "resnet18_fpn"],
    "threads": 1,
}


@dataclasses.dataclass(frozen=True)
class HeadVariant:
    layout: str  # one of HEAD_LAYOUTS
    embedding_dim: int  # D_s; 0 for detection_only
    option: str = ""  # a key of CSTRACK_OPTIONS, or "" for none
    dense: bool = False  # training: the embedding head on every location, not only at positives
    # training, sparse head: BN statistics of the positives' windows, not of the whole map
    assigned_statistics: bool = False

    @property
    def label(self) -> str:
        if self.layout == "detection_only":
            return "detection only"
        name = self.option.upper() if self.option else self.layout
        evaluation = " dense" if self.dense else " assigned-BN" if self.assigned_statistics else ""
        return f"{name} D_s={self.embedding_dim}{evaluation}"

    def model_config(self, backbone: str, input_size: tuple[int, int]) -> ModelConfig:
        layout_fields = {} if self.layout == "detection_only" else {"embedding_head": self.layout}
        option_fields = CSTRACK_OPTIONS[self.option] if self.option else {}
        return ModelConfig(
            backbone=backbone,  # type: ignore[arg-type]
            embedding_dim=self.embedding_dim,
            input_height=input_size[0],
            input_width=input_size[1],
            dense_embeddings=self.dense,
            embedding_norm_statistics="assigned" if self.assigned_statistics else "map",
            **layout_fields,  # type: ignore[arg-type]
            **option_fields,  # type: ignore[arg-type]
        )


DETECTION_ONLY = HeadVariant("detection_only", 0)


@dataclasses.dataclass(frozen=True)
class TrainingRequest:
    backbone: str
    head: HeadVariant
    input_size: tuple[int, int]
    batch_size: int
    warmup_steps: int
    timed_steps: int
    threads: int
    device: str


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    seconds_per_step: float  # median
    forward_seconds: float  # median of the forward pass alone
    peak_memory_mb: float


def synthetic_targets(
    batch_size: int, input_size: tuple[int, int], device: torch.device, generator: torch.Generator
) -> list[dict[str, torch.Tensor]]:
    """Person-shaped boxes (width 0.4 x height) inside the image, with random unit teacher embeddings."""
    height, width = input_size
    targets = []
    for _ in range(batch_size):
        box_heights = height * (0.15 + 0.45 * torch.rand(BOXES_PER_IMAGE, generator=generator))
        box_sizes = torch.stack([0.4 * box_heights, box_heights], dim=1)
        centres = torch.rand(BOXES_PER_IMAGE, 2, generator=generator) * torch.tensor([width, height])
        boxes = torch.cat([centres - box_sizes / 2, centres + box_sizes / 2], dim=1)
        boxes = boxes.clamp(min=0).minimum(torch.tensor([width, height, width, height]))
        embeddings = torch.nn.functional.normalize(
            torch.randn(BOXES_PER_IMAGE, TEACHER_DIM, generator=generator), dim=1
        )
        targets.append(
            {
                "boxes": boxes.to(device),
                "ignore": torch.zeros(BOXES_PER_IMAGE, dtype=torch.bool, device=device),
                "identities": torch.full((BOXES_PER_IMAGE,), -1, device=device),
                "embeddings": embeddings.to(device),
            }
        )
    return targets


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_training(request: TrainingRequest) -> TrainingResult:
    """Runs in a fresh worker process: the peak-memory reading must cover this model alone."""
    torch.set_num_threads(request.threads)
    torch.manual_seed(0)
    device = torch.device(request.device)
    rss_before_model_mb = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    model_config = request.head.model_config(request.backbone, request.input_size)
    model = build_student(model_config, warn_if_random_backbone=False).to(device).train()
    criterion = StudentCriterion(LossConfig(), model_config).to(device)
    optim_config = OptimConfig()
    named_parameters = list(model.named_parameters()) + list(criterion.named_parameters())
    optimizer = build_optimizer(named_parameters, optim_config)
    trainable = [parameter for _, parameter in named_parameters if parameter.requires_grad]
    images = torch.rand(request.batch_size, 3, *request.input_size, device=device)
    targets = synthetic_targets(
        request.batch_size, request.input_size, device, torch.Generator().manual_seed(0)
    )

    step_seconds, forward_seconds = [], []
    for _ in range(request.warmup_steps + request.timed_steps):
        synchronise(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        outputs = model(images)
        synchronise(device)
        forward_done = time.perf_counter()
        criterion(outputs, targets).total.backward()
        if optim_config.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable, optim_config.grad_clip_norm)
        optimizer.step()
        synchronise(device)
        step_seconds.append(time.perf_counter() - start)
        forward_seconds.append(forward_done - start)

    if device.type == "cuda":
        peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_memory_mb = peak_rss_mb() - rss_before_model_mb
    timed = slice(request.warmup_steps, None)
    return TrainingResult(
        seconds_per_step=statistics.median(step_seconds[timed]),
        forward_seconds=statistics.median(forward_seconds[timed]),
        peak_memory_mb=peak_memory_mb,
    )


def measure_training_in_fresh_process(request: TrainingRequest) -> TrainingResult:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure_training, request).result()


@dataclasses.dataclass(frozen=True)
class InferenceRow:
    head: HeadVariant
    dense: bool  # the embedding head on the whole map rather than at the kept detections

    @property
    def evaluation(self) -> str:
        if self.head.layout == "detection_only":
            return "-"
        return "dense" if self.dense else "sparse"


def measure_inference(
    models: dict[HeadVariant, StudentDetector],
    input_size: tuple[int, int],
    detections: int,
    warmup_frames: int,
    timed_frames: int,
    device: torch.device,
) -> dict[InferenceRow, float]:
    """Median frames/s of forward + postprocess keeping exactly ``detections`` per frame, per model
    and embedding evaluation (sparse, dense), all taking turns on each frame."""
    frame = torch.rand(1, 3, *input_size, device=device)
    rows = {
        InferenceRow(head, dense): keeping_exactly(model.config, detections, dense_embeddings=dense)
        for head, model in models.items()
        for dense in ((False,) if head.layout == "detection_only" else (False, True))
    }
    seconds: dict[InferenceRow, list[float]] = {row: [] for row in rows}
    with torch.inference_mode():
        for frame_index in range(warmup_frames + timed_frames):
            for row, config in rows.items():
                synchronise(device)
                start = time.perf_counter()
                (found,) = postprocess(models[row.head](frame, dense_embeddings=row.dense), config)
                synchronise(device)
                if frame_index >= warmup_frames:
                    seconds[row].append(time.perf_counter() - start)
                check_kept(found, detections)
    return {row: 1.0 / statistics.median(times) for row, times in seconds.items()}


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {requested}: CUDA is not available in this torch build")
    return device


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: input 128 160, 2 steps, 2 frames, mobilenet_v2_fpn and resnet18_fpn, "
        "1 thread (explicit options still win)",
    )
    parser.add_argument(
        "--input",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="network input height and width (default 576 768)",
    )
    parser.add_argument("--batch", type=int, default=1, help="training images per step (default 1)")
    parser.add_argument(
        "--steps", type=int, help="timed training steps per backbone, after --warmup-steps (default 3)"
    )
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed first steps (default 1)")
    parser.add_argument(
        "--frames", type=int, help="timed inference frames per head, after --warmup-frames (default 5)"
    )
    parser.add_argument("--warmup-frames", type=int, default=1, help="untimed first frames (default 1)")
    parser.add_argument(
        "--backbones",
        nargs="+",
        choices=BACKBONE_NAMES,
        help="backbones to train (default all four)",
    )
    parser.add_argument(
        "--train-heads",
        nargs="+",
        choices=HEAD_LAYOUTS,
        default=["per_location"],
        help="head layouts timed in training for every backbone (default per_location)",
    )
    parser.add_argument(
        "--train-dim",
        type=int,
        nargs="+",
        default=[128],
        help="D_s of the training runs' embedding heads, one row per layout and D_s (default 128)",
    )
    parser.add_argument(
        "--train-dense",
        action="store_true",
        help="also time every embedding head of the training part evaluated densely (on every "
        "location, model.dense_embeddings) beside the default sparse one (only at the positives)",
    )
    parser.add_argument(
        "--train-assigned-statistics",
        action="store_true",
        help="also time every sparse embedding head of the training part with "
        "model.embedding_norm_statistics=assigned (BN statistics and hidden conv at the positives "
        "only) beside the default map statistics (hidden conv over the whole map)",
    )
    parser.add_argument(
        "--backbone",
        choices=BACKBONE_NAMES,
        default=BASELINE_BACKBONE,
        help=f"backbone of the inference part and of the option rows (default {BASELINE_BACKBONE})",
    )
    parser.add_argument(
        "--options",
        nargs="*",
        choices=sorted(CSTRACK_OPTIONS),
        default=list(CSTRACK_OPTIONS),
        help="CSTrack options timed with the per-location head in both parts (default all; "
        "none: --options with no value)",
    )
    parser.add_argument(
        "--detections",
        type=int,
        default=DEFAULT_DETECTIONS,
        help=f"detections every inference model keeps and embeds per frame (default {DEFAULT_DETECTIONS})",
    )
    parser.add_argument("--skip-training", action="store_true", help="run the inference part only")
    parser.add_argument("--skip-inference", action="store_true", help="run the training part only")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    args = parser.parse_args(argv)
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    positive = (*args.input, args.batch, args.steps, args.frames, args.threads, args.detections)
    if min(positive) <= 0:
        parser.error("--input, --batch, --steps, --frames, --threads and --detections must be positive")
    if args.warmup_steps < 0 or args.warmup_frames < 0:
        parser.error("--warmup-steps and --warmup-frames must be non-negative")
    if not all(0 < dim <= TEACHER_DIM for dim in args.train_dim):
        parser.error(f"--train-dim must be within 1..{TEACHER_DIM} (the synthetic teacher's size)")
    return args


def run_training_part(args: argparse.Namespace, device: torch.device) -> None:
    input_size = tuple(args.input)
    evaluations = [{}]  # sparse, map statistics
    if args.train_assigned_statistics:
        evaluations.append({"assigned_statistics": True})
    if args.train_dense:
        evaluations.append({"dense": True})
    embedding_layouts = [layout for layout in args.train_heads if layout != "detection_only"]
    heads = [DETECTION_ONLY] if "detection_only" in args.train_heads else []
    heads += [
        HeadVariant(layout, dim, **evaluation)
        for layout in embedding_layouts
        for dim in args.train_dim
        for evaluation in evaluations
    ]
    runs = [(BASELINE_BACKBONE, DETECTION_ONLY)]
    runs += [
        (backbone, head) for backbone in args.backbones for head in heads if (backbone, head) not in runs
    ]
    runs += [
        (args.backbone, HeadVariant("per_location", args.train_dim[0], option)) for option in args.options
    ]
    memory_label = "peak MB" if device.type == "cuda" else "peak RSS MB"
    print(
        f"\nTraining step: batch {args.batch}, median of {args.steps} steps after {args.warmup_steps} "
        "warm-up, one fresh process per row"
    )
    print(f"{'backbone':<18} {'head':<34} {'s/step':>8} {'forward s':>10} {memory_label:>12} {'vs det':>7}")
    baseline_seconds = None
    for backbone, head in runs:
        request = TrainingRequest(
            backbone=backbone,
            head=head,
            input_size=input_size,
            batch_size=args.batch,
            warmup_steps=args.warmup_steps,
            timed_steps=args.steps,
            threads=args.threads,
            device=str(device),
        )
        result = measure_training_in_fresh_process(request)
        baseline_seconds = baseline_seconds or result.seconds_per_step
        print(
            f"{backbone:<18} {head.label:<34} {result.seconds_per_step:>8.3f} {result.forward_seconds:>10.3f} "
            f"{result.peak_memory_mb:>12.0f} {result.seconds_per_step / baseline_seconds:>6.2f}x",
            flush=True,
        )
    if device.type == "cuda":
        memory_note = "peak MB: torch.cuda.max_memory_allocated of the worker"
    else:
        memory_note = "peak RSS MB: the worker's peak RSS minus its RSS after importing torch"
    print(f"vs det: s/step over {BASELINE_BACKBONE} detection-only s/step, same run; {memory_note}")


def run_inference_part(args: argparse.Namespace, device: torch.device) -> None:
    input_size = tuple(args.input)
    heads = [DETECTION_ONLY] + [
        HeadVariant(layout, dim)
        for layout in ("per_location", "per_anchor")
        for dim in INFERENCE_EMBEDDING_DIMS
    ]
    heads += [HeadVariant("per_location", OPTIONS_INFERENCE_DIM, option) for option in args.options]
    torch.manual_seed(0)
    models = {
        head: build_student(head.model_config(args.backbone, input_size), warn_if_random_backbone=False)
        .to(device)
        .eval()
        for head in heads
    }
    frames_per_second = measure_inference(
        models, input_size, args.detections, args.warmup_frames, args.frames, device
    )
    baseline_fps = frames_per_second[InferenceRow(DETECTION_ONLY, dense=False)]
    print(
        f"\nInference: {args.backbone}, forward + postprocess of 1 frame keeping and embedding exactly "
        f"{args.detections} detections, median of {args.frames} frames after {args.warmup_frames} "
        "warm-up, models taking turns"
    )
    print(f"{'head':<24} {'embeddings':>10} {'frames/s':>9} {'ms/frame':>9} {'fps/fps_det':>12}")
    for row, fps in frames_per_second.items():
        print(
            f"{row.head.label:<24} {row.evaluation:>10} {fps:>9.2f} {1000 / fps:>9.1f} "
            f"{fps / baseline_fps:>11.2f}x"
        )
    print(
        "fps/fps_det: frames/s over the detection-only model's, same run; sparse: the embedding "
        "head evaluated at the kept detections only (REN's re-ID map and SAAN's attended map are "
        "dense either way), dense: on the whole map"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    height, width = args.input
    print(
        f"student speed: torch {torch.__version__}, {args.threads} threads, device {device}, "
        f"input {height}x{width} (HxW){', quick' if args.quick else ''}"
    )
    if not args.skip_training:
        run_training_part(args, device)
    if not args.skip_inference:
        run_inference_part(args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
