"""Score MOTChallenge result files against ground truth: HOTA, MOTA, IDF1, ... as TrackEval prints them.

    python -m tracker.evaluate --gt MOT17-02-FRCNN/gt/gt.txt --results out/MOT17-02-FRCNN.txt
    python -m tracker.evaluate --gt-root MOT17/train --results-root out/tracker --protocol mot17 --json

The same code scores ``tracker.track`` and ``tracker.compare`` runs
(:mod:`tracker.evaluation`): the MOTChallenge protocol, then TrackEval's metric
classes. Prints one line per sequence plus the combined one (all sequences'
counts pooled), or the same as JSON. Bad input (a missing file, a malformed
line, a repeated id in a frame): a one-line error naming the file, exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tdt.process import configure_for_cli
from tracker.evaluation import MotBenchmark, MotMetrics, format_summary, prepare_sequence, summarize
from tracker.mot_format import MotFormatError, read_mot_file
from tracker.sequence import SequenceError, read_ground_truth

EXIT_USAGE = 2
PROTOCOLS = ("mot15", "mot16", "mot17", "mot20")
MOT_RESULT_MIN_COLUMNS = 6


class EvaluationInputError(ValueError):
    """A ground-truth or result file that cannot be scored; the message names the file."""


@dataclass(frozen=True)
class SequenceFiles:
    name: str
    ground_truth: Path
    results: Path


@dataclass(frozen=True)
class EvaluationRequest:
    """What to score. ``protocol`` None: from the ground truth (10 columns MOT15, else MOT17, or MOT20 by name)."""

    sequences: tuple[SequenceFiles, ...]
    protocol: MotBenchmark | None = None


@dataclass(frozen=True)
class EvaluationReport:
    protocols: dict[str, MotBenchmark]  # per sequence
    metrics: dict[str, MotMetrics]  # per sequence plus OVERALL

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocols": {name: str(protocol) for name, protocol in self.protocols.items()},
            "metrics": {
                name: {**dataclasses.asdict(values), "motchallenge_motp": values.motchallenge_motp}
                for name, values in self.metrics.items()
            },
        }


def evaluate_files(request: EvaluationRequest) -> EvaluationReport:
    protocols: dict[str, MotBenchmark] = {}
    prepared = {}
    for files in request.sequences:
        gt, protocol = _read_ground_truth(files, request.protocol)
        results = _read_results(files.results)
        try:
            prepared[files.name] = prepare_sequence(gt, results, protocol)
        except ValueError as error:
            raise EvaluationInputError(f"{files.name}: {error}") from error
        protocols[files.name] = protocol
    return EvaluationReport(protocols, summarize(prepared))


def sequences_in_folders(gt_root: Path, results_root: Path) -> tuple[SequenceFiles, ...]:
    """Every ``<gt_root>/<sequence>/gt/gt.txt`` paired with ``<results_root>/<sequence>.txt``."""
    for root, option in ((gt_root, "--gt-root"), (results_root, "--results-root")):
        if not root.is_dir():
            raise EvaluationInputError(f"{option} {root}: no such folder")
    gt_files = sorted(path for path in gt_root.glob("*/gt/gt.txt") if path.is_file())
    if not gt_files:
        raise EvaluationInputError(f"--gt-root {gt_root}: no <sequence>/gt/gt.txt below it")
    sequences = tuple(
        SequenceFiles(path.parent.parent.name, path, results_root / f"{path.parent.parent.name}.txt")
        for path in gt_files
    )
    missing = [str(files.results) for files in sequences if not files.results.is_file()]
    if missing:
        raise EvaluationInputError(
            f"--results-root {results_root}: no results for {len(missing)} of {len(sequences)} "
            f"sequence(s): {', '.join(missing)}"
        )
    return sequences


def _read_ground_truth(
    files: SequenceFiles, protocol: MotBenchmark | None
) -> tuple[np.ndarray, MotBenchmark]:
    _require_file(files.ground_truth, "ground truth")
    if protocol is None:
        try:
            ground_truth = read_ground_truth(files.ground_truth, files.name)
        except SequenceError as error:
            raise EvaluationInputError(str(error)) from error
        return ground_truth.rows, ground_truth.benchmark
    rows = _read_rows(files.ground_truth, protocol.min_gt_columns)
    if protocol.has_classes and len(rows) and not (rows[:, 7] == 1).any():
        raise EvaluationInputError(
            f"{files.ground_truth}: no row of class 1 (pedestrian) in column 8; "
            f"MOT15 ground truth has no class column: use --protocol mot15"
        )
    return rows, protocol


def _read_results(path: Path) -> np.ndarray:
    _require_file(path, "results")
    rows = _read_rows(path, MOT_RESULT_MIN_COLUMNS)
    pairs, counts = np.unique(rows[:, :2], axis=0, return_counts=True)
    if (counts > 1).any():
        frame, track_id = pairs[np.argmax(counts > 1)]
        raise EvaluationInputError(f"{path}: id {int(track_id)} appears more than once in frame {int(frame)}")
    return rows


def _read_rows(path: Path, min_columns: int) -> np.ndarray:
    try:
        return read_mot_file(path, min_columns=min_columns)
    except MotFormatError as error:
        raise EvaluationInputError(str(error)) from error
    except (OSError, UnicodeDecodeError) as error:
        raise EvaluationInputError(f"{path}: cannot read ({error})") from error


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise EvaluationInputError(f"{path}: no such {what} file")


# ---- command line -------------------------------------------------------------------------------

DESCRIPTION = """\
Score MOTChallenge result files (frame,id,x,y,w,h,score,...) against ground truth.

HOTA, DetA, AssA (TrackEval's HOTA class) and MOTA, IDF1, IDs, FP, FN, MT/ML
(its CLEAR and Identity classes) after the MOTChallenge protocol: MOT16/17/20
score class-1 rows with mark 1 and remove predictions matched to distractor
classes (2, 7, 8, 12; MOT20 also 6); MOT15 drops rows flagged 0. Prints one line
per sequence and the combined one.

examples:
  python -m tracker.evaluate --gt seq/gt/gt.txt --results out/seq.txt --protocol mot17
  python -m tracker.evaluate --gt-root MOT17/train --results-root out/tracker --json
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tracker.evaluate",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gt", type=Path, help="one sequence's ground truth (gt.txt)")
    parser.add_argument("--results", type=Path, help="the tracker's MOT results for that sequence")
    parser.add_argument("--name", help="sequence name for --gt/--results (default: the results file's stem)")
    parser.add_argument(
        "--gt-root", type=Path, help="folder of MOTChallenge sequences: every <sequence>/gt/gt.txt is scored"
    )
    parser.add_argument(
        "--results-root", type=Path, help="folder with one <sequence>.txt per sequence of --gt-root"
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=None,
        help="evaluation rules (default: mot15 for 10-column gt, else mot17, mot20 for MOT20-* names)",
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    return parser


def request_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> EvaluationRequest:
    file_form = args.gt is not None or args.results is not None
    folder_form = args.gt_root is not None or args.results_root is not None
    if file_form == folder_form:
        parser.error("give either --gt and --results, or --gt-root and --results-root")
    if file_form and (args.gt is None or args.results is None):
        parser.error("--gt and --results go together")
    if folder_form and (args.gt_root is None or args.results_root is None):
        parser.error("--gt-root and --results-root go together")
    if args.name is not None and args.gt is None:
        parser.error("--name applies to --gt/--results only")
    protocol = None if args.protocol is None else MotBenchmark.from_protocol(args.protocol)
    if args.gt is not None:
        sequences: tuple[SequenceFiles, ...] = (
            SequenceFiles(args.name or args.results.stem, args.gt, args.results),
        )
    else:
        sequences = sequences_in_folders(args.gt_root, args.results_root)
    return EvaluationRequest(sequences, protocol)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_for_cli()
    try:
        report = evaluate_files(request_from_args(args, parser))
    except EvaluationInputError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(_json_safe(report.to_dict()), indent=2, allow_nan=False))
    else:
        names = ", ".join(f"{name} {protocol}" for name, protocol in report.protocols.items())
        print(f"protocol: {names}")
        print(format_summary(report.metrics))
    return 0


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    return value


if __name__ == "__main__":
    sys.exit(main())
