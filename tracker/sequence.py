"""Tracker inputs: a MOTChallenge sequence folder, a folder of images, or a video file.

- MOTChallenge sequence: a folder with ``seqinfo.ini`` and/or ``img1/``. The
  frames are the images present (``seqinfo.ini`` may claim more, e.g.
  MOT17-mini: a note says so); frame numbers come from the file names
  (``000001.jpg`` is frame 1); the frame rate from ``frameRate`` (30 if absent,
  with a note). ``gt/gt.txt`` and ``det/det.txt`` are used when present.
- Image folder: every ``.jpg/.jpeg/.png/.bmp`` file; frame numbers from the
  names when they are all numbers, else 1..N in name order.
- Video file: anything cv2 can open; frames numbered from 1.

Ground truth (``gt/gt.txt``) format by column count: 10 columns is MOT15
(``frame,id,x,y,w,h,flag,wx,wy,wz``, no class), 9 is MOT16/17/20
(``frame,id,x,y,w,h,mark,class,visibility``; MOT20 when the folder name starts
with ``MOT20``, else MOT17, whose protocol equals MOT16's). Coordinates are
used as written (no 1-based shift), like the results the tracker writes.

A sequence is named after its folder (or the video's file stem), never after
``seqinfo.ini``'s ``name``: the name becomes an output file name.
"""

from __future__ import annotations

import configparser
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from numbers import Integral
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from tdt.boxes import tlwh_to_tlbr
from tdt.images import ImageFileError, read_image
from tdt.synthetic import is_synthetic_seqinfo
from tracker.evaluation import MotBenchmark
from tracker.mot_format import MotFormatError, read_mot_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_FRAME_RATE = 30.0
MOT15_GT_COLUMNS = 10
MOT17_GT_COLUMNS = 9
PEDESTRIAN_CLASS = 1

FloatArray = npt.NDArray[np.float64]


class SequenceError(ValueError):
    """An input that cannot be read as a sequence; the message is one line for CLIs."""


class ShortVideoWarning(UserWarning):
    """A video decoded to fewer frames than its header announces."""


class InputKind(StrEnum):
    MOT_SEQUENCE = "mot-sequence"
    IMAGE_FOLDER = "image-folder"
    VIDEO = "video"


@dataclass(frozen=True)
class FrameRange:
    """Inclusive frame numbers ``first..last`` (1-based, as in MOT files)."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if self.first < 1 or self.last < self.first:
            raise SequenceError(f"frame range must satisfy 1 <= first <= last, got {self.first} {self.last}")

    def __contains__(self, frame: object) -> bool:
        return isinstance(frame, Integral) and self.first <= frame <= self.last


@dataclass(frozen=True)
class DecodedFrame:
    number: int
    image: npt.NDArray[np.uint8]  # H x W x 3 BGR
    decode_seconds: float


@dataclass(frozen=True)
class GroundTruth:
    """A sequence's ``gt.txt`` rows and the protocol that decides which rows are targets.

    ``is_target``: rows scored as targets (the rule of :mod:`tracker.evaluation`).
    ``is_ignored``: non-target rows a detection may hit without being a false
    positive for AP: MOT15 rows with flag 0; MOT16/17/20 rows of a distractor
    class (whose matched predictions the evaluation removes) and mark-0
    pedestrians. A detection on a car or an occluder is a false positive, as
    in the tracking metrics.
    """

    rows: FloatArray  # (R, 9 or 10) as written in gt.txt
    benchmark: MotBenchmark
    is_target: npt.NDArray[np.bool_] = field(init=False, repr=False)
    is_ignored: npt.NDArray[np.bool_] = field(init=False, repr=False)
    _rows_by_frame: dict[int, npt.NDArray[np.int64]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        considered = self.rows[:, 6] != 0
        if self.benchmark.has_classes:
            is_target = considered & (self.rows[:, 7] == PEDESTRIAN_CLASS)
            distractor = np.isin(self.rows[:, 7], list(self.benchmark.distractor_classes))
            is_ignored = distractor | (~considered & (self.rows[:, 7] == PEDESTRIAN_CLASS))
        else:
            is_target, is_ignored = considered, ~considered
        frames = self.rows[:, 0].astype(np.int64)
        order = np.argsort(frames, kind="stable")
        numbers, starts = np.unique(frames[order], return_index=True)
        groups = np.split(order, starts[1:]) if len(order) else []
        rows_by_frame = dict(zip(numbers.tolist(), groups, strict=True))
        object.__setattr__(self, "is_target", is_target)
        object.__setattr__(self, "is_ignored", is_ignored)
        object.__setattr__(self, "_rows_by_frame", rows_by_frame)

    def in_frames(self, frames: FrameRange | None) -> GroundTruth:
        if frames is None:
            return self
        keep = (self.rows[:, 0] >= frames.first) & (self.rows[:, 0] <= frames.last)
        return GroundTruth(self.rows[keep], self.benchmark)

    def frame_boxes(self, frame: int) -> tuple[FloatArray, npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """``(tlbr (M, 4), identities (M,), ignore (M,))`` of the frame's targets and ignored rows."""
        rows = self._frame_rows(frame)
        rows = rows[self.is_target[rows] | self.is_ignored[rows]]
        return (
            tlwh_to_tlbr(self.rows[rows, 2:6]),
            self.rows[rows, 1].astype(np.int64),
            self.is_ignored[rows],
        )

    def target_boxes(self, frame: int) -> tuple[FloatArray, npt.NDArray[np.int64]]:
        """``(tlbr (M, 4), identities (M,))`` of the frame's targets."""
        rows = self._frame_rows(frame)
        rows = rows[self.is_target[rows]]
        return tlwh_to_tlbr(self.rows[rows, 2:6]).reshape(-1, 4), self.rows[rows, 1].astype(np.int64)

    def _frame_rows(self, frame: int) -> npt.NDArray[np.int64]:
        return self._rows_by_frame.get(int(frame), np.empty(0, dtype=np.int64))


@dataclass(frozen=True)
class InputSequence:
    """Where a sequence's frames come from; :meth:`frames` decodes them one at a time.

    ``frame_files`` lists ``(frame number, image path)`` for image inputs and is
    empty for a video. ``notes`` are things the user should know (e.g. seqinfo.ini
    claiming frames that are not there).
    """

    name: str
    kind: InputKind
    path: Path
    frame_rate: float
    frame_files: tuple[tuple[int, Path], ...] = ()
    video_frame_count: int | None = None
    notes: tuple[str, ...] = ()
    # Generated by pipeline.synth (its seqinfo.ini says so): renderings are labelled SYNTHETIC.
    synthetic: bool = False

    @property
    def ground_truth_path(self) -> Path | None:
        if self.kind is not InputKind.MOT_SEQUENCE:
            return None
        path = self.path / "gt" / "gt.txt"
        return path if path.is_file() else None

    @property
    def public_detections_path(self) -> Path | None:
        if self.kind is not InputKind.MOT_SEQUENCE:
            return None
        path = self.path / "det" / "det.txt"
        return path if path.is_file() else None

    def frame_numbers(self, frames: FrameRange | None = None) -> list[int] | None:
        """The frame numbers :meth:`frames` will yield; None for a video of unknown length."""
        if self.kind is InputKind.VIDEO:
            if self.video_frame_count is None:
                return None
            numbers = range(1, self.video_frame_count + 1)
        else:
            numbers = [number for number, _ in self.frame_files]
        return [number for number in numbers if frames is None or number in frames]

    def frames(self, frames: FrameRange | None = None) -> Iterator[DecodedFrame]:
        if self.kind is InputKind.VIDEO:
            yield from self._video_frames(frames)
            return
        for number, path in self.frame_files:
            if frames is not None and number not in frames:
                continue
            started = time.perf_counter()
            try:
                image = read_image(path, cv2.IMREAD_COLOR)
            except ImageFileError as error:
                raise SequenceError(str(error)) from error
            elapsed = time.perf_counter() - started
            yield DecodedFrame(number, image, elapsed)

    def _video_frames(self, frames: FrameRange | None) -> Iterator[DecodedFrame]:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise SequenceError(f"{self.path}: cannot open the video")
        try:
            number = 0
            while frames is None or number < frames.last:
                number += 1
                if frames is not None and number < frames.first:
                    if not capture.grab():
                        break
                    continue
                started = time.perf_counter()
                ok, image = capture.read()
                elapsed = time.perf_counter() - started
                if not ok:
                    break
                yield DecodedFrame(number, image, elapsed)
            else:
                return  # the range ended before the video did
        finally:
            capture.release()
        self._check_video_end(decoded=number - 1, frames=frames)

    def _check_video_end(self, decoded: int, frames: FrameRange | None) -> None:
        """The video ended after ``decoded`` frames: none (in range) is an error, fewer than announced a warning."""
        if decoded == 0 or (frames is not None and decoded < frames.first):
            where = "" if frames is None else f" from frame {frames.first} on"
            raise SequenceError(
                f"{self.path}: no frame could be decoded{where} (empty, cut short or not a video)"
            )
        if self.video_frame_count is not None and decoded < self.video_frame_count:
            warnings.warn(
                f"{self.path}: the header announces {self.video_frame_count} frames, {decoded} decoded "
                "(the file may be cut short); tracking the frames decoded",
                ShortVideoWarning,
                stacklevel=2,
            )

    def read_ground_truth(self) -> GroundTruth | None:
        """The sequence's ground truth, or None when it has no ``gt/gt.txt``."""
        path = self.ground_truth_path
        if path is None:
            return None
        return read_ground_truth(path, self.name)


def open_sequence(path: str | Path, frame_rate: float | None = None) -> InputSequence:
    """Recognise ``path`` as a MOT sequence folder, an image folder or a video.

    ``frame_rate`` overrides the sequence's own (seqinfo.ini, the video header),
    and is needed for image folders (default 30).
    """
    source = Path(path)
    if frame_rate is not None and (not math.isfinite(frame_rate) or frame_rate <= 0):
        raise SequenceError(f"frame rate must be a positive number, got {frame_rate}")
    if source.is_dir():
        if (source / "seqinfo.ini").is_file() or (source / "img1").is_dir():
            return _open_mot_sequence(source, frame_rate)
        return _open_image_folder(source, frame_rate)
    if source.is_file():
        return _open_video(source, frame_rate)
    raise SequenceError(f"{source}: no such video file or folder")


def read_ground_truth(path: Path, sequence_name: str) -> GroundTruth:
    try:
        rows = read_mot_file(path, min_columns=MOT17_GT_COLUMNS)
    except MotFormatError as error:
        raise SequenceError(str(error)) from error
    columns = rows.shape[1]
    if columns == MOT15_GT_COLUMNS:
        benchmark = MotBenchmark.MOT15
    elif columns == MOT17_GT_COLUMNS:
        benchmark = MotBenchmark.MOT20 if sequence_name.upper().startswith("MOT20") else MotBenchmark.MOT17
    else:
        raise SequenceError(
            f"{path}: {columns} columns per row; expected 10 (MOT15) or 9 (MOT16/17/20) ground truth"
        )
    return GroundTruth(rows, benchmark)


def _open_mot_sequence(folder: Path, frame_rate: float | None) -> InputSequence:
    info = _read_seqinfo(folder / "seqinfo.ini")
    notes: list[str] = []
    image_dir = folder / info.get("imDir", "img1")
    if not image_dir.resolve().is_relative_to(folder.resolve()):
        raise SequenceError(f"{folder / 'seqinfo.ini'}: imDir {info['imDir']!r} points outside the sequence")
    extension = info.get("imExt", ".jpg")
    frame_files = _numbered_images(image_dir, (extension,))
    if not frame_files:
        raise SequenceError(f"{image_dir}: no '*{extension}' frame images named by frame number")
    claimed = info.get("seqLength")
    if claimed is not None and claimed.isdigit() and int(claimed) != len(frame_files):
        notes.append(
            f"{folder.name}: seqinfo.ini claims {claimed} frames but {len(frame_files)} images are present "
            f"({frame_files[0][0]}..{frame_files[-1][0]}); using the images present"
        )
    if frame_rate is None:
        frame_rate = _seqinfo_frame_rate(info, folder, notes)
    return InputSequence(
        name=folder.resolve().name,
        kind=InputKind.MOT_SEQUENCE,
        path=folder,
        frame_rate=frame_rate,
        frame_files=tuple(frame_files),
        synthetic=(folder / "seqinfo.ini").is_file() and is_synthetic_seqinfo(folder / "seqinfo.ini"),
        notes=tuple(notes),
    )


def _read_seqinfo(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep "frameRate", not "framerate"
    try:
        parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    except configparser.Error as error:
        raise SequenceError(f"{path}: not a valid ini file ({error})".replace("\n", " ")) from error
    if not parser.has_section("Sequence"):
        raise SequenceError(f"{path}: no [Sequence] section")
    return {key: value.strip() for key, value in parser["Sequence"].items()}


def _seqinfo_frame_rate(info: dict[str, str], folder: Path, notes: list[str]) -> float:
    value = info.get("frameRate")
    if value is None:
        notes.append(f"{folder.name}: no frameRate in seqinfo.ini; assuming {DEFAULT_FRAME_RATE:g}")
        return DEFAULT_FRAME_RATE
    try:
        rate = float(value)
    except ValueError:
        raise SequenceError(f"{folder / 'seqinfo.ini'}: frameRate={value!r} is not a number") from None
    if not math.isfinite(rate) or rate <= 0:
        raise SequenceError(f"{folder / 'seqinfo.ini'}: frameRate={value!r} must be positive")
    return rate


def _numbered_images(folder: Path, extensions: tuple[str, ...]) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    numbered = [
        (int(path.stem), path)
        for path in folder.iterdir()
        if path.suffix.lower() in extensions and path.stem.isdigit() and path.is_file()
    ]
    return sorted(numbered)


def _open_image_folder(folder: Path, frame_rate: float | None) -> InputSequence:
    images = sorted(
        path for path in folder.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )
    if not images:
        raise SequenceError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) and no seqinfo.ini/img1")
    numbers = [int(path.stem) if path.stem.isdigit() else None for path in images]
    numbered_by_name = all(number is not None for number in numbers) and len(set(numbers)) == len(numbers)
    if numbered_by_name:
        frame_files = sorted((number, path) for number, path in zip(numbers, images, strict=True))  # type: ignore[misc]
    else:
        frame_files = [(index, path) for index, path in enumerate(images, start=1)]
    return InputSequence(
        name=folder.resolve().name,
        kind=InputKind.IMAGE_FOLDER,
        path=folder,
        frame_rate=frame_rate if frame_rate is not None else DEFAULT_FRAME_RATE,
        frame_files=tuple(frame_files),
    )


def _open_video(path: Path, frame_rate: float | None) -> InputSequence:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise SequenceError(f"{path}: not a folder and not a video cv2 can open")
        header_rate = capture.get(cv2.CAP_PROP_FPS)
        header_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    notes = []
    if frame_rate is None:
        if math.isfinite(header_rate) and header_rate > 0:
            frame_rate = float(header_rate)
        else:
            frame_rate = DEFAULT_FRAME_RATE
            notes.append(f"{path.name}: the video states no frame rate; assuming {DEFAULT_FRAME_RATE:g}")
    return InputSequence(
        name=path.stem,
        kind=InputKind.VIDEO,
        path=path,
        frame_rate=frame_rate,
        # The container's count is an estimate (used for the progress bar only).
        video_frame_count=header_count if header_count > 0 else None,
        notes=tuple(notes),
    )
