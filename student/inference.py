"""Post-processing that keeps each detection's anchor, and the image-in, arrays-out Detector.

torchvision's RetinaNet post-processing drops the anchor a detection came
from; we need it to read that anchor's embedding, hence our own version:
per level, scores >= ``score_thresh``, top ``candidates_per_level``, decode,
then class-wise NMS and the best ``detections_per_image`` over all levels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from .augment import Placement
from .config import ModelConfig
from .model import StudentDetector, StudentOutputs, make_box_coder
from .transforms import bgr_to_input_tensor, detections_to_original

# settings that may differ between the trained model and how it is run
INFERENCE_SETTINGS = frozenset(
    {
        "input_height",
        "input_width",
        "score_thresh",
        "nms_thresh",
        "detections_per_image",
        "candidates_per_level",
        "dense_embeddings",
    }
)


@dataclasses.dataclass(frozen=True)
class InputDetections:
    """Detections of one image in network-input pixels."""

    boxes: Tensor  # (N, 4) x1, y1, x2, y2
    scores: Tensor  # (N,)
    labels: Tensor  # (N,) int64, always 0 (person)
    anchor_indices: Tensor  # (N,) int64 into StudentOutputs.anchors
    embeddings: Tensor | None  # (N, D), L2-normalised


def postprocess(outputs: StudentOutputs, config: ModelConfig) -> list[InputDetections]:
    """Detections per image of a batch, with the anchor index each came from.

    Embeddings are read after NMS and top-k, for the kept detections of all
    images at once (with a sparse head, the only places it is evaluated).
    """
    kept = [_image_detections(outputs, image, config) for image in range(outputs.class_logits.shape[0])]
    embeddings: list[Tensor | None] = [None] * len(kept)
    if outputs.has_embeddings and kept:
        anchor_indices = torch.cat([anchors for _, _, _, anchors in kept])
        counts = [len(anchors) for _, _, _, anchors in kept]
        image_index = torch.repeat_interleave(
            torch.arange(len(kept), device=anchor_indices.device),
            torch.tensor(counts, device=anchor_indices.device),
        )
        all_embeddings = F.normalize(outputs.anchor_embeddings(image_index, anchor_indices).float(), dim=1)
        embeddings = list(all_embeddings.split(counts))
    return [
        InputDetections(
            boxes=boxes, scores=scores, labels=labels, anchor_indices=anchors, embeddings=image_embeddings
        )
        for (boxes, scores, labels, anchors), image_embeddings in zip(kept, embeddings, strict=True)
    ]


def _image_detections(
    outputs: StudentOutputs, image: int, config: ModelConfig
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Boxes, scores, labels and anchor indices one image keeps after thresholds, NMS and top-k."""
    num_classes = outputs.class_logits.shape[2]
    level_starts = np.cumsum((0,) + outputs.anchors_per_level[:-1]).tolist()
    candidate_anchors, candidate_scores, candidate_labels = [], [], []
    for start, count in zip(level_starts, outputs.anchors_per_level, strict=True):
        scores = torch.sigmoid(outputs.class_logits[image, start : start + count]).flatten()
        above = torch.nonzero(scores >= config.score_thresh).flatten()
        top = scores[above].topk(min(config.candidates_per_level, len(above)))
        flat_indices = above[top.indices]
        candidate_anchors.append(start + torch.div(flat_indices, num_classes, rounding_mode="floor"))
        candidate_labels.append(flat_indices % num_classes)
        candidate_scores.append(top.values)
    anchor_indices = torch.cat(candidate_anchors)
    scores = torch.cat(candidate_scores)
    labels = torch.cat(candidate_labels)
    boxes = make_box_coder().decode_single(
        outputs.box_deltas[image, anchor_indices].float(), outputs.anchors[anchor_indices]
    )
    boxes = clip_boxes_to_image(boxes, outputs.image_size)
    keep = batched_nms(boxes, scores, labels, config.nms_thresh)[: config.detections_per_image]
    return boxes[keep], scores[keep], labels[keep], anchor_indices[keep]


class Detections(NamedTuple):
    """One frame's detections in original image pixels (the tracker's contract)."""

    tlbr: np.ndarray  # float32 (N, 4) x1, y1, x2, y2
    score: np.ndarray  # float32 (N,)
    embedding: np.ndarray | None  # float32 (N, D), L2-normalised; None without embedding head


class Detector:
    """Runs a student on cv2 BGR uint8 images; returns boxes in original pixels.

    Each image is letterboxed to ``config.input_height`` x ``input_width``
    exactly as the data loader's validation path does (aspect kept, centred,
    ImageNet-mean border; :func:`student.augment.letterbox`), converted BGR ->
    RGB and fed in [0, 1] (the model applies ImageNet mean/std). ``config`` defaults to the
    model's own; only its inference settings (input size, thresholds) may
    differ from the model's. The model is switched to eval mode.
    """

    def __init__(
        self,
        model: StudentDetector,
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
