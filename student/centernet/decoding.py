"""CenterNet / FairMOT decoding: heatmap peaks -> boxes in input pixels, embeddings at the peaks.

A peak is a cell whose probability equals the maximum of its 3x3
neighbourhood (the max-pool replaces NMS). The ``detections_per_image``
highest peaks (FairMOT keeps 500) at or above ``score_thresh`` are kept
(with ``peak_nms_thresh``, then a box NMS among them at that IoU); the
box is read at the peak cell, centred at cell + predicted offset, and scaled
by the stride to input pixels (the :class:`student.inference.Detector` then
maps them back through the letterbox). The embedding head is read at the
kept peaks only (a sparse head: evaluated only there) and L2-normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from ..config import ModelConfig
from ..detections import InputDetections
from .model import CenterNetOutputs
from .targets import box_corners, cell_positions


def heatmap_peaks(heatmap_logits: Tensor, top_k: int, score_thresh: float) -> tuple[Tensor, Tensor, Tensor]:
    """(image index, flat cell index, score) of the top-k 3x3 local maxima >= ``score_thresh``,
    each image's best first, images in order."""
    probabilities = torch.sigmoid(heatmap_logits.float())  # (B, 1, H, W)
    is_peak = F.max_pool2d(probabilities, 3, stride=1, padding=1) == probabilities
    peaks = (probabilities * is_peak).flatten(1)  # (B, H * W)
    scores, cells = peaks.topk(min(top_k, peaks.shape[1]), dim=1)
    image_index = torch.arange(peaks.shape[0], device=peaks.device)[:, None].expand_as(cells)
    kept = scores >= score_thresh
    return image_index[kept], cells[kept], scores[kept]


def cell_boxes(outputs: CenterNetOutputs, image_index: Tensor, cell_index: Tensor) -> Tensor:
    """(K, 4) x1, y1, x2, y2 in output-cell units of the boxes predicted at the given cells: centred
    at cell + predicted offset, sizes clamped at 0 (the training loss reads the same boxes)."""
    width = outputs.map_size[1]
    offset = outputs.offset.flatten(2)[image_index, :, cell_index].float()
    box = outputs.box.flatten(2)[image_index, :, cell_index].float().clamp(min=0)
    return box_corners(cell_positions(cell_index, width).float() + offset, box)


def decode_boxes(outputs: CenterNetOutputs, image_index: Tensor, cell_index: Tensor) -> Tensor:
    """(K, 4) x1, y1, x2, y2 in input pixels of the boxes predicted at the given cells."""
    corners = cell_boxes(outputs, image_index, cell_index)
    return clip_boxes_to_image(corners * outputs.stride, outputs.image_size)


def decode_center_outputs(outputs: CenterNetOutputs, config: ModelConfig) -> list[InputDetections]:
    """Detections per image; ``anchor_indices`` holds each detection's flat heatmap cell."""
    image_index, cell_index, scores = heatmap_peaks(
        outputs.heatmap_logits, config.detections_per_image, config.score_thresh
    )
    boxes = decode_boxes(outputs, image_index, cell_index)
    if config.peak_nms_thresh is not None:
        # batched_nms orders by score across images; the kept positions sorted back give the
        # peaks' own order: image by image, best first
        kept = batched_nms(boxes, scores, image_index, config.peak_nms_thresh).sort().values
        image_index, cell_index, scores, boxes = (
            image_index[kept],
            cell_index[kept],
            scores[kept],
            boxes[kept],
        )
    embeddings = None
    if outputs.has_embeddings:
        embeddings = F.normalize(outputs.detection_embeddings(image_index, cell_index, boxes).float(), dim=1)
    batch_size = outputs.heatmap_logits.shape[0]
    counts = torch.bincount(image_index, minlength=batch_size).tolist()
    labels = torch.zeros_like(cell_index)
    return [
        InputDetections(
            boxes=image_boxes,
            scores=image_scores,
            labels=image_labels,
            anchor_indices=image_cells,
            embeddings=image_embeddings,
        )
        for image_boxes, image_scores, image_labels, image_cells, image_embeddings in zip(
            boxes.split(counts),
            scores.split(counts),
            labels.split(counts),
            cell_index.split(counts),
            embeddings.split(counts) if embeddings is not None else [None] * batch_size,
            strict=True,
        )
    ]
