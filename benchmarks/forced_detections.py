"""Make a randomly initialised student keep exactly N detections per frame, for timing.

A random detector scores every anchor near its prior, below any useful score
threshold, so its post-processing keeps nothing, and an embedding head that is
evaluated only at the kept detections looks free. With score threshold 0, at
most :data:`CANDIDATES_PER_LEVEL` candidates per FPN level into NMS (about as
many as a trained detector has above its threshold in a crowded frame) and
``detections_per_image`` N, post-processing keeps the best N: the head then
pays for N embeddings, as it would on a real frame with N people.
:func:`check_kept` makes sure it did. Used by ``one_vs_two_stage.py`` and
``student_speed.py``; no torch import here (callers import it lazily).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from student import InputDetections, ModelConfig

CANDIDATES_PER_LEVEL = 200


def keeping_exactly(config: ModelConfig, count: int, **changes: Any) -> ModelConfig:
    """``config`` with the inference settings that keep the ``count`` best detections whatever
    their scores (``changes``: further inference settings, e.g. ``dense_embeddings``)."""
    return dataclasses.replace(
        config,
        score_thresh=0.0,
        candidates_per_level=CANDIDATES_PER_LEVEL,
        detections_per_image=count,
        **changes,
    )


def check_kept(found: InputDetections, count: int) -> None:
    """Stop the benchmark unless one image's post-processing kept and embedded ``count`` detections."""
    embedded = None if found.embeddings is None else len(found.embeddings)
    if len(found.boxes) != count or embedded not in (None, count):
        raise SystemExit(f"kept {len(found.boxes)} detections and {embedded} embeddings, wanted {count}")
