"""Post-processing of any family's outputs, and the image-in, arrays-out Detector.

Each model family decodes its own outputs (:mod:`student.anchor_decoding` for
RetinaNet, :mod:`student.centernet.decoding` for CenterNet); :func:`postprocess`
picks the decoder of ``config.family`` and :class:`Detector` runs any family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .augment import Placement
from .config import INFERENCE_SETTINGS, ModelConfig
from .detections import InputDetections
from .families import model_family
from .transforms import bgr_to_input_tensor, detections_to_original


def postprocess(outputs: Any, config: ModelConfig) -> list[InputDetections]:
    """Detections per image of a batch of ``config.family`` model outputs, each with where it was
    read (anchor or heatmap cell) and, for a model with an embedding head, its L2-normalised
    embedding (evaluated only at the kept detections unless the model ran dense)."""
    return model_family(config.family).postprocess(outputs, config)


class Detections(NamedTuple):
    """One frame's detections in original image pixels (the tracker's contract)."""

    tlbr: np.ndarray  # float32 (N, 4) x1, y1, x2, y2
    score: np.ndarray  # float32 (N,)
    embedding: np.ndarray | None  # float32 (N, D), L2-normalised; None without embedding head


class Detector:
    """Runs a student of any family on cv2 BGR uint8 images; returns boxes in original pixels.

    Each image is letterboxed to ``config.input_height`` x ``input_width``
    exactly as the data loader's validation path does (aspect kept, centred,
    ImageNet-mean border; :func:`student.augment.letterbox`), converted BGR ->
    RGB and fed in [0, 1] (the model applies ImageNet mean/std). ``config`` defaults to the
    model's own; only its inference settings (input size, thresholds) may
    differ from the model's. The model is switched to eval mode.
    """

    def __init__(
        self,
        model: nn.Module,
        config: ModelConfig | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        config = config if config is not None else model.config
        architecture_differences = sorted(
            field.name
            for field in dataclasses.fields(ModelConfig)
            if field.name not in INFERENCE_SETTINGS
            and getattr(config, field.name) != getattr(model.config, field.name)
        )
        if architecture_differences:
            raise ValueError(
                f"config differs from the model's in architecture field(s) {architecture_differences}"
            )
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @property
    def embedding_dim(self) -> int | None:
        return self.config.embedding_dim if self.config.has_embedding_head else None

    def detect(self, image_bgr: np.ndarray) -> Detections:
        return self.detect_batch([image_bgr])[0]

    def detect_batch(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        if len(images_bgr) == 0:
            return []
        prepared = [bgr_to_input_tensor(image, self.config.input_size) for image in images_bgr]
        batch = torch.stack([tensor for tensor, _ in prepared]).to(self.device)
        with torch.inference_mode():
            outputs = self.model(batch, dense_embeddings=self.config.dense_embeddings)
            per_image = postprocess(outputs, self.config)
        return [
            self._to_original(detections, placement)
            for detections, (_, placement) in zip(per_image, prepared, strict=True)
        ]

    def _to_original(self, detections: InputDetections, placement: Placement) -> Detections:
        tlbr, has_area = detections_to_original(placement, detections.boxes.cpu().numpy())
        embedding = None
        if detections.embeddings is not None:
            embedding = detections.embeddings.cpu().numpy().astype(np.float32)[has_area]
        return Detections(
            tlbr=tlbr,
            score=detections.scores.cpu().numpy().astype(np.float32)[has_area],
            embedding=embedding,
        )
