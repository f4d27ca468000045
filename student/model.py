"""The student's "retinanet" family: a RetinaNet (one class, person) with an optional re-ID embedding head.

Build it through :func:`student.families.build_student`, which picks the family
named by ``ModelConfig.family`` and loads backbone weights.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder

from tdt.imagenet import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

from .anchors import AnchorGrid
from .backbones import build_backbone
from .config import FPN_STRIDES, ModelConfig
from .heads import BoxRegressionHead, ClassificationHead, EmbeddingHead
from .reciprocal import ReciprocalNetwork
from .scale_aware import ScaleAwareEmbedding, ScaleAwareEmbeddings
from .sparse_head import SparseEmbeddings

NUM_CLASSES = 1  # person
BOX_CODER_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def make_box_coder() -> BoxCoder:
    """(dx, dy, dw, dh) encoding of boxes relative to anchors, unweighted."""
    return BoxCoder(weights=BOX_CODER_WEIGHTS)


@dataclasses.dataclass(frozen=True)
class StudentOutputs:
    """Raw head outputs for a batch, anchors in the :class:`AnchorGrid` order.

    ``embeddings`` is the dense head output when the model ran with
    ``dense_embeddings``: (B, num_anchors, D) for the per-anchor head, (B,
    num_locations, D) for the per-location head (anchor ``i`` uses location
    ``i // anchors_per_location``); otherwise None, and ``sparse_embeddings``
    evaluates the head only at the anchors asked for. Both are None for the
    detection-only model. :meth:`anchor_embeddings` reads either. With
    ``scale_aware_embedding`` both are None and ``scale_aware_embeddings``
    holds the stride-8 SAAN map, read at points (box centres), never per
    anchor; :meth:`detection_embeddings` reads any of them for detections.
    Embeddings are raw regressions of teacher dimensions (not normalised).
    """

    class_logits: Tensor  # (B, num_anchors, NUM_CLASSES)
    box_deltas: Tensor  # (B, num_anchors, 4), BoxCoder(1, 1, 1, 1) encoding
    embeddings: Tensor | None
    anchors: Tensor  # (num_anchors, 4) x1, y1, x2, y2 in input pixels
    anchors_per_level: tuple[int, ...]
    anchors_per_location: int
    image_size: tuple[int, int]  # (height, width) of the input batch
    sparse_embeddings: SparseEmbeddings | None = dataclasses.field(default=None, repr=False)
    scale_aware_embeddings: ScaleAwareEmbeddings | None = dataclasses.field(default=None, repr=False)

    @property
    def has_embeddings(self) -> bool:
        return (
            self.embeddings is not None
            or self.sparse_embeddings is not None
            or self.scale_aware_embeddings is not None
        )

    @property
    def embeddings_per_anchor(self) -> bool:
        if self.sparse_embeddings is not None:
            return self.sparse_embeddings.head.per_anchor
        return self.embeddings is not None and self.embeddings.shape[1] == self.anchors.shape[0]

    def anchor_embeddings(self, image_index: int | Tensor, anchor_indices: Tensor) -> Tensor:
        """(K, D) raw embeddings of anchors ``anchor_indices`` of image(s) ``image_index``
        (an int, or a (K,) tensor pairing each anchor with its image)."""
        if self.scale_aware_embeddings is not None:
            raise ValueError(
                "the scale-aware embedding map is read at box centres, not per anchor: "
                "use detection_embeddings (or scale_aware_embeddings.at_points)"
            )
        if self.embeddings is None:
            if self.sparse_embeddings is not None:
                return self.sparse_embeddings.at_anchors(image_index, anchor_indices)
            raise ValueError("this model has no embedding head")
        if self.embeddings_per_anchor:
            return self.embeddings[image_index, anchor_indices]
        return self.embeddings[image_index, anchor_indices // self.anchors_per_location]

    def detection_embeddings(self, image_index: Tensor, anchor_indices: Tensor, boxes: Tensor) -> Tensor:
        """(K, D) raw embeddings of K detections of images ``image_index``: the embedding of the
        anchor each came from, or, with the scale-aware map, the map at its box's centre
        (``boxes`` (K, 4) x1, y1, x2, y2 in input pixels)."""
        if self.scale_aware_embeddings is not None:
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            return self.scale_aware_embeddings.at_points(image_index, centres)
        return self.anchor_embeddings(image_index, anchor_indices)


class StudentDetector(nn.Module):
    """Backbone + FPN (P3-P7) with class, box and (optionally) embedding heads; with
    ``reciprocal_network`` the heads read REN's task maps (:mod:`student.reciprocal`), with
    ``scale_aware_embedding`` the embedding is SAAN's stride-8 map (:mod:`student.scale_aware`).

    ``forward`` takes RGB images scaled to [0, 1], shape (B, 3, H, W), already
    letterboxed to a common size; ImageNet mean/std normalisation happens
    inside (out of place), so data loaders and the :class:`Detector` feed the
    same thing.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config)
        anchors_per_location = config.anchors_per_location
        self.anchor_grid = AnchorGrid.from_config(config)
        self.classification_head = ClassificationHead(
            config.fpn_channels, anchors_per_location, NUM_CLASSES, config.head_width, config.head_depth
        )
        self.box_head = BoxRegressionHead(
            config.fpn_channels, anchors_per_location, config.head_width, config.head_depth
        )
        self.reciprocal_network: ReciprocalNetwork | None = None
        if config.reciprocal_network:
            self.reciprocal_network = ReciprocalNetwork(config.fpn_channels)
        self.embedding_head: EmbeddingHead | None = None
        self.scale_aware_embedding: ScaleAwareEmbedding | None = None
        if config.scale_aware_embedding:
            self.scale_aware_embedding = ScaleAwareEmbedding(
                config.fpn_channels, config.embedding_head_width, config.embedding_dim
            )
        elif config.has_embedding_head:
            self.embedding_head = EmbeddingHead(
                config.fpn_channels,
                config.embedding_dim,
                anchors_per_location,
                width=config.embedding_head_width,
                num_levels=len(FPN_STRIDES),
                per_anchor=config.embedding_head == "per_anchor",
                share_convs_across_levels=config.share_embedding_convs_across_levels,
            )
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1), persistent=False)

    def pyramid(self, images: Tensor) -> list[Tensor]:
        """P3..P7 feature maps for RGB [0, 1] images."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        normalised = (images - self.pixel_mean) / self.pixel_std
        return list(self.backbone(normalised).values())

    def task_features(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """The maps the detection subnets and the embedding head read: REN's per level, or the
        pyramid itself for both."""
        if self.reciprocal_network is None:
            return features, features
        detection, reid = zip(*(self.reciprocal_network(level) for level in features), strict=True)
        return list(detection), list(reid)

    def forward(self, images: Tensor, dense_embeddings: bool | None = None) -> StudentOutputs:
        """Head outputs; the embedding head runs on the whole map only with ``dense_embeddings``
        (default: ``config.dense_embeddings``), otherwise where the outputs' reader asks for it."""
        detection_features, reid_features = self.task_features(self.pyramid(images))
        feature_sizes = [(f.shape[-2], f.shape[-1]) for f in detection_features]
        anchors_per_level = self.anchor_grid.per_level(
            feature_sizes, device=images.device, dtype=torch.float32
        )
        if dense_embeddings is None:
            dense_embeddings = self.config.dense_embeddings
        embeddings = sparse_embeddings = scale_aware = None
        if self.scale_aware_embedding is not None:
            attended = self.scale_aware_embedding.attended(reid_features)
            dense = self.scale_aware_embedding.output(attended) if dense_embeddings else None
            scale_aware = ScaleAwareEmbeddings(self.scale_aware_embedding, attended, FPN_STRIDES[0], dense)
        elif self.embedding_head is not None:
            if dense_embeddings:
                embeddings = self.embedding_head(reid_features)
            else:
                sparse_embeddings = SparseEmbeddings(
                    self.embedding_head,
                    tuple(reid_features),
                    self.config.anchors_per_location,
                    map_statistics=self.config.embedding_norm_statistics == "map",
                )
        return StudentOutputs(
            class_logits=self.classification_head(detection_features),
            box_deltas=self.box_head(detection_features),
            embeddings=embeddings,
            anchors=torch.cat(anchors_per_level),
            anchors_per_level=tuple(len(a) for a in anchors_per_level),
            anchors_per_location=self.config.anchors_per_location,
            image_size=(images.shape[-2], images.shape[-1]),
            sparse_embeddings=sparse_embeddings,
            scale_aware_embeddings=scale_aware,
        )
