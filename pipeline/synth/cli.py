"""Command line: ``python -m pipeline.synth --out DIR [options]``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.synth.config import PRESETS, build_config
from pipeline.synth.parallel import usable_cores
from pipeline.synth.world import WorldError, generate
from tdt.process import configure_for_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.synth",
        description=(
            "Generate a seeded SYNTHETIC pedestrian world: CrowdHuman-format still images "
            "(DIR/crowdhuman) and MOTChallenge-format sequences with identities (DIR/mot/train/SYNTH-NN), "
            "for the out-of-the-box demo and the tests. Same seed and options give byte-identical files. "
            "Read it back with --dataset synth-crowdhuman / synth-mot (root: $TDT_SYNTH_ROOT, default "
            "out/demo/world)."
        ),
        epilog=(
            "Presets: demo = 400+60 images and 3 sequences x 120 frames at 480x360, 10 fps; "
            "tiny = 12+4 images and 2 x 12 frames at 160x128 (tests). Rerunning with the same options "
            "is a no-op; other options on an existing world need --overwrite. The files do not depend "
            "on --workers."
        ),
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="demo", help="size preset (default demo)"
    )
    parser.add_argument("--images", type=int, help="training still images (overrides the preset)")
    parser.add_argument("--val-images", type=int, help="validation still images")
    parser.add_argument("--sequences", type=int, help="number of MOT sequences")
    parser.add_argument("--frames", type=int, help="frames per sequence")
    parser.add_argument("--height", type=int, help="image height in pixels (images and sequences)")
    parser.add_argument("--width", type=int, help="image width in pixels (images and sequences)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a world made with other options (only its own files)",
    )
    parser.add_argument(
        "--check", action="store_true", help="on a rerun, re-hash every file against world.json"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=usable_cores(),
        help="processes that render images and sequences (default: the usable cores, here %(default)s; "
        "1 renders in this process)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_for_cli()
    if args.workers < 1:
        print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    try:
        config = build_config(
            args.preset,
            seed=args.seed,
            images=args.images,
            val_images=args.val_images,
            sequences=args.sequences,
            frames=args.frames,
            height=args.height,
            width=args.width,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(desc="synth", unit="img", leave=False)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(1)

    try:
        outcome = generate(
            config,
            args.out,
            overwrite=args.overwrite,
            check=args.check,
            workers=args.workers,
            progress=progress,
        )
    except WorldError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no world.json written; rerun the same command to redo it", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    megabytes = outcome.bytes / 1e6
    if outcome.status == "already generated":
        print(
            f"already generated: {args.out} ({outcome.files} files, {megabytes:.1f} MB, seed {config.seed})"
        )
    else:
        seconds = time.perf_counter() - started
        print(
            f"generated {args.out}: {outcome.files} files, {megabytes:.1f} MB in {seconds:.1f} s (seed {config.seed})"
        )
    return 0
