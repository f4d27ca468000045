"""Time one training step (forward, loss, backward) of student variants on random input.

    python -m student.step_timing --backbone mobilenet_v2_fpn --height 432 --width 576

A quick measurement for choosing a variant, not a benchmark suite: random
images, 8 random person boxes per image with random unit teacher embeddings.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from .config import BACKBONE_NAMES, LossConfig, ModelConfig
from .losses import StudentCriterion
from .model import build_student

VARIANTS: dict[str, dict[str, object]] = {
    "detection_only": {"embedding_dim": 0},
    "per_location": {"embedding_head": "per_location"},
    "per_anchor": {"embedding_head": "per_anchor"},
}


def random_targets(batch: int, height: int, width: int, teacher_dim: int, generator: torch.Generator):
    targets = []
    for _ in range(batch):
        centres = torch.rand(8, 2, generator=generator) * torch.tensor([width, height])
        heights = 40 + torch.rand(8, generator=generator) * (height / 2)
        sizes = torch.stack([heights * 0.4, heights], dim=1)
        boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
        embeddings = torch.nn.functional.normalize(torch.rand(8, teacher_dim, generator=generator), dim=1)
        targets.append(
            {
                "boxes": boxes,
                "ignore": torch.zeros(8, dtype=torch.bool),
                "identities": torch.full((8,), -1),
                "embeddings": embeddings,
            }
        )
    return targets


def time_variant(config: ModelConfig, batch: int, repeats: int) -> tuple[float, float]:
    """(seconds per image for forward + loss + backward, forward-only seconds per image)."""
    torch.manual_seed(0)
    model = build_student(config, warn_if_random_backbone=False).train()
    criterion = StudentCriterion(LossConfig(), config)
    images = torch.rand(batch, 3, config.input_height, config.input_width)
    targets = random_targets(batch, config.input_height, config.input_width, 512, torch.Generator().manual_seed(0))
    step_times, forward_times = [], []
    warmup = 2  # first rounds pay for allocator and oneDNN kernel set-up
    for _ in range(warmup + repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        outputs = model(images)
        forward_times.append(time.perf_counter() - start)
        criterion(outputs, targets).total.backward()
        step_times.append(time.perf_counter() - start)
    return min(step_times[warmup:]) / batch, min(forward_times[warmup:]) / batch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", choices=BACKBONE_NAMES, default="mobilenet_v2_fpn")
    parser.add_argument("--height", type=int, default=432)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = ModelConfig(
        backbone=args.backbone,
        embedding_dim=args.embedding_dim,
        input_height=args.height,
        input_width=args.width,
    )
    print(
        f"{args.backbone} {args.height}x{args.width} batch {args.batch}, "
        f"{torch.get_num_threads()} threads, best of {args.repeats}"
    )
    for name in args.variants:
        config = dataclasses.replace(base, **VARIANTS[name])  # type: ignore[arg-type]
        step, forward = time_variant(config, args.batch, args.repeats)
        print(f"{name:>15}: forward+loss+backward {step * 1000:7.0f} ms/image (forward {forward * 1000:5.0f})")


if __name__ == "__main__":
    main()
