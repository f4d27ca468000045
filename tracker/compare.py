"""Compare trackers on MOTChallenge sequences: one-stage vs two-stage vs CE (TDT Table 1).

    python -m tracker.compare --sequences ../shared/data/PETS09-S2L1-half1 \\
        --one-stage runs/l2/last.pt --two-stage runs/det/last.pt --ce runs/ce/last.pt \\
        --teacher osnet_x0_25 --teacher-weights osnet_x0_25_msmt17.pth --oracle --out out/compare

Every tracker runs the same association (``tracker.Tracker``) with the same
TrackerConfig (``--tracker-config``) on the same frames; only the source of
detections and embeddings differs (:mod:`tracker.comparison` does the work):

- ``one-stage``: the student checkpoint (``--one-stage PATH``), detections and embeddings in one
  pass; ``--one-stage LABEL=PATH`` (repeatable, any student family) adds a row named LABEL;
- ``ce``: a one-stage student trained with identity cross-entropy (``--ce``);
- ``two-stage``: a detection-only checkpoint (``--two-stage``) + the teacher on each detected crop;
- ``oracle`` / ``oracle-iou`` (``--oracle``): ground-truth boxes (optionally jittered and
  thinned) with teacher embeddings / with none: the association alone;
- ``public`` (``--public``): the sequences' ``det/det.txt`` + the teacher.

Outputs in ``--out``: ``results.md`` (the table: HOTA, MOTA, IDF1, DetA, AssA, IDs,
FP, FN, AP@0.5, FPS and ms per stage; per-sequence tables), ``results.csv`` (one row per tracker
and sequence, plus OVERALL), ``results.json`` (everything, with the settings),
``results.png`` (chart, drawn with cv2) and ``<tracker>/<sequence>.txt`` (MOT results).

Evaluation (:mod:`tracker.evaluation`): MOT15 protocol for 10-column ground truth
(e.g. PETS09), MOT17 for 9-column (MOT20 by name); every metric by TrackEval's
HOTA / CLEAR / Identity classes; OVERALL pools all sequences.
AP@0.5 is computed on each frame's detections before association (every
detection the source scored) against the ground-truth targets, non-target
people (MOT15 flag 0; MOT17 distractor classes and mark-0 pedestrians) ignored. FPS counts the
model, teacher and association stages, not image decoding; each run's first
frame is not timed (warm-up).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tracker.cli import (
    HelpFormatter,
    add_frame_range_option,
    add_student_inference_options,
    add_teacher_options,
    add_threads_option,
    add_tracker_config_option,
    configure_process,
    frame_range_from_args,
    limit_numpy_blas_threads,
    run_command,
    teacher_config_from_args,
    threads_from_args,
    tracker_config_from_args,
)
from tracker.comparison import ComparisonConfig, LabelledCheckpoint, run_comparison
from tracker.sources import OraclePerturbation, SourceError

COMPARE_DESCRIPTION = """\
Compare trackers on MOTChallenge sequences with ground truth (TDT Table 1).

Rows: one-stage student (--one-stage PATH; or LABEL=PATH, repeatable, one row
per label, e.g. retinanet-l2=a.pt centernet-l2=b.pt), CE-trained student (--ce), two-stage
detector + re-ID teacher on each crop (--two-stage), ground-truth oracle with
and without teacher embeddings (--oracle), public detections + teacher
(--public). All run the same association with the same TrackerConfig on the
same frames. Evaluation: MOT15 protocol for 10-column gt (PETS09), MOT17 for
9-column gt (every metric by TrackEval's metric classes); AP@0.5 on the
detections before association. FPS counts model + teacher + association, not
image decoding.

Writes results.md (table: HOTA, MOTA, IDF1, DetA, AssA, IDs, FP, FN, AP@0.5,
FPS, ms per stage),
results.csv, results.json, results.png and <tracker>/<sequence>.txt to --out.
Bad input (missing checkpoint or teacher weights, a sequence without
gt/gt.txt): a one-line error and exit status 2.

example:
  python -m tracker.compare --sequences ../shared/data/PETS09-S2L1-half1 \\
      --one-stage runs/l2/last.pt --two-stage runs/det/last.pt --ce runs/ce/last.pt \\
      --teacher osnet_x0_25 --teacher-weights osnet_x0_25_msmt17.pth --oracle \\
      --frames 301 397 --out out/compare
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tracker.compare", description=COMPARE_DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--sequences",
        type=Path,
        nargs="+",
        required=True,
        help="MOTChallenge sequence folders (seqinfo.ini, img1/, gt/gt.txt)",
    )
    parser.add_argument(
        "--one-stage",
        nargs="+",
        action="extend",
        metavar="[LABEL=]PATH",
        help="student checkpoint(s) with an embedding head, of any family: PATH (row 'one-stage (L2)') "
        "and/or LABEL=PATH (a row named LABEL); repeatable",
    )
    parser.add_argument(
        "--two-stage", type=Path, help="detection-only checkpoint; the teacher embeds its crops"
    )
    parser.add_argument("--ce", type=Path, help="student checkpoint trained with identity cross-entropy")
    parser.add_argument(
        "--oracle",
        action="store_true",
        help="add ground-truth boxes + teacher embeddings (oracle) and ground-truth boxes alone (oracle-iou)",
    )
    parser.add_argument(
        "--oracle-jitter", type=float, default=0.0, help="oracle box noise, std as a fraction of size"
    )
    parser.add_argument(
        "--oracle-drop", type=float, default=0.0, help="probability an oracle box is left out"
    )
    parser.add_argument("--oracle-seed", type=int, default=0, help="seed of the oracle's jitter and drops")
    parser.add_argument(
        "--oracle-visibility-scores",
        action="store_true",
        help="score each oracle box by its share not hidden by people nearer the camera (default: 1), "
        "so that occluded people get the low scores BYTE association is made for",
    )
    parser.add_argument("--public", action="store_true", help="add det/det.txt public detections + teacher")
    parser.add_argument(
        "--public-min-score",
        type=float,
        default=0.0,
        help="raw score a public detection needs when the file's scores are not probabilities (ACF/DPM)",
    )
    add_frame_range_option(parser)
    add_tracker_config_option(parser)
    parser.add_argument("--device", default="cpu", help="torch device of the students")
    add_student_inference_options(parser)
    add_threads_option(parser)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_teacher_options(parser)
    return parser


def one_stage_checkpoints(values: Sequence[str] | None) -> tuple[Path | None, tuple[LabelledCheckpoint, ...]]:
    """``--one-stage`` values -> (the one unlabelled PATH or None, the LABEL=PATH checkpoints)."""
    plain: list[Path] = []
    labelled: list[LabelledCheckpoint] = []
    for value in values or ():
        label, separator, path = value.partition("=")
        if separator and label and path and "/" not in label and "\\" not in label:
            labelled.append(LabelledCheckpoint(label, Path(path)))
        else:
            plain.append(Path(value))
    if len(plain) > 1:
        raise SourceError(f"--one-stage: {len(plain)} unlabelled checkpoints; name each row as LABEL=PATH")
    return (plain[0] if plain else None), tuple(labelled)


def config_from_args(args: argparse.Namespace) -> ComparisonConfig:
    """The comparison the arguments describe; bad values fail here, before anything slow is loaded."""
    one_stage, labelled_one_stage = one_stage_checkpoints(args.one_stage)
    return ComparisonConfig(
        sequences=tuple(args.sequences),
        out=args.out,
        one_stage=one_stage,
        labelled_one_stage=labelled_one_stage,
        ce=args.ce,
        two_stage=args.two_stage,
        oracle=args.oracle,
        oracle_perturbation=OraclePerturbation(
            args.oracle_jitter, args.oracle_drop, args.oracle_seed, args.oracle_visibility_scores
        ),
        public=args.public,
        public_min_score=args.public_min_score,
        frame_range=frame_range_from_args(args),
        tracker_config=tracker_config_from_args(args),
        teacher=teacher_config_from_args(args),
        device=args.device,
        detections_per_image=args.detections_per_image,
        peak_nms_thresh=args.peak_nms,
        threads=threads_from_args(args),
        show_progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def compare() -> None:
        config = config_from_args(args)
        configure_process(config.threads)
        run_comparison(config)

    return run_command(compare)


if __name__ == "__main__":
    limit_numpy_blas_threads()
    sys.exit(main())
