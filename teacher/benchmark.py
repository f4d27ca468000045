"""Teacher throughput on real crops: model alone (one preprocessed batch) and crop-to-embedding.

    python -m teacher.benchmark --teacher osnet_x0_25 \\
        --teacher-weights ../shared/data/weights/osnet_x0_25_msmt17.pth --threads 2

Crops are the ground-truth boxes of a MOTChallenge sequence (default: MOT17-mini/MOT17-04-FRCNN
in the shared data folder, $TDT_SHARED_DATA or ../shared/data).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from tdt.process import configure_for_cli
from teacher.cli import add_teacher_arguments, teacher_config_from_args
from teacher.errors import TeacherError
from teacher.model import Teacher, build_teacher
from teacher.preprocess import crop_windows

_DEFAULT_SEQUENCE = Path("MOT17-mini") / "MOT17-04-FRCNN"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_for_cli(torch_threads=args.threads)
    try:
        teacher = build_teacher(teacher_config_from_args(args), allow_random_weights=args.random_weights)
    except TeacherError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    frames = _frames_with_boxes(args.sequence)
    batch = teacher.config.batch_size
    crops = sum(len(boxes) for _, boxes in frames)
    print(f"{teacher!r}; {len(frames)} frames, {crops} boxes; batch {batch}; {args.threads} threads")

    image, boxes = max(frames, key=lambda frame: len(frame[1]))
    tensor = teacher.preprocess_crops(image, np.resize(boxes, (batch, 4)))
    teacher.embed_tensor(tensor[:2])  # warm-up
    done, elapsed = _repeat(lambda: teacher.embed_tensor(tensor), batch, args.seconds)
    print(f"model only:        {done / elapsed:7.1f} crops/s ({done} crops in {elapsed:.1f} s)")

    done, elapsed = _repeat(lambda: _embed_all(teacher, frames), crops, args.seconds)
    print(f"crop + preprocess + model: {done / elapsed:7.1f} crops/s ({done} crops in {elapsed:.1f} s)")
    return 0


def _embed_all(teacher: Teacher, frames: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for image, boxes in frames:
        teacher.embed_crops(image, boxes)


def _repeat(work, crops_per_call: int, seconds: float) -> tuple[int, float]:
    started = time.perf_counter()
    done = 0
    while done == 0 or time.perf_counter() - started < seconds:
        work()
        done += crops_per_call
    return done, time.perf_counter() - started


def _frames_with_boxes(sequence: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every frame of a MOTChallenge sequence with its non-empty ground-truth boxes (x1,y1,x2,y2, 0-based)."""
    rows = np.loadtxt(sequence / "gt" / "gt.txt", delimiter=",", ndmin=2)
    frames = []
    for frame in np.unique(rows[:, 0]).astype(int):
        image = cv2.imread(str(sequence / "img1" / f"{frame:06d}.jpg"), cv2.IMREAD_COLOR)
        if image is None:
            continue
        xywh = rows[rows[:, 0] == frame, 2:6]
        boxes = np.concatenate([xywh[:, :2] - 1, xywh[:, :2] - 1 + xywh[:, 2:]], axis=1)
        _, non_empty = crop_windows(boxes, image.shape[1], image.shape[0])
        frames.append((image, boxes[non_empty]))
    if not frames:
        raise SystemExit(f"no frames with ground truth found in {sequence}")
    return frames


def _parser() -> argparse.ArgumentParser:
    shared = Path(os.environ.get("TDT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser = argparse.ArgumentParser(prog="python -m teacher.benchmark", description=__doc__.split("\n\n")[0])
    add_teacher_arguments(parser)
    parser.add_argument("--random-weights", action="store_true", help="no weights file (timing only)")
    parser.add_argument("--sequence", type=Path, default=shared / _DEFAULT_SEQUENCE, help="MOTChallenge dir")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum time per measurement")
    return parser


if __name__ == "__main__":
    sys.exit(main())
