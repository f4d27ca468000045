"""The Teacher: a re-ID (or ImageNet) network with local weights, its preprocessing and its fingerprint."""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from collections.abc import Callable, MutableMapping, Sequence

import numpy as np
import torch
from torch import nn

from teacher.config import TeacherConfig
from teacher.errors import RandomTeacherWeightsWarning, TeacherError
from teacher.mobilenet import MobileNetV2Embedder, load_mobilenet_v2_weights
from teacher.preprocess import (
    PREPROCESSING_DESCRIPTION,
    PREPROCESSING_VERSION,
    Preprocessor,
    as_boxes,
)
from teacher.registry import TORCHVISION_MOBILENET_V2, TeacherSpec, teacher_spec, weights_hint
from teacher.weights import WeightsFile, check_backbone_keys, read_weights_file

RANDOM_WEIGHTS = "random"
# Random teachers are initialised from a fixed seed so tests and timings are reproducible.
_RANDOM_INIT_SEED = 0
_FINGERPRINT_ID_LENGTH = 16


class Teacher:
    """A re-ID network turning person crops into L2-normalised embeddings. Build with :func:`build_teacher`."""

    def __init__(self, model: nn.Module, config: TeacherConfig, *, weights_sha256: str) -> None:
        self.config = config
        self.name = config.name
        self.device = torch.device(config.device)
        self._model = model
        self._preprocessor = Preprocessor(config.input_size, config.mean, config.std)
        self.dim = self._output_width()
        self._fingerprint = {
            "architecture": config.name,
            "weights_sha256": weights_sha256,
            "input_size": list(config.input_size),
            "mean": list(config.mean),
            "std": list(config.std),
            "dim": self.dim,
            "preprocessing": PREPROCESSING_DESCRIPTION,
            "preprocessing_version": PREPROCESSING_VERSION,
        }

    def __repr__(self) -> str:
        return f"Teacher({self.name}, dim={self.dim}, device={self.device}, id={self.fingerprint_id()})"

    def fingerprint(self) -> dict:
        """Everything that determines the embeddings (JSON-serialisable; a fresh copy each call)."""
        return json.loads(json.dumps(self._fingerprint))

    def fingerprint_id(self) -> str:
        """Short stable hash of :meth:`fingerprint`: equal ids mean interchangeable embeddings."""
        canonical = json.dumps(self._fingerprint, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:_FINGERPRINT_ID_LENGTH]

    def preprocess_crops(self, image_bgr: np.ndarray, boxes_tlbr: np.ndarray) -> torch.Tensor:
        """Crop boxes ``x1,y1,x2,y2`` from a uint8 BGR image; returns float32 ``(N, 3, H, W)``.

        Crop rule in :mod:`teacher.preprocess`; empty boxes raise ValueError (see ``crop_windows``).
        """
        return self._preprocessor.crops(image_bgr, boxes_tlbr)

    def preprocess_images(self, crops_bgr: Sequence[np.ndarray]) -> torch.Tensor:
        """Preprocess uint8 BGR crops that are already cut out; returns float32 ``(N, 3, H, W)``."""
        return self._preprocessor.images(crops_bgr)

    def pixels(
        self,
        image_bgr: np.ndarray,
        boxes_tlbr: np.ndarray,
        stage_seconds: MutableMapping[str, float] | None = None,
    ) -> np.ndarray:
        """The CPU half of :meth:`preprocess_crops`: cropped and resized RGB uint8 ``(N, H, W, 3)``.

        Feed them to :meth:`embed_pixels` (possibly in another process). ``stage_seconds``, if
        given, accumulates the seconds spent cropping (``"crop"``) and resizing (``"resize"``).
        """
        return self._preprocessor.pixels(image_bgr, boxes_tlbr, stage_seconds)

    def normalise(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """RGB uint8 ``(N, H, W, 3)`` from :meth:`pixels` to the float32 model input, on the teacher's device.

        The uint8 pixels travel to the device (a quarter of the float bytes) and are normalised
        there, to the same values on every device.
        """
        tensor = torch.from_numpy(pixels) if isinstance(pixels, np.ndarray) else pixels
        return self._preprocessor.normalise(tensor.to(self.device))

    def embed_pixels(self, pixels: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`normalise` then :meth:`embed_tensor`: one forward pass over RGB uint8 ``(N, H, W, 3)``."""
        return self.embed_tensor(self.normalise(pixels))

    def embed_tensor(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Embed a preprocessed batch as one forward pass.

        Returns ``(embeddings float32 (N, D) L2-normalised, norms float32 (N,) before normalising)``.
        A crop whose features are all zero (OSNet features are post-ReLU) gets norm 0 and a zero
        embedding; treat norm 0 as "no embedding".
        """
        expected = (3, *self.config.input_size)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected or batch.dtype != torch.float32:
            raise ValueError(
                f"batch must be float32 (N, {', '.join(map(str, expected))}), "
                f"got {batch.dtype} {tuple(batch.shape)}"
            )
        if len(batch) == 0:
            return np.empty((0, self.dim), np.float32), np.empty(0, np.float32)
        with torch.inference_mode():
            features = self._model(batch.to(self.device, memory_format=torch.channels_last)).float()
            norms = torch.linalg.vector_norm(features, dim=1)
            embeddings = features / norms.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)
        return embeddings.cpu().numpy(), norms.cpu().numpy()

    def embed_crops(self, image_bgr: np.ndarray, boxes_tlbr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Crop, preprocess and embed boxes of one image in batches of ``config.batch_size``."""
        boxes = as_boxes(boxes_tlbr)
        return self._embed_in_batches(len(boxes), lambda s: self.preprocess_crops(image_bgr, boxes[s]))

    def embed_images(self, crops_bgr: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Preprocess and embed already-cut BGR crops in batches of ``config.batch_size``."""
        crops = list(crops_bgr)
        return self._embed_in_batches(len(crops), lambda s: self.preprocess_images(crops[s]))

    def _embed_in_batches(
        self, count: int, preprocess: Callable[[slice], torch.Tensor]
    ) -> tuple[np.ndarray, np.ndarray]:
        embeddings = np.empty((count, self.dim), np.float32)
        norms = np.empty(count, np.float32)
        for start in range(0, count, self.config.batch_size):
            part = slice(start, min(start + self.config.batch_size, count))
            embeddings[part], norms[part] = self.embed_tensor(preprocess(part))
        return embeddings, norms

    def _output_width(self) -> int:
        height, width = self.config.input_size
        probe = torch.zeros((1, 3, height, width), device=self.device)
        with torch.inference_mode():
            output = self._model(probe.contiguous(memory_format=torch.channels_last))
        if output.ndim != 2:
            raise TeacherError(f"teacher {self.name} returned shape {tuple(output.shape)}, expected (N, D)")
        return int(output.shape[1])


def build_teacher(config: TeacherConfig, *, allow_random_weights: bool = False) -> Teacher:
    """Build the teacher ``config`` describes, with weights from ``config.weights``.

    Without a weights file this is a TeacherError unless ``allow_random_weights`` (unit tests and
    timing benchmarks only), which warns with :class:`RandomTeacherWeightsWarning`.

    Changes no process-wide state beyond importing torchvision for the torchreid and MobileNetV2
    architectures (see :mod:`tdt.torch_compat`); the allocator and thread set-up a long inference
    run wants is the caller's choice (:mod:`tdt.process`).
    """
    spec = teacher_spec(config.name)
    device = _device(config.device)
    if config.weights is None:
        if not allow_random_weights:
            raise TeacherError(f"no weights file for teacher {config.name}. {weights_hint(config.name)}")
        warnings.warn(
            f"teacher {config.name} has RANDOM weights: only for unit tests and timings, never for results",
            RandomTeacherWeightsWarning,
            stacklevel=2,
        )
        model = _build_architecture(spec)
        weights_sha256 = RANDOM_WEIGHTS
    else:
        weights = read_weights_file(
            config.weights, architecture=config.name, trust_pickle=config.trust_pickle
        )
        model = _build_architecture(spec)
        _load_weights(model, weights, spec)
        weights_sha256 = weights.sha256
    model.eval().requires_grad_(False)
    try:
        model.to(device, memory_format=torch.channels_last)
    except (RuntimeError, AssertionError) as error:
        # torch raises these for device names it knows but cannot use in this build (e.g. "cuda").
        raise TeacherError(f"cannot use device {config.device!r} for the teacher: {error}") from error
    return Teacher(model, config, weights_sha256=weights_sha256)


def _load_weights(model: nn.Module, weights: WeightsFile, spec: TeacherSpec) -> None:
    if spec.family == TORCHVISION_MOBILENET_V2:
        load_mobilenet_v2_weights(model, weights, spec.name)
    else:
        _load_torchreid_backbone(model, weights, spec.name)


def _load_torchreid_backbone(model: nn.Module, weights: WeightsFile, architecture: str) -> None:
    check_backbone_keys(model.state_dict(), weights, architecture=architecture)
    result = model.load_state_dict(weights.state_dict, strict=False)
    left_out = [k for k in result.missing_keys if not k.startswith("classifier.")]
    if result.unexpected_keys or any(not k.endswith(".num_batches_tracked") for k in left_out):
        raise TeacherError(f"teacher weights {weights.path} did not load cleanly into {architecture}")


def _device(name: str) -> torch.device:
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise TeacherError(f"invalid teacher device {name!r}: {error}") from error


def _build_architecture(spec: TeacherSpec) -> nn.Module:
    if spec.family == TORCHVISION_MOBILENET_V2:
        build: Callable[[], nn.Module] = MobileNetV2Embedder
    else:
        # pretrained=False: torchreid would otherwise download from Google Drive.
        build = functools.partial(
            _torchreid_build_model(), spec.name, num_classes=1, pretrained=False, use_gpu=False
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_INIT_SEED)
        return build()


def _torchreid_build_model() -> Callable[..., nn.Module]:
    # Imported on first build, not with the package: torchreid and torchvision are slow to import.
    from tdt.torch_compat import import_torchvision

    import_torchvision()  # torchreid imports torchvision
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cython evaluation", category=UserWarning)
        from torchreid.reid.models import build_model
    return build_model
