"""Typed, frozen configuration of the student detector and its losses.

Both configs round-trip through plain dicts (``to_dict`` / ``from_dict``) so they
can live in YAML recipes and in checkpoints. ``from_dict`` is strict: an unknown
key is an error (a typo in a recipe must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self, get_args, get_origin

import yaml

BackboneName = Literal["resnet18_fpn", "resnet34_fpn", "resnet50_fpn", "mobilenet_v2_fpn"]
EmbeddingHeadLayout = Literal["per_anchor", "per_location"]
EmbeddingLossMode = Literal["l2", "ce", "l2+ce"]
IgnoreOverlap = Literal["iou", "ioa"]

BACKBONE_NAMES: tuple[str, ...] = get_args(BackboneName)
FPN_LEVEL_NAMES: tuple[str, ...] = ("P3", "P4", "P5", "P6", "P7")
FPN_STRIDES: tuple[int, ...] = (8, 16, 32, 64, 128)


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


class _DictRoundTrip:
    """``to_dict`` / ``from_dict`` / YAML helpers shared by the frozen config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-safe dict (tuples become lists)."""
        return {
            field.name: _to_plain(getattr(self, field.name))
            for field in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """Build from a dict; missing keys take defaults, unknown keys raise :class:`ConfigError`."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{cls.__name__} expects a mapping, got {type(values).__name__}")
        fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} key(s): {', '.join(map(str, unknown))}; "
                f"known keys: {', '.join(fields)}"
            )
        hints = typing.get_type_hints(cls)
        converted = {name: _from_plain(hints[name], value, name) for name, value in values.items()}
        return cls(**converted)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        loaded = yaml.safe_load(Path(path).read_text())
        return cls.from_dict(loaded or {})


def _to_plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_plain(item) for item in value]
    return value


def _from_plain(hint: Any, value: Any, name: str) -> Any:
    """Convert YAML values to the field's type (lists -> tuples, ints -> floats) and check them."""
    origin = get_origin(hint)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{name}: {value!r} is not one of {get_args(hint)}")
        return value
    if origin in (types.UnionType, typing.Union):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _from_plain(option, value, name)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError("; ".join(errors))
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        item_types = get_args(hint)
        if len(item_types) == 2 and item_types[1] is Ellipsis:
            return tuple(_from_plain(item_types[0], item, name) for item in value)
        if len(item_types) != len(value):
            raise ConfigError(f"{name}: expected {len(item_types)} values, got {len(value)}")
        return tuple(_from_plain(t, item, name) for t, item in zip(item_types, value, strict=True))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported config type {hint!r}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class ModelConfig(_DictRoundTrip):
    """Architecture and inference settings of the student (one class: person).

    ``embedding_dim`` is D_s, the number of leading teacher dimensions the
    embedding head regresses (paper: 64, 128, 256 or 512); 0 builds the
    detection-only variant (the two-stage reference's detector).
    Anchor aspect ratios are WIDTH / HEIGHT (0.25 is a box four times taller
    than wide); anchor sizes are the square root of the anchor area.
    Images are letterboxed to ``input_height`` x ``input_width`` (aspect kept).
    """

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

    def __post_init__(self) -> None:
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

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """As :meth:`_DictRoundTrip.from_dict`; ``embedding_dim: null`` means detection only (0)."""
        if isinstance(values, Mapping) and values.get("embedding_dim", 0) is None:
            values = {**values, "embedding_dim": 0}
        return super().from_dict(values)

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
class LossConfig(_DictRoundTrip):
    """Anchor assignment and loss weights (TDT: 1 focal + 50 Huber + 10 L2).

    The box loss is ``F.huber_loss(delta=box_huber_delta)`` (Huber, not
    smooth-L1: the two differ by a factor delta) on BoxCoder(1, 1, 1, 1) deltas.
    ``identity_weight`` scales the identity cross-entropy (modes "ce", "l2+ce").
    With ``uncertainty_weighting`` the detection and identity sums are combined
    with learned log-variances as in FairMOT (eq. 5).
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

    def __post_init__(self) -> None:
        _require(0.0 <= self.focal_alpha <= 1.0, "focal_alpha must be within [0, 1]")
        _require(self.focal_gamma >= 0.0, "focal_gamma must be >= 0")
        _require(self.box_huber_delta > 0.0, "box_huber_delta must be positive")
        for name in ("classification_weight", "box_weight", "embedding_weight", "identity_weight"):
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

    @property
    def uses_l2(self) -> bool:
        return self.embedding_loss in ("l2", "l2+ce")

    @property
    def uses_identity_ce(self) -> bool:
        return self.embedding_loss in ("ce", "l2+ce")
