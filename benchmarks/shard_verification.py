"""What the read-time checks cost: shard sha256 against reading the shards, and the image end-marker check.

    python benchmarks/shard_verification.py [SHARD_DIR] [--images DIR]

SHARD_DIR defaults to out/shards-pets (``python -m pipeline.distill --dataset
pets09-s2l1-half1 --teacher osnet_x0_25 --teacher-weights
../shared/data/weights/osnet_x0_25_msmt17.pth --out out/shards-pets``); --images
defaults to the PETS09 frames of the shared data. Each figure is the best of several
repetitions, on one thread.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2

from pipeline.shards import ShardSet, sha256_file
from tdt.images import truncation_problem

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = (
    Path(os.environ.get("TDT_SHARED_DATA", REPO.parent / "shared" / "data")) / "PETS09-S2L1-half1/img1"
)


def best_seconds(work: Callable[[], object], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def read_every_shard(directory: Path, verify: bool) -> None:
    shards = ShardSet(directory, verify_checksums=verify, cache_shards=1 << 20)
    for index in range(len(shards.manifest.shards)):
        shards.shard_table(index)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", nargs="?", type=Path, default=Path("out/shards-pets"))
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    args = parser.parse_args()
    if not (args.shards / "manifest.json").is_file():
        print(f"no shard directory at {args.shards}; make it with the command in this file's docstring")
        return 2
    cv2.setNumThreads(1)
    files = sorted(args.shards.glob("shard-*"))
    size = sum(path.stat().st_size for path in files)
    hashing = best_seconds(lambda: [sha256_file(path) for path in files])
    verified = best_seconds(lambda: read_every_shard(args.shards, verify=True))
    unverified = best_seconds(lambda: read_every_shard(args.shards, verify=False))
    block = os.urandom(256 << 20)
    in_memory = best_seconds(lambda: hashlib.sha256(block).digest(), repeat=3)
    print(f"{len(files)} shards, {size / 1e6:.2f} MB")
    print(f"sha256 of the shard files:        {hashing * 1e3:.1f} ms ({size / hashing / 1e6:.0f} MB/s)")
    print(f"read + check every shard, sha256: {verified * 1e3:.1f} ms")
    print(f"read + check every shard, none:   {unverified * 1e3:.1f} ms")
    print(f"sha256 of 256 MiB in memory:      {in_memory:.2f} s ({len(block) / in_memory / 1e6:.0f} MB/s)")
    images = sorted(args.images.glob("*.jpg"))[:100]
    if images:
        decode = best_seconds(lambda: [cv2.imread(str(path)) for path in images]) / len(images)
        check = best_seconds(lambda: [truncation_problem(path) for path in images]) / len(images)
        print(
            f"{len(images)} JPEGs: cv2.imread {decode * 1e3:.2f} ms/image, end-marker check {check * 1e3:.3f} ms/image"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
