"""Training step time of the CenterNet recipe with and without its GIoU box term.

Each training is a fresh ``python -m student.train`` process on a finished demo's shards
(``--demo-out``), ``--max-steps STEPS``, ``--threads T`` (default 1, as ``make demo``
trains), no final evaluation and no readout solve after the last step (the same for
both). The recipe (default: the demo's student) runs as written and with
``loss.box_giou_weight=0`` and ``loss.box_sample_fraction=0`` (L1 box loss only); the two
alternate for ``--rounds`` rounds and the trainer's own seconds per step (start-up
excluded) is compared by median, with the ratio (above 1: the term costs time). The
targets come from the real data, so the term reads as many regression samples per image
as the demo's training does; accuracy is measured with whole trainings in the README.

    python benchmarks/box_giou_step.py                         # the demo's student, 40 steps
    python benchmarks/box_giou_step.py --recipe configs/demo-det.yaml --steps 60 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cpu_precision import (  # noqa: E402
    add_training_arguments,
    demo_inputs,
    median_step_times,
    print_medians,
)

VARIANTS = {
    "L1 only": ["--set", "loss.box_giou_weight=0", "--set", "loss.box_sample_fraction=0"],
    "as the recipe": [],
}
NO_READOUT_SOLVE = ["--set", "optim.embedding_refit_ridge=null", "--set", "model.embedding_pooling=centre"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_training_arguments(parser)
    args = parser.parse_args(argv)
    weights = demo_inputs(parser, args.demo_out)
    variants = {name: NO_READOUT_SOLVE + sets for name, sets in VARIANTS.items()}
    medians = median_step_times(args, weights, variants, scratch_prefix="box-giou-step-")
    print_medians(args, medians, "with / without")
    return 0


if __name__ == "__main__":
    sys.exit(main())
