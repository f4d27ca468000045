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
    detection-only model. :meth:`anchor_embeddings` reads either. Embeddings
    are raw regressions of teacher dimensions (not normalised).
    """

    class_logits: Tensor  # (B, num_anchors, NUM_CLASSES)
    box_deltas: Tensor  # (B, num_anchors, 4), BoxCoder(1, 1, 1, 1) encoding
    embeddings: Tensor | None
    anchors: Tensor  # (num_anchors, 4) x1, y1, x2, y2 in input pixels
    anchors_per_level: tuple[int, ...]
    anchors_per_location: int
    image_size: tuple[int, int]  # (height, width) of the input batch
    sparse_embeddings: SparseEmbeddings | None = dataclasses.field(default=None, repr=False)

    @property
    def has_embeddings(self) -> bool:
        return self.embeddings is not None or self.sparse_embeddings is not None

    @property
    def embeddings_per_anchor(self) -> bool:
        if self.sparse_embeddings is not None:
            return self.sparse_embeddings.head.per_anchor
        return self.embeddings is not None and self.embeddings.shape[1] == self.anchors.shape[0]

    def anchor_embeddings(self, image_index: int | Tensor, anchor_indices: Tensor) -> Tensor:
        """(K, D) raw embeddings of anchors ``anchor_indices`` of image(s) ``image_index``
        (an int, or a (K,) tensor pairing each anchor with its image)."""
        if self.embeddings is None:
            if self.sparse_embeddings is not None:
                return self.sparse_embeddings.at_anchors(image_index, anchor_indices)
            raise ValueError("this model has no embedding head")
        if self.embeddings_per_anchor:
            return self.embeddings[image_index, anchor_indices]
        return self.embeddings[image_index, anchor_indices // self.anchors_per_location]


class StudentDetector(nn.Module):
    """Backbone + FPN (P3-P7) with class, box and (optionally) embedding heads.

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
        self.embedding_head: EmbeddingHead | None = None
        if config.has_embedding_head:
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

    def forward(self, images: Tensor, dense_embeddings: bool | None = None) -> StudentOutputs:
        """Head outputs; the embedding head runs on the whole map only with ``dense_embeddings``
        (default: ``config.dense_embeddings``), otherwise where the outputs' reader asks for it."""
        features = self.pyramid(images)
        feature_sizes = [(f.shape[-2], f.shape[-1]) for f in features]
        anchors_per_level = self.anchor_grid.per_level(
            feature_sizes, device=images.device, dtype=torch.float32
        )
        if dense_embeddings is None:
            dense_embeddings = self.config.dense_embeddings
        embeddings = sparse_embeddings = None
        if self.embedding_head is not None:
            if dense_embeddings:
                embeddings = self.embedding_head(features)
            else:
                sparse_embeddings = SparseEmbeddings(
                    self.embedding_head, tuple(features), self.config.anchors_per_location
                )
        return StudentOutputs(
            class_logits=self.classification_head(features),
            box_deltas=self.box_head(features),
            embeddings=embeddings,
            anchors=torch.cat(anchors_per_level),
            anchors_per_level=tuple(len(a) for a in anchors_per_level),
            anchors_per_location=self.config.anchors_per_location,
            image_size=(images.shape[-2], images.shape[-1]),
            sparse_embeddings=sparse_embeddings,
        )
