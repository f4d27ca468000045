"""Typed, frozen configuration of the student detector and its losses.

Both configs round-trip through plain dicts (``to_dict`` / ``from_dict``) so they
can live in YAML recipes and in checkpoints; loading is :mod:`tdt.config`'s
(strict: an unknown key is an error, so a typo in a recipe never silently falls
back to a default).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal, Self, get_args

from tdt.config import ConfigError, PlainConfig

ModelFamilyName = Literal["retinanet", "centernet"]
BackboneName = Literal["resnet18_fpn", "resnet34_fpn", "resnet50_fpn", "mobilenet_v2_fpn"]
EmbeddingHeadLayout = Literal["per_anchor", "per_location"]
EmbeddingLossMode = Literal["l2", "ce", "l2+ce"]
IgnoreOverlap = Literal["iou", "ioa"]
CenterBoxEncoding = Literal["ltrb", "wh"]
LabelAssignment = Literal["centre", "adamot"]
EmbeddingNormStatistics = Literal["map", "assigned"]
EmbeddingPooling = Literal["centre", "box"]
ClassificationLoss = Literal["focal", "discriminative_focal"]

MODEL_FAMILY_NAMES: tuple[str, ...] = get_args(ModelFamilyName)
BACKBONE_NAMES: tuple[str, ...] = get_args(BackboneName)
FPN_LEVEL_NAMES: tuple[str, ...] = ("P3", "P4", "P5", "P6", "P7")
FPN_STRIDES: tuple[int, ...] = (8, 16, 32, 64, 128)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# ModelConfig keys that change what inference keeps and how (or how the embedding head is
# evaluated), not the shapes of the weights: a checkpoint may be loaded, and a Detector run, with
# other values than it was trained with.
INFERENCE_SETTINGS: frozenset[str] = frozenset(
    {
        "input_height",
        "input_width",
        "score_thresh",
        "nms_thresh",
        "peak_nms_thresh",
        "detections_per_image",
        "candidates_per_level",
        "dense_embeddings",
        "embedding_norm_statistics",
    }
)


@dataclasses.dataclass(frozen=True)
class ModelConfig(PlainConfig):
    """Architecture and inference settings of the student (one class: person).

    ``family`` names the detector design (its entry in :mod:`student.families`,
    which builds the network and its loss); every family shares the keys below.
    ``embedding_dim`` is D_s, the number of leading teacher dimensions the
    embedding head regresses (paper: 64, 128, 256 or 512); 0 builds the
    detection-only variant (the two-stage reference's detector).
    Anchor aspect ratios are WIDTH / HEIGHT (0.25 is a box four times taller
    than wide); anchor sizes are the square root of the anchor area.
    Images are letterboxed to ``input_height`` x ``input_width`` (aspect kept).
    ``dense_embeddings`` runs the embedding head on every location of every
    level instead of only at the anchors the loss or the detections read: the
    same embeddings at inference and, with ``embedding_norm_statistics: map``
    (the default), the same loss and gradients in training, at the cost of the
    output conv on every location. ``embedding_norm_statistics: assigned``
    gives the sparse head's BN in training the statistics of the locations its
    loss reads instead of the whole map's: cheaper (the hidden conv too runs
    only there) but, measured here, worse detection on unseen frames (see
    :mod:`student.sparse_head`).

    Keys read by one family only. RetinaNet: ``fpn_channels``, ``head_depth``,
    ``anchor_*``, ``embedding_head``, ``share_embedding_convs_across_levels``,
    ``nms_thresh``, ``candidates_per_level``, ``embedding_norm_statistics`` (CenterNet's
    embedding head has no BN). CenterNet (:mod:`student.centernet`):
    ``neck_channels`` (the upsampling neck's widths at strides 16, 8 and 4; the
    heads read the last) and ``box_encoding`` (``ltrb`` distances from the
    centre, or ``wh``); its heads' hidden width is ``head_width`` (the
    embedding head's ``embedding_head_width``), and ``detections_per_image`` is
    its top-K of heatmap peaks. ``embedding_pooling`` says where a CenterNet
    detection's embedding is read: ``centre`` (FairMOT) from the embedding head,
    which reads the 3x3 window at the centre cell; ``box`` from a linear readout
    of that window plus the stride-4 map averaged over a grid of
    ``BOX_POOLING_BINS`` cells of the detected box, the region the teacher embeds
    (:class:`student.centernet.model.BoxPooledEmbeddingHead`). The readout is not
    trained by SGD: the L2 loss trains the centre head as usual, which shapes the
    shared features, and the readout is solved by least squares after the last
    step (``optim.embedding_refit_ridge``, required). ``box_readout_neck_maps``: how
    many of the neck's maps that readout pools, finest first: 1 the stride-4 map alone,
    2 also the stride-8 map over a 4 x 2 grid, 3 also the stride-16 map over 2 x 1.
    ``peak_nms_thresh`` (null: FairMOT's 3x3
    max-pool alone) adds a box NMS at that IoU over the peaks: a student trained
    with several positives per object (AdaMOT's one-to-k assignment) leaves
    several peaks per person that the max-pool keeps when they are more than one
    cell apart. It is an inference setting, like the thresholds: a checkpoint
    may be loaded with another value.

    Two options from CSTrack (Liang et al., "Rethinking the Competition Between
    Detection and ReID in Multiobject Tracking"), both off by default and both
    needing an embedding head (``embedding_dim`` > 0):

    - ``reciprocal_network``: CSTrack's reciprocal network (REN) between the
      shared features and the task branches (:mod:`student.reciprocal`): one
      detection map that the class / box (CenterNet: heatmap / box / offset)
      heads read and one re-ID map that the embedding head reads, on every FPN
      level (one set of weights for all levels) or on the CenterNet neck's
      stride-4 map. An identity at initialisation.
    - ``scale_aware_embedding``: CSTrack's scale-aware attention network (SAAN,
      :mod:`student.scale_aware`), RetinaNet only: P3, P4 and P5 fused by
      spatial and channel attention into one stride-8 embedding map, read at
      each detection's box centre (training: at each object's box centre). It
      replaces the per-anchor / per-location head, so ``embedding_head`` and
      ``share_embedding_convs_across_levels`` are not read; its encoders are
      ``embedding_head_width`` wide. The CenterNet neck already fuses strides
      32 to 4 into the one map its embedding is read from, so the key is
      refused there.
    """

    family: ModelFamilyName = "retinanet"
    backbone: BackboneName = "resnet34_fpn"
    trainable_backbone_stages: int = 3
    fpn_channels: int = 256
    head_width: int = 128
    head_depth: int = 4
    anchor_base_sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    anchor_scales: tuple[float, ...] = (1.0, 2.0 ** (1.0 / 3.0), 2.0 ** (2.0 / 3.0))
    anchor_aspect_ratios: tuple[float, ...] = (0.25, 0.5, 1.0)
    embedding_dim: int = 128
    embedding_head: EmbeddingHeadLayout = "per_anchor"
    embedding_head_width: int = 256
    share_embedding_convs_across_levels: bool = True
    input_height: int = 608
    input_width: int = 1088
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    # FairMOT keeps 500: MOT20 frames hold more than 150 people, and BYTE tracking also uses
    # the low-score detections, which a cap of 100 cut first.
    detections_per_image: int = 500
    candidates_per_level: int = 1000
    dense_embeddings: bool = False
    embedding_norm_statistics: EmbeddingNormStatistics = "map"
    peak_nms_thresh: float | None = None
    neck_channels: tuple[int, ...] = (256, 128, 64)
    box_encoding: CenterBoxEncoding = "ltrb"
    reciprocal_network: bool = False
    scale_aware_embedding: bool = False
    embedding_pooling: EmbeddingPooling = "centre"
    box_readout_neck_maps: int = 1

    def __post_init__(self) -> None:
        _require(
            self.family in MODEL_FAMILY_NAMES,
            f"family {self.family!r} is not one of {MODEL_FAMILY_NAMES}",
        )
        _require(
            self.backbone in BACKBONE_NAMES,
            f"backbone {self.backbone!r} is not one of {BACKBONE_NAMES}",
        )
        _require(
            0 <= self.trainable_backbone_stages <= 5,
            "trainable_backbone_stages must be within 0..5",
        )
        for name in (
            "fpn_channels",
            "head_width",
            "head_depth",
            "embedding_head_width",
            "input_height",
            "input_width",
            "detections_per_image",
            "candidates_per_level",
        ):
            _require(getattr(self, name) > 0, f"{name} must be positive")
        _require(
            len(self.neck_channels) == 3 and all(c > 0 for c in self.neck_channels),
            "neck_channels needs three positive widths (strides 16, 8, 4)",
        )
        _require(
            self.box_encoding in get_args(CenterBoxEncoding),
            f"box_encoding must be one of {get_args(CenterBoxEncoding)}",
        )
        _require(
            self.embedding_norm_statistics in get_args(EmbeddingNormStatistics),
            f"embedding_norm_statistics must be one of {get_args(EmbeddingNormStatistics)}",
        )
        _require(self.embedding_dim >= 0, "embedding_dim must be >= 0 (0: detection only)")
        _require(
            len(self.anchor_base_sizes) == len(FPN_STRIDES),
            f"anchor_base_sizes needs one size per FPN level {FPN_LEVEL_NAMES}",
        )
        for name in ("anchor_base_sizes", "anchor_scales", "anchor_aspect_ratios"):
            values = getattr(self, name)
            _require(len(values) > 0, f"{name} must not be empty")
            _require(
                all(math.isfinite(v) and v > 0 for v in values),
                f"{name} must be positive numbers",
            )
        _require(
            self.embedding_head in get_args(EmbeddingHeadLayout),
            f"embedding_head must be one of {get_args(EmbeddingHeadLayout)}",
        )
        _require(0.0 <= self.score_thresh < 1.0, "score_thresh must be within [0, 1)")
        _require(0.0 < self.nms_thresh <= 1.0, "nms_thresh must be within (0, 1]")
        _require(
            self.peak_nms_thresh is None or 0.0 < self.peak_nms_thresh <= 1.0,
            "peak_nms_thresh must be null or within (0, 1]",
        )
        self._check_cstrack_options()
        self._check_embedding_pooling()

    def _check_embedding_pooling(self) -> None:
        _require(
            self.embedding_pooling in get_args(EmbeddingPooling),
            f"embedding_pooling must be one of {get_args(EmbeddingPooling)}",
        )
        _require(
            self.box_readout_neck_maps in (1, 2, 3),
            "box_readout_neck_maps must be 1 (the stride-4 map), 2 (and stride 8) or 3 (and stride 16), "
            f"got {self.box_readout_neck_maps}",
        )
        if self.embedding_pooling == "centre":
            _require(
                self.box_readout_neck_maps == 1,
                "box_readout_neck_maps is read by the box readout only: set embedding_pooling: box, "
                "or leave it at 1",
            )
            return
        _require(
            self.family == "centernet",
            "embedding_pooling 'box' is implemented for family 'centernet' only "
            f"(got {self.family!r}); use embedding_pooling: centre",
        )
        _require(
            self.has_embedding_head, "embedding_pooling 'box' needs an embedding head (embedding_dim > 0)"
        )
        _require(
            not self.dense_embeddings,
            "embedding_pooling 'box' reads each object's box, so there is no dense embedding map: "
            "set dense_embeddings: false",
        )

    def _check_cstrack_options(self) -> None:
        for name in ("reciprocal_network", "scale_aware_embedding"):
            _require(
                not getattr(self, name) or self.has_embedding_head,
                f"{name} separates or builds the re-ID branch: it needs an embedding head "
                "(embedding_dim > 0)",
            )
        _require(
            not (self.scale_aware_embedding and self.family == "centernet"),
            "scale_aware_embedding applies to the retinanet family only: the centernet neck already "
            "fuses the stride-32, -16 and -8 maps into the one stride-4 map its embedding is read "
            "from at object centres, which is what the scale-aware attention network adds to the "
            "FPN (reciprocal_network does apply to centernet)",
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """As :meth:`tdt.config.PlainConfig.from_dict`; ``embedding_dim: null`` means detection only (0)."""
        return super().from_dict(cls.normalise_plain(values))

    @staticmethod
    def normalise_plain(values: Any) -> Any:
        """A plain model section with ``embedding_dim: null`` read as 0 (detection only)."""
        if isinstance(values, Mapping) and "embedding_dim" in values and values["embedding_dim"] is None:
            return {**values, "embedding_dim": 0}
        return values

    @property
    def anchors_per_location(self) -> int:
        """A: anchors at every feature-map location (scales x aspect ratios), same on all levels."""
        return len(self.anchor_scales) * len(self.anchor_aspect_ratios)

    @property
    def has_embedding_head(self) -> bool:
        return self.embedding_dim > 0

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the network input."""
        return (self.input_height, self.input_width)


@dataclasses.dataclass(frozen=True)
class LossConfig(PlainConfig):
    """Anchor assignment and loss weights (TDT: 1 focal + 50 Huber + 10 L2).

    The box loss is ``F.huber_loss(delta=box_huber_delta)`` (Huber, not
    smooth-L1: the two differ by a factor delta) on BoxCoder(1, 1, 1, 1) deltas.
    ``identity_weight`` scales the identity cross-entropy (modes "ce", "l2+ce").
    With ``uncertainty_weighting`` the detection and identity sums are combined
    with learned log-variances as in FairMOT (eq. 5).

    The CenterNet family reads ``classification_weight`` for its heatmap loss
    (penalty-reduced focal, ``heatmap_alpha`` / ``heatmap_beta``, Gaussian
    radius from ``heatmap_min_overlap``), ``box_weight`` for its L1 box loss and
    ``offset_weight`` for its L1 centre-offset loss, and ``box_giou_weight`` for a
    GIoU loss on the decoded boxes (0: none; the L1 term stays), read at the
    positives or, with ``box_sample_fraction`` > 0, at TTFNet's regression samples:
    every cell in the middle ``box_sample_fraction`` of each box, Gaussian-weighted
    (:func:`student.centernet.targets.box_samples`); the anchor keys
    (``focal_*``, ``box_huber_delta``, ``*_iou``, ``ignore_overlap*``) are
    RetinaNet's.

    AdaMOT's options (CenterNet family only; :mod:`student.centernet.assignment`):
    ``assignment`` ``centre`` (one positive per object, its centre cell: CenterNet
    / FairMOT) or ``adamot`` (``positives_per_object`` cells per object, chosen
    inside its box by an identity-aware minimum-cost one-to-k matching on the
    current predictions); ``classification_loss`` ``focal`` (the family's own
    focal loss: here the penalty-reduced heatmap loss) or
    ``discriminative_focal`` (AdaMOT's: soft positive targets from the re-ID
    probability; needs an embedding head). Under L2 distillation the re-ID
    probability of a location is the softmax, over the image's boxes with a
    teacher embedding, of cos(predicted, teacher) / ``reid_probability_temperature``
    at the object's own box; with identity CE it is the classifier's softmax.
    """

    focal_alpha: float = 0.25
    focal_gamma: float = 1.5
    box_huber_delta: float = 0.1
    classification_weight: float = 1.0
    box_weight: float = 50.0
    embedding_weight: float = 10.0
    identity_weight: float = 1.0
    embedding_loss: EmbeddingLossMode = "l2"
    uncertainty_weighting: bool = False
    initial_detection_log_variance: float = -1.85
    initial_identity_log_variance: float = -1.05
    positive_iou: float = 0.5
    negative_iou: float = 0.4
    allow_low_quality_matches: bool = True
    ignore_overlap: IgnoreOverlap = "ioa"
    ignore_overlap_threshold: float = 0.5
    min_box_size: float = 1.0
    heatmap_alpha: float = 2.0
    heatmap_beta: float = 4.0
    heatmap_min_overlap: float = 0.7
    offset_weight: float = 1.0
    assignment: LabelAssignment = "centre"
    positives_per_object: int = 7
    classification_loss: ClassificationLoss = "focal"
    reid_probability_temperature: float = 0.1
    box_giou_weight: float = 0.0
    box_sample_fraction: float = 0.0

    def __post_init__(self) -> None:
        _require(self.heatmap_alpha >= 0.0 and self.heatmap_beta >= 0.0, "heatmap_alpha/beta must be >= 0")
        _require(0.0 < self.heatmap_min_overlap < 1.0, "heatmap_min_overlap must be within (0, 1)")
        _require(0.0 <= self.focal_alpha <= 1.0, "focal_alpha must be within [0, 1]")
        _require(self.focal_gamma >= 0.0, "focal_gamma must be >= 0")
        _require(self.box_huber_delta > 0.0, "box_huber_delta must be positive")
        for name in (
            "classification_weight",
            "box_weight",
            "embedding_weight",
            "identity_weight",
            "offset_weight",
            "box_giou_weight",
        ):
            _require(getattr(self, name) >= 0.0, f"{name} must be >= 0")
        _require(
            self.embedding_loss in get_args(EmbeddingLossMode),
            f"embedding_loss must be one of {get_args(EmbeddingLossMode)}",
        )
        _require(
            0.0 <= self.negative_iou <= self.positive_iou <= 1.0,
            "need 0 <= negative_iou <= positive_iou <= 1",
        )
        _require(
            self.ignore_overlap in get_args(IgnoreOverlap),
            f"ignore_overlap must be one of {get_args(IgnoreOverlap)}",
        )
        _require(
            0.0 < self.ignore_overlap_threshold <= 1.0,
            "ignore_overlap_threshold must be within (0, 1]",
        )
        _require(self.min_box_size >= 0.0, "min_box_size must be >= 0")
        _require(
            self.assignment in get_args(LabelAssignment),
            f"assignment must be one of {get_args(LabelAssignment)}",
        )
        _require(self.positives_per_object >= 1, "positives_per_object must be >= 1")
        _require(
            self.classification_loss in get_args(ClassificationLoss),
            f"classification_loss must be one of {get_args(ClassificationLoss)}",
        )
        _require(
            math.isfinite(self.reid_probability_temperature) and self.reid_probability_temperature > 0,
            "reid_probability_temperature must be a positive number",
        )
        _require(0.0 <= self.box_sample_fraction <= 1.0, "box_sample_fraction must be within [0, 1]")
        _require(
            self.box_giou_weight == 0.0 or self.box_weight > 0.0,
            "box_giou_weight needs box_weight > 0: GIoU has no gradient for a box size the decoder clamps "
            "at 0, and without the L1 term the sizes collapse",
        )
        _require(
            self.box_sample_fraction == 0.0 or self.box_giou_weight > 0.0,
            "box_sample_fraction chooses the cells of the GIoU box term: it needs box_giou_weight > 0",
        )
        _require(
            self.box_sample_fraction == 0.0 or self.assignment == "centre",
            "box_sample_fraction samples around each object's centre cell: it needs assignment 'centre' "
            f"(got {self.assignment!r})",
        )

    @property
    def uses_adamot_assignment(self) -> bool:
        return self.assignment == "adamot"

    @property
    def uses_discriminative_focal(self) -> bool:
        return self.classification_loss == "discriminative_focal"

    @property
    def uses_l2(self) -> bool:
        return self.embedding_loss in ("l2", "l2+ce")

    @property
    def uses_identity_ce(self) -> bool:
        return self.embedding_loss in ("ce", "l2+ce")


def check_loss_fits_model(loss: LossConfig, model: ModelConfig) -> None:
    """Refuse loss options the model's family or heads cannot use (a :class:`ConfigError` naming the key).

    AdaMOT's assignment and discriminative focal loss are implemented for the
    anchor-free family only; the discriminative focal loss reads the re-ID
    probability, so it needs an embedding head.
    """
    if model.family != "centernet":
        _require(
            loss.assignment == "centre",
            f"loss.assignment {loss.assignment!r} is implemented for model.family 'centernet' only "
            f"(got {model.family!r}); use loss.assignment: centre",
        )
        _require(
            loss.classification_loss == "focal",
            f"loss.classification_loss {loss.classification_loss!r} is implemented for model.family "
            f"'centernet' only (got {model.family!r}); use loss.classification_loss: focal",
        )
    _require(
        model.family == "centernet" or loss.box_giou_weight == 0.0,
        f"loss.box_giou_weight is implemented for model.family 'centernet' only (got {model.family!r}); "
        "use loss.box_giou_weight: 0",
    )
    _require(
        not loss.uses_discriminative_focal or model.has_embedding_head,
        "loss.classification_loss 'discriminative_focal' needs an embedding head (model.embedding_dim > 0): "
        "its targets are re-ID probabilities",
    )
