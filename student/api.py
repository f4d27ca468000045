"""Loading trained students from checkpoints (``student.load``).

Checkpoints are read with ``torch.load(weights_only=True)`` (no pickled code
runs) and the architecture is rebuilt from the ``ModelConfig`` stored in the
checkpoint, so a caller needs nothing but the file. Loading changes no
process-wide state; a command line that runs many batches opts in to the
allocator set-up itself (:func:`tdt.process.configure_for_cli`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from tdt.config import ConfigError

from .checkpoint import CheckpointError, TrainingCheckpoint, load_checkpoint
from .config import ModelConfig
from .families import build_student
from .inference import Detector
from .model import StudentDetector


def load_student(
    checkpoint_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    expected_config: ModelConfig | None = None,
) -> tuple[StudentDetector, TrainingCheckpoint]:
    """The model of a checkpoint (in eval mode, on ``device``) and the checkpoint itself.

    With ``expected_config`` a checkpoint of another architecture is a
    :class:`student.checkpoint.CheckpointError` naming the differing keys
    (inference settings such as thresholds and input size may differ).
    """
    checkpoint = load_checkpoint(checkpoint_path, expected_config=expected_config, map_location="cpu")
    try:
        model_config = ModelConfig.from_dict(checkpoint.model_config)
    except ConfigError as error:
        raise CheckpointError(f"{checkpoint_path}: invalid model config in checkpoint: {error}") from error
    model = build_student(model_config, warn_if_random_backbone=False)
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as error:  # missing / unexpected keys or shapes: not this architecture's weights
        raise CheckpointError(
            f"{checkpoint_path}: weights do not fit the architecture recorded in the checkpoint: {error}"
        ) from error
    readout = getattr(model, "box_readout", None)
    if readout is not None and not bool(readout.solved):
        raise CheckpointError(
            f"{checkpoint_path}: saved at step {checkpoint.step}, before its box readout was solved "
            "(model.embedding_pooling: box solves it after the last step): use the finished run's "
            "last.pt, whose embeddings come from the solved readout"
        )
    return model.to(device).eval(), checkpoint


def load(
    checkpoint_path: str | Path, device: str | torch.device = "cpu", *, dense_embeddings: bool = False
) -> Detector:
    """A ready :class:`student.inference.Detector` (BGR images in, boxes / scores /
    L2-normalised embeddings in original pixels out) from a training checkpoint.

    The embedding head runs only at the detections it keeps; ``dense_embeddings``
    runs it on the whole map first (same embeddings, for parity checks), whatever
    the checkpoint's recipe trained with.
    """
    model, _ = load_student(checkpoint_path, device=device)
    config = dataclasses.replace(model.config, dense_embeddings=dense_embeddings)
    return Detector(model, config=config, device=device)
