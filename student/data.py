"""Shard-backed training and validation data for the student.

A :class:`StudentDataset` reads one or more shard directories written by
``pipeline.distill`` (through :func:`pipeline.shards.open_shards`, the only
pipeline API used here), decodes each image from its dataset root with cv2 and
returns a fixed-size input tensor plus per-box targets in input pixels.

Mixing several datasets: each :class:`student.sources.ShardSource` has a weight,
the share of training draws that come from it (not a per-image weight), so a
10k-image dataset at weight 1 and a 500-image one at weight 1 are seen equally
often. :class:`student.selection.DrawStream` draws :class:`SampleKey` s from
those weights, seeded by (seed, epoch); the key carries the epoch and draw
number so each item's augmentation is reproducible in any worker process, even
with persistent workers, and an image drawn twice is augmented differently.

Identities: ids >= 0 of each source are remapped to a contiguous global range
(``source offset + rank of the id within its source``) so that ids from
different datasets never collide; -1 (unknown) stays -1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal, NamedTuple, get_args

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.shards import ShardError, ShardRecord, ShardSet, read_manifest
from tdt.imagenet import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from tdt.images import ImageFileError
from tdt.images import read_image as read_image_file
from tdt.text import one_line

from .augment import (
    AugmentConfig,
    AugmentedImage,
    BoxTargets,
    Placement,
    augment_for_training,
    letterbox_for_validation,
    letterbox_scale,
    training_scale,
)
from .sources import ShardSource

DatasetMode = Literal["train", "validation"]
PixelScaling = Literal["unit", "imagenet"]


class StudentDataError(ValueError):
    """Shard sources that cannot be trained on together, or an image that cannot be used."""


class SampleKey(NamedTuple):
    """What :class:`student.selection.DrawStream` yields and :meth:`StudentDataset.__getitem__` accepts."""

    index: int
    epoch: int
    draw: int


@dataclass(frozen=True)
class SourceSummary:
    """What a checkpoint records about one source (plain types only, see :meth:`as_dict`)."""

    directory: str
    teacher_id: str
    dataset_name: str
    dataset_split: str
    dataset_fingerprint: str
    images: int
    weight: float
    identity_offset: int
    identities: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _LoadedSource:
    source: ShardSource
    shards: ShardSet
    image_root: Path
    first_index: int
    identity_offset: int
    local_identities: np.ndarray  # sorted unique ids >= 0 of this source

    def global_identities(self, identities: np.ndarray) -> np.ndarray:
        known = identities >= 0
        remapped = np.full(identities.shape, -1, dtype=np.int64)
        remapped[known] = self.identity_offset + np.searchsorted(self.local_identities, identities[known])
        return remapped


@dataclass(frozen=True)
class DatasetOptions:
    """How items are produced. ``input_size`` is (height, width) of the network input.

    ``pixel_scaling="unit"`` gives RGB in [0, 1], what ``student.model.StudentDetector``
    expects (it normalises with ImageNet mean/std inside); ``"imagenet"`` gives
    mean/std-normalised RGB for models that do not. ``reduced_decode`` lets
    JPEGs that will be shrunk by 2x or more be decoded at 1/2 or 1/4 size
    (see :func:`decode_reduction`). ``verify_checksums`` checks each shard's sha256
    against its manifest when it is first read; the content checks (counts, finite
    boxes and embeddings) run either way.
    """

    input_size: tuple[int, int] = (608, 1088)
    mode: DatasetMode = "train"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    pixel_scaling: PixelScaling = "unit"
    keep_all_shards_in_memory: bool = True
    verify_checksums: bool = True
    reduced_decode: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(side) for side in self.input_size))
        height, width = self.input_size
        if height <= 0 or width <= 0:
            raise StudentDataError(f"input_size must be positive (height, width), got {self.input_size}")
        if self.mode not in get_args(DatasetMode):
            raise StudentDataError(f"mode must be one of {get_args(DatasetMode)}, got {self.mode!r}")
        if self.pixel_scaling not in get_args(PixelScaling):
            raise StudentDataError(
                f"pixel_scaling must be one of {get_args(PixelScaling)}, got {self.pixel_scaling!r}"
            )
        if self.seed < 0:
            raise StudentDataError("seed must be >= 0")


def checked_image_path(root: Path, relative: str, *, shard_directory: Path) -> Path:
    """``root / relative`` after refusing absolute paths and ``..`` components.

    Lexical on purpose (as the pipeline's readers): symlinks placed inside the
    root by the user are allowed; shard text pointing outside it is not.
    """
    text = relative.replace("\\", "/")
    parts = PurePosixPath(text).parts
    if not text or text.startswith("/") or PureWindowsPath(text).drive:
        raise StudentDataError(
            f"{shard_directory}: image path {relative!r} is not relative to the dataset root {root}"
        )
    if ".." in parts:
        raise StudentDataError(
            f"{shard_directory}: image path {relative!r} uses '..' and would leave the dataset root {root}"
        )
    return root.joinpath(*parts)


_REDUCED_DECODE_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}


def decode_reduction(path: Path, width: int, height: int, scale: float) -> int:
    """Largest JPEG decode reduction (1, 2 or 4) that still leaves the image to be shrunk, not enlarged.

    libjpeg decodes at 1/2 or 1/4 size inside its inverse DCT, at a fraction of
    the cost of a full decode, equivalent to 2x2 / 4x4 area averaging, so the
    corner map is exactly x / reduction when the sides divide evenly.
    """
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        return 1
    for reduction in (4, 2):
        if scale * reduction <= 1.0 and width % reduction == 0 and height % reduction == 0:
            return reduction
    return 1


def read_image(path: Path, expected_width: int, expected_height: int, reduction: int = 1) -> np.ndarray:
    """uint8 BGR image (at 1/``reduction`` size), checked against the size its shard record claims."""
    if not path.is_file():
        raise StudentDataError(f"{path}: image file is missing")
    # Same orientation handling as pipeline.worker (IMREAD_COLOR), so boxes refer to
    # the pixels the teacher cropped.
    try:
        image = read_image_file(path, _REDUCED_DECODE_FLAGS[reduction])
    except ImageFileError as error:
        raise StudentDataError(str(error)) from error
    height, width = image.shape[:2]
    if (width * reduction, height * reduction) != (expected_width, expected_height):
        raise StudentDataError(
            f"{path}: image is {width * reduction}x{height * reduction} but its shard record says "
            f"{expected_width}x{expected_height}"
        )
    return image


class StudentDataset(Dataset):
    """Images and per-box targets from one or more shard directories.

    ``dataset[i]`` (``i`` a :class:`SampleKey`, or an int ``i`` read as
    ``SampleKey(i, epoch=0, draw=0)``) returns
    ``(image, target)``: image float32 (3, H, W) RGB at ``options.input_size``,
    target a dict with ``boxes`` float32 (N, 4) x1, y1, x2, y2 in input pixels,
    ``ignore`` bool (N,), ``identities`` int64 (N,) global (-1 unknown),
    ``embeddings`` float32 (N, D_teacher) with NaN rows where the box has none,
    ``image_id`` (global index), ``image_path``, ``source`` (index into the
    sources) and ``placement`` (:class:`student.augment.Placement`, maps input
    pixels back to original ones). Validation items also carry
    ``original_boxes`` (float32, original pixels) and ``original_size`` (h, w).
    Images without boxes are kept (negatives).
    """

    def __init__(self, sources: Sequence[ShardSource | Path | str], options: DatasetOptions) -> None:
        if not sources:
            raise StudentDataError("no shard sources given")
        self.options = options
        self.sources: tuple[ShardSource, ...] = tuple(
            s if isinstance(s, ShardSource) else ShardSource(str(s)) for s in sources
        )
        loaded: list[_LoadedSource] = []
        first_index = 0
        identity_offset = 0
        for source in self.sources:
            entry = _load_source(source, options, first_index, identity_offset)
            if loaded:
                _require_same_teacher(loaded[0], entry)
            loaded.append(entry)
            first_index += len(entry.shards)
            identity_offset += len(entry.local_identities)
        self._loaded = tuple(loaded)
        self._starts = np.array([entry.first_index for entry in loaded] + [first_index], dtype=np.int64)
        self.num_identities = identity_offset

    # ---- description -------------------------------------------------------------------------
    @property
    def teacher_id(self) -> str:
        return self._loaded[0].shards.teacher_id

    @property
    def teacher_fingerprint(self) -> dict:
        return dict(self._loaded[0].shards.teacher_fingerprint)

    @property
    def embedding_dim(self) -> int:
        return self._loaded[0].shards.embedding_dim

    @property
    def source_sizes(self) -> tuple[int, ...]:
        return tuple(len(entry.shards) for entry in self._loaded)

    @property
    def identity_offsets(self) -> tuple[int, ...]:
        return tuple(entry.identity_offset for entry in self._loaded)

    def source_summaries(self) -> list[SourceSummary]:
        summaries = []
        for entry in self._loaded:
            dataset = entry.shards.manifest.dataset
            summaries.append(
                SourceSummary(
                    directory=str(entry.shards.directory.resolve()),
                    teacher_id=entry.shards.teacher_id,
                    dataset_name=dataset.name,
                    dataset_split=dataset.split,
                    dataset_fingerprint=dataset.fingerprint,
                    images=len(entry.shards),
                    weight=entry.source.weight,
                    identity_offset=entry.identity_offset,
                    identities=len(entry.local_identities),
                )
            )
        return summaries

    def shard_set(self, source_number: int) -> ShardSet:
        """The shards of one source, as this dataset opened and checked them."""
        return self._loaded[source_number].shards

    def __len__(self) -> int:
        return int(self._starts[-1])

    # ---- items -------------------------------------------------------------------------------
    def locate(self, index: int) -> tuple[int, int]:
        """(source number, image index within that source) of a global image index."""
        if not 0 <= index < len(self):
            raise IndexError(f"image index {index} out of range for {len(self)} images")
        source = int(np.searchsorted(self._starts, index, side="right")) - 1
        return source, index - int(self._starts[source])

    def record(self, index: int) -> ShardRecord:
        source, local = self.locate(index)
        return _shard_record(self._loaded[source], local)

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor, dict[str, Any]]:
        if not isinstance(key, SampleKey):
            key = SampleKey(int(key), 0, 0)
        index = int(key.index)
        entropy = [self.options.seed, key.epoch, key.draw, index]
        source_number, local = self.locate(index)
        entry = self._loaded[source_number]
        record = _shard_record(entry, local)
        path = checked_image_path(entry.image_root, record.image, shard_directory=entry.shards.directory)
        options = self.options
        source_size = (record.height, record.width)
        rng = np.random.default_rng(entropy)
        if options.mode == "train":
            scale = training_scale(source_size, options.input_size, options.augment, rng)
        else:
            scale = letterbox_scale(source_size, options.input_size)
        reduction = (
            decode_reduction(path, record.width, record.height, scale) if options.reduced_decode else 1
        )
        image = read_image(path, record.width, record.height, reduction)
        targets = BoxTargets(
            boxes=record.boxes / reduction,
            identities=entry.global_identities(record.identities),
            ignore=record.ignore,
            embeddings=record.embeddings,
        )
        if options.mode == "train":
            result = augment_for_training(
                image, targets, options.input_size, options.augment, rng, scale=scale * reduction
            )
        else:
            result = letterbox_for_validation(
                image, targets, options.input_size, options.augment.pad_value_bgr
            )
        placement = result.placement.for_original(reduction, record.height, record.width)
        target = _target_dict(result, placement, index, str(path), source_number)
        if self.options.mode == "validation":
            target["original_boxes"] = torch.from_numpy(np.array(record.boxes, dtype=np.float32))
            target["original_size"] = (record.height, record.width)
        return _image_tensor(result.image, self.options.pixel_scaling), target


def _load_source(
    source: ShardSource, options: DatasetOptions, first_index: int, identity_offset: int
) -> _LoadedSource:
    """Open a source and read each of its shards once (checked, see :mod:`pipeline.shards.reader`)."""
    try:
        return _read_source(source, options, first_index, identity_offset)
    except ShardError as error:
        raise StudentDataError(_shard_problem(error, source)) from error


def _shard_record(entry: _LoadedSource, local: int) -> ShardRecord:
    """A record of a loaded source (a shard evicted from the cache is read, and checked, again)."""
    try:
        return entry.shards[local]
    except ShardError as error:
        raise StudentDataError(_shard_problem(error, entry.source)) from error


def _shard_problem(error: ShardError, source: ShardSource) -> str:
    """``error`` in one line with what to do about it."""
    remake = source.distill_command or "the pipeline.distill command that made it"
    return one_line(
        f"{error}. Check the directory with python -m pipeline.verify {source.directory}; "
        f"remake it with {remake}"
    )


def _read_source(
    source: ShardSource, options: DatasetOptions, first_index: int, identity_offset: int
) -> _LoadedSource:
    directory = Path(source.directory)
    manifest = read_manifest(directory)
    # Keeping every decoded shard avoids re-decoding a whole shard on most random
    # accesses; forked DataLoader workers share the arrays copy-on-write.
    cache = len(manifest.shards) if options.keep_all_shards_in_memory else 4
    shards = ShardSet(directory, verify_checksums=options.verify_checksums, cache_shards=cache)
    image_root = Path(source.dataset_root) if source.dataset_root is not None else shards.dataset_root
    if not image_root.is_dir():
        raise StudentDataError(
            f"{directory}: dataset root {image_root} does not exist "
            "(pass a dataset root override for this shard source if the images moved)"
        )
    identity_sets = []
    for shard_index in range(len(manifest.shards)):
        table = shards.shard_table(shard_index)
        for image in table.images:
            checked_image_path(image_root, image, shard_directory=directory)
        identity_sets.append(np.unique(table.identities[table.identities >= 0]))
    local_identities = (
        np.unique(np.concatenate(identity_sets)).astype(np.int64) if identity_sets else np.zeros(0, np.int64)
    )
    return _LoadedSource(source, shards, image_root, first_index, identity_offset, local_identities)


def _require_same_teacher(reference: _LoadedSource, other: _LoadedSource) -> None:
    if other.shards.teacher_id != reference.shards.teacher_id:
        raise StudentDataError(
            "shard directories were distilled by different teachers and cannot be mixed: "
            f"{reference.shards.directory} has teacher {reference.shards.teacher_id!r}, "
            f"{other.shards.directory} has teacher {other.shards.teacher_id!r}"
        )
    if other.shards.embedding_dim != reference.shards.embedding_dim:
        raise StudentDataError(
            f"embedding sizes differ: {reference.shards.directory} has {reference.shards.embedding_dim}, "
            f"{other.shards.directory} has {other.shards.embedding_dim}"
        )


def _image_tensor(image_bgr: np.ndarray, scaling: PixelScaling) -> torch.Tensor:
    rgb_planes = np.ascontiguousarray(image_bgr[:, :, ::-1].transpose(2, 0, 1))
    tensor = torch.from_numpy(rgb_planes).to(torch.float32).div_(255.0)
    if scaling == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN_RGB, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD_RGB, dtype=torch.float32).view(3, 1, 1)
        tensor = tensor.sub_(mean).div_(std)
    return tensor


def _target_dict(
    result: AugmentedImage, placement: Placement, index: int, path: str, source: int
) -> dict[str, Any]:
    targets = result.targets
    return {
        "boxes": torch.from_numpy(np.ascontiguousarray(targets.boxes, dtype=np.float32)),
        "ignore": torch.from_numpy(np.ascontiguousarray(targets.ignore, dtype=bool)),
        "identities": torch.from_numpy(np.ascontiguousarray(targets.identities, dtype=np.int64)),
        "embeddings": torch.from_numpy(np.ascontiguousarray(targets.embeddings, dtype=np.float32)),
        "image_id": index,
        "image_path": path,
        "source": source,
        "placement": placement,
    }


def collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Stack the (same-size) images; targets stay a list (box counts differ)."""
    images = torch.stack([image for image, _ in batch])
    return images, [target for _, target in batch]


def loader_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoader: the worker processes, not threads, use the cores."""
    del worker_id
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


__all__ = [
    "DatasetMode",
    "DatasetOptions",
    "PixelScaling",
    "Placement",
    "SampleKey",
    "SourceSummary",
    "StudentDataError",
    "StudentDataset",
    "checked_image_path",
    "collate",
    "decode_reduction",
    "loader_worker_init",
    "read_image",
]
