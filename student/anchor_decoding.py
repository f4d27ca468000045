"""RetinaNet post-processing that keeps each detection's anchor (the "retinanet" family's decoding).

torchvision's RetinaNet post-processing drops the anchor a detection came
from; we need it to read that anchor's embedding, hence our own version:
per level, scores >= ``score_thresh``, top ``candidates_per_level``, decode,
then class-wise NMS and the best ``detections_per_image`` over all levels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from .config import ModelConfig
from .detections import InputDetections
from .model import StudentOutputs, make_box_coder


def decode_anchor_outputs(outputs: StudentOutputs, config: ModelConfig) -> list[InputDetections]:
    """Detections per image of a batch, with the anchor index each came from.

    Embeddings are read after NMS and top-k, for the kept detections of all
    images at once (with a sparse head, the only places it is evaluated): at
    each detection's anchor, or at its box centre on the scale-aware map.
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
        boxes = torch.cat([image_boxes for image_boxes, _, _, _ in kept])
        read = outputs.detection_embeddings(image_index, anchor_indices, boxes)
        all_embeddings = F.normalize(read.float(), dim=1)
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
