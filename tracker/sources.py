"""Frame sources: where each frame's detections (and embeddings) come from, with stage times.

A source pairs an :class:`~tracker.sequence.InputSequence` with a detection
stage and yields one :class:`SourceFrame` per frame: the decoded BGR image,
the detections handed to the tracker, every scored detection (for AP, before
any tracker threshold) and the time of each stage.

Stages:

- :class:`OneStageDetection`: a student whose detector emits embeddings.
- :class:`TwoStageDetection`: a detector (detection-only checkpoint) plus the
  re-ID teacher on each detected crop. Only detections the tracker would use
  (score >= ``min_score``: the TrackerConfig's ``lowest_used_score``) are
  embedded: the tracker drops the others before matching, so the tracks are the same and the teacher is
  not charged for crops nobody uses. AP still sees every detection.
- :class:`OracleDetection`: the sequence's ground-truth targets (score 1, or
  optionally the share of each box not hidden by people nearer the camera),
  optionally jittered and thinned with a seed, with teacher embeddings or
  without any (IoU-only association): isolates the association.
- :class:`PublicDetection`: MOTChallenge ``det/det.txt`` rows plus the teacher
  (or none). Its scores are detector-specific: when every score of the file
  lies in [0, 1] (MOT17's FRCNN/SDP) they are probabilities and passed on
  unchanged; otherwise (ACF/DPM margins, e.g. PETS09: -0.5..139) the rows
  scoring at least ``min_raw_score`` (default 0) are handed to the tracker
  with score 1, so its probability thresholds do not apply to raw margins.
  AP always ranks by the raw score.

Crops: boxes are clipped to the image for the teacher; a box with less than
one visible pixel of width or height is dropped (its crop would be empty), as
is a detection whose embedding is all zero (OSNet features are post-ReLU, so
this can happen; it cannot be normalised). Both are counted per frame.

Stages take typed inputs (a loaded detector, a built teacher, a
:class:`teacher.TeacherConfig`), never command-line arguments. This and
:mod:`tracker.cli` are the only tracker modules that import ``student`` or
``teacher``, and only inside functions (:func:`load_detector`,
:func:`load_teacher`), so ``import tracker.sources`` stays torch-free.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from tdt.config import ConfigError
from tdt.text import one_line
from tracker.mot_format import MotFormatError, read_mot_file
from tracker.sequence import FrameRange, GroundTruth, InputSequence
from tracker.timing import FrameTiming

if TYPE_CHECKING:
    from teacher import TeacherConfig

Float32Array = npt.NDArray[np.float32]
# A box must show at least this many pixels of width and height inside the image to be cropped.
MIN_VISIBLE_PIXELS = 1.0
PUBLIC_SCORE_COLUMN = 6


class SourceError(ValueError):
    """A source that cannot be built or run (checkpoint, teacher weights, detections file); one line."""


class DetectionsLike(Protocol):
    tlbr: np.ndarray
    score: np.ndarray
    embedding: np.ndarray | None


class DetectorLike(Protocol):
    """What ``student.load`` returns (:class:`student.inference.Detector`)."""

    @property
    def embedding_dim(self) -> int | None: ...

    def detect(self, image_bgr: np.ndarray) -> DetectionsLike: ...


class TeacherLike(Protocol):
    """What ``teacher.build_teacher`` returns (:class:`teacher.Teacher`)."""

    name: str
    dim: int

    def embed_crops(self, image_bgr: np.ndarray, boxes_tlbr: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class FrameDetections:
    """One frame's detections: ``tlbr float32 (N, 4)``, ``score float32 (N,)``, ``embedding (N, D) | None``."""

    tlbr: Float32Array
    score: Float32Array
    embedding: Float32Array | None = None

    def __post_init__(self) -> None:
        tlbr = np.ascontiguousarray(self.tlbr, dtype=np.float32).reshape(-1, 4)
        score = np.ascontiguousarray(self.score, dtype=np.float32).reshape(-1)
        if len(score) != len(tlbr):
            raise ValueError(f"{len(tlbr)} boxes but {len(score)} scores")
        object.__setattr__(self, "tlbr", tlbr)
        object.__setattr__(self, "score", score)
        if self.embedding is not None:
            embedding = np.ascontiguousarray(self.embedding, dtype=np.float32)
            if embedding.ndim != 2 or len(embedding) != len(tlbr):
                raise ValueError(f"embedding must have shape ({len(tlbr)}, D), got {embedding.shape}")
            object.__setattr__(self, "embedding", embedding)

    def __len__(self) -> int:
        return len(self.score)

    def select(self, keep: npt.NDArray[np.bool_] | npt.NDArray[np.int64]) -> FrameDetections:
        return FrameDetections(
            self.tlbr[keep], self.score[keep], None if self.embedding is None else self.embedding[keep]
        )

    def without_embeddings(self) -> FrameDetections:
        return FrameDetections(self.tlbr, self.score)


@dataclass(frozen=True)
class StageOutput:
    """What a detection stage produced for one frame.

    ``tracked`` goes to the tracker; ``scored`` is every detection with its
    ranking score (AP); ``dropped`` counts boxes left out for having no usable
    crop or embedding.
    """

    tracked: FrameDetections
    scored: FrameDetections
    model_seconds: float = 0.0
    teacher_seconds: float = 0.0
    dropped: int = 0


class DetectionStage(Protocol):
    @property
    def description(self) -> str: ...

    @property
    def embedding_dim(self) -> int | None: ...

    def process(self, frame: int, image_bgr: np.ndarray) -> StageOutput: ...


@dataclass(frozen=True)
class SourceFrame:
    number: int
    image: npt.NDArray[np.uint8]
    detections: FrameDetections  # handed to the tracker
    scored_detections: FrameDetections  # every detection, for AP
    timing: FrameTiming  # association time is added by whoever runs the tracker
    dropped: int = 0


def source_frames(
    sequence: InputSequence, stage: DetectionStage, frames: FrameRange | None = None
) -> Iterator[SourceFrame]:
    """Decode each frame of ``sequence`` (within ``frames``) and run ``stage`` on it."""
    for decoded in sequence.frames(frames):
        output = stage.process(decoded.number, decoded.image)
        yield SourceFrame(
            number=decoded.number,
            image=decoded.image,
            detections=output.tracked,
            scored_detections=output.scored,
            timing=FrameTiming(
                decode_seconds=decoded.decode_seconds,
                model_seconds=output.model_seconds,
                teacher_seconds=output.teacher_seconds,
            ),
            dropped=output.dropped,
        )


# ---- stages ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OneStageDetection:
    """A student that detects and embeds in one pass."""

    detector: DetectorLike

    def __post_init__(self) -> None:
        if not self.detector.embedding_dim:
            raise SourceError(
                "one-stage tracking needs a student with an embedding head; this checkpoint is "
                "detection-only (use it two-stage, with the re-ID teacher)"
            )

    @property
    def description(self) -> str:
        return f"one-stage student ({self.detector.embedding_dim}-d embeddings)"

    @property
    def embedding_dim(self) -> int | None:
        return self.detector.embedding_dim

    def process(self, frame: int, image_bgr: np.ndarray) -> StageOutput:
        started = time.perf_counter()
        raw = self.detector.detect(image_bgr)
        model_seconds = time.perf_counter() - started
        if raw.embedding is None:
            raise SourceError(f"frame {frame}: the one-stage detector returned no embeddings")
        detections = FrameDetections(raw.tlbr, raw.score, raw.embedding)
        usable = _nonzero_rows(detections.embedding)
        return StageOutput(
            tracked=detections.select(usable),
            scored=detections.without_embeddings(),
            model_seconds=model_seconds,
            dropped=int(np.count_nonzero(~usable)),
        )


@dataclass(frozen=True)
class TwoStageDetection:
    """A detector, then the teacher on the crops of detections scoring >= ``min_score``.

    A detector that also emits embeddings may be used; its embeddings are
    ignored (and its embedding head is still paid for in the model time).
    """

    detector: DetectorLike
    teacher: TeacherLike
    min_score: float

    @property
    def description(self) -> str:
        return f"two-stage: detector + {self.teacher.name} on detected crops"

    @property
    def embedding_dim(self) -> int | None:
        return self.teacher.dim

    def process(self, frame: int, image_bgr: np.ndarray) -> StageOutput:
        started = time.perf_counter()
        raw = self.detector.detect(image_bgr)
        model_seconds = time.perf_counter() - started
        scored = FrameDetections(raw.tlbr, raw.score)
        candidates = scored.select(scored.score >= self.min_score)
        embedded, teacher_seconds, dropped = embed_with_teacher(self.teacher, image_bgr, candidates)
        return StageOutput(embedded, scored, model_seconds, teacher_seconds, dropped)


@dataclass(frozen=True)
class OraclePerturbation:
    """How ground-truth boxes are degraded before tracking, reproducibly per (seed, frame).

    ``jitter``: each coordinate moves by Gaussian noise with standard deviation
    ``jitter`` times the box width (x) or height (y). ``drop_rate``: each box is
    left out with this probability (a missed detection). ``visibility_scores``:
    each box scores its visible share (:func:`visible_share`) instead of 1, as a
    detector's confidence drops for occluded people.
    """

    jitter: float = 0.0
    drop_rate: float = 0.0
    seed: int = 0
    visibility_scores: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.jitter < 1.0:
            raise SourceError(f"oracle jitter must be in [0, 1), got {self.jitter}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise SourceError(f"oracle drop rate must be in [0, 1), got {self.drop_rate}")

    def apply(self, frame: int, tlbr: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return self.detections(frame, tlbr)[0]

    def detections(
        self, frame: int, tlbr: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], Float32Array]:
        """The degraded boxes of one frame's ground truth and their scores."""
        scores = visible_share(tlbr) if self.visibility_scores else np.ones(len(tlbr))
        if self.jitter == 0.0 and self.drop_rate == 0.0:
            return tlbr, scores.astype(np.float32)
        rng = np.random.default_rng([self.seed, frame])
        keep = rng.random(len(tlbr)) >= self.drop_rate
        kept = tlbr[keep]
        size = np.concatenate([kept[:, 2:] - kept[:, :2]] * 2, axis=1)
        moved = kept + rng.normal(0.0, self.jitter, kept.shape) * size
        # Opposite edges may cross under strong jitter: keep at least one pixel of width and height.
        moved[:, 2:] = np.maximum(moved[:, 2:], moved[:, :2] + 1.0)
        return moved, scores[keep].astype(np.float32)


def visible_share(tlbr: npt.ArrayLike, samples: int = 16) -> npt.NDArray[np.float64]:
    """Share of each box not covered by boxes whose bottom edge is lower in the image.

    In a view from above head height, the person standing nearer the camera has
    the lower bottom edge and hides the other. Estimated on a ``samples`` x
    ``samples`` grid of points per box.
    """
    boxes = np.asarray(tlbr, dtype=np.float64).reshape(-1, 4)
    steps = (np.arange(samples) + 0.5) / samples
    grid_x = boxes[:, None, 0] + steps[None, :] * (boxes[:, None, 2] - boxes[:, None, 0])  # (N, S)
    grid_y = boxes[:, None, 1] + steps[None, :] * (boxes[:, None, 3] - boxes[:, None, 1])
    inside_x = (grid_x[:, :, None] >= boxes[None, None, :, 0]) & (
        grid_x[:, :, None] <= boxes[None, None, :, 2]
    )
    inside_y = (grid_y[:, :, None] >= boxes[None, None, :, 1]) & (
        grid_y[:, :, None] <= boxes[None, None, :, 3]
    )
    in_front = boxes[None, :, 3] > boxes[:, None, 3]  # (N, M): box m is nearer than box n
    # (N, Sy, Sx, M): grid point (y, x) of box n lies in box m, and m is in front of n
    hidden = inside_y[:, :, None, :] & inside_x[:, None, :, :] & in_front[:, None, None, :]
    return 1.0 - hidden.any(axis=3).mean(axis=(1, 2))


@dataclass(frozen=True)
class OracleDetection:
    """Ground-truth targets as detections, with teacher embeddings or none."""

    ground_truth: GroundTruth
    teacher: TeacherLike | None = None
    perturbation: OraclePerturbation = field(default_factory=OraclePerturbation)

    @property
    def description(self) -> str:
        with_what = f"{self.teacher.name} embeddings" if self.teacher is not None else "no embeddings"
        perturbation = self.perturbation
        scores = "visible share" if perturbation.visibility_scores else "1"
        return (
            f"oracle: ground-truth boxes (jitter {perturbation.jitter:g}, drop {perturbation.drop_rate:g}, "
            f"seed {perturbation.seed}, score {scores}) with {with_what}"
        )

    @property
    def embedding_dim(self) -> int | None:
        return None if self.teacher is None else self.teacher.dim

    def process(self, frame: int, image_bgr: np.ndarray) -> StageOutput:
        tlbr, _ = self.ground_truth.target_boxes(frame)
        boxes, scores = self.perturbation.detections(frame, tlbr)
        detections = FrameDetections(boxes, scores)
        return _with_optional_teacher(self.teacher, image_bgr, detections, detections)


@dataclass(frozen=True)
class PublicDetection:
    """MOTChallenge public detections (``det/det.txt``) with teacher embeddings or none."""

    rows: npt.NDArray[np.float64]  # frame,id,x,y,w,h,score,...
    teacher: TeacherLike | None = None
    min_raw_score: float = 0.0
    scores_are_probabilities: bool = field(init=False)

    def __post_init__(self) -> None:
        scores = self.rows[:, PUBLIC_SCORE_COLUMN]
        object.__setattr__(self, "scores_are_probabilities", bool(np.all((scores >= 0.0) & (scores <= 1.0))))

    @classmethod
    def from_file(
        cls, path: Path, teacher: TeacherLike | None = None, min_raw_score: float = 0.0
    ) -> PublicDetection:
        try:
            rows = read_mot_file(path, min_columns=PUBLIC_SCORE_COLUMN + 1)
        except MotFormatError as error:
            raise SourceError(str(error)) from error
        return cls(rows, teacher, min_raw_score)

    @property
    def description(self) -> str:
        with_what = f"{self.teacher.name} embeddings" if self.teacher is not None else "no embeddings"
        if self.scores_are_probabilities:
            rule = "scores used as probabilities"
        else:
            rule = f"raw score >= {self.min_raw_score:g} tracked with score 1"
        return f"public detections ({rule}) with {with_what}"

    @property
    def embedding_dim(self) -> int | None:
        return None if self.teacher is None else self.teacher.dim

    def process(self, frame: int, image_bgr: np.ndarray) -> StageOutput:
        rows = self.rows[self.rows[:, 0] == frame]
        tlbr = rows[:, 2:6].copy()
        tlbr[:, 2:] += tlbr[:, :2]
        raw_score = rows[:, PUBLIC_SCORE_COLUMN]
        scored = FrameDetections(tlbr, raw_score)
        if self.scores_are_probabilities:
            tracked = scored
        else:
            kept = raw_score >= self.min_raw_score
            tracked = FrameDetections(tlbr[kept], np.ones(int(kept.sum()), np.float32))
        return _with_optional_teacher(self.teacher, image_bgr, tracked, scored)


def _with_optional_teacher(
    teacher: TeacherLike | None, image_bgr: np.ndarray, tracked: FrameDetections, scored: FrameDetections
) -> StageOutput:
    if teacher is None:
        visible = visible_mask(tracked.tlbr, image_bgr.shape[1], image_bgr.shape[0])
        return StageOutput(tracked.select(visible), scored, dropped=int(np.count_nonzero(~visible)))
    embedded, teacher_seconds, dropped = embed_with_teacher(teacher, image_bgr, tracked)
    return StageOutput(embedded, scored, teacher_seconds=teacher_seconds, dropped=dropped)


def visible_mask(tlbr: np.ndarray, image_width: int, image_height: int) -> npt.NDArray[np.bool_]:
    """Boxes showing at least :data:`MIN_VISIBLE_PIXELS` of width and height inside the image."""
    clipped = clip_to_image(tlbr, image_width, image_height)
    return ((clipped[:, 2] - clipped[:, 0]) >= MIN_VISIBLE_PIXELS) & (
        (clipped[:, 3] - clipped[:, 1]) >= MIN_VISIBLE_PIXELS
    )


def clip_to_image(tlbr: np.ndarray, image_width: int, image_height: int) -> Float32Array:
    clipped = np.array(tlbr, dtype=np.float32).reshape(-1, 4)
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, image_width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, image_height)
    return clipped


def embed_with_teacher(
    teacher: TeacherLike, image_bgr: np.ndarray, detections: FrameDetections
) -> tuple[FrameDetections, float, int]:
    """Teacher embeddings of the detections' visible crops.

    Returns the detections that got a usable embedding (boxes as given, not
    clipped), the teacher's seconds, and how many were dropped.
    """
    height, width = image_bgr.shape[:2]
    visible = visible_mask(detections.tlbr, width, height)
    candidates = detections.select(visible)
    started = time.perf_counter()
    embeddings, _ = teacher.embed_crops(image_bgr, clip_to_image(candidates.tlbr, width, height))
    teacher_seconds = time.perf_counter() - started
    usable = _nonzero_rows(embeddings)
    embedded = FrameDetections(candidates.tlbr[usable], candidates.score[usable], embeddings[usable])
    return embedded, teacher_seconds, len(detections) - len(embedded)


def _nonzero_rows(embedding: np.ndarray | None) -> npt.NDArray[np.bool_]:
    if embedding is None:
        raise ValueError("expected embeddings")
    return np.any(embedding != 0, axis=1)


# ---- adapters: the only places that import student / teacher -----------------------------------


def load_detector(
    checkpoint: Path,
    device: str = "cpu",
    detections_per_image: int | None = None,
    peak_nms_thresh: float | None = None,
) -> DetectorLike:
    """``student.load`` with its checkpoint errors turned into one-line :class:`SourceError`.

    ``detections_per_image`` overrides the checkpoint's cap on detections kept per
    image after NMS, ``peak_nms_thresh`` its CenterNet peak NMS IoU (None: the
    checkpoint's own).
    """
    if detections_per_image is not None and detections_per_image < 1:
        raise SourceError(f"detections per image must be >= 1, got {detections_per_image}")
    if peak_nms_thresh is not None and not 0.0 < peak_nms_thresh <= 1.0:
        raise SourceError(f"peak NMS IoU must be within (0, 1], got {peak_nms_thresh}")
    if not Path(checkpoint).is_file():
        raise SourceError(f"{checkpoint}: no such checkpoint file")
    import student
    from student.checkpoint import CheckpointError
    from student.inference import Detector

    try:
        detector = student.load(checkpoint, device)
    except (CheckpointError, ConfigError) as error:
        raise SourceError(one_line(str(error))) from error
    changes: dict[str, object] = {}
    if detections_per_image is not None:
        changes["detections_per_image"] = detections_per_image
    if peak_nms_thresh is not None:
        changes["peak_nms_thresh"] = peak_nms_thresh
    if not changes:
        return detector
    return Detector(detector.model, dataclasses.replace(detector.config, **changes), device)


def load_teacher(config: TeacherConfig) -> TeacherLike:
    """The teacher ``config`` describes; missing or bad weights are a :class:`SourceError`."""
    from teacher import TeacherError, build_teacher, weights_hint

    if config.weights is None:
        raise SourceError(f"the re-ID teacher needs weights. {weights_hint(config.name)}")
    if not config.weights.is_file():
        raise SourceError(f"{config.weights}: no such teacher weights file")
    try:
        return build_teacher(config)
    except TeacherError as error:
        raise SourceError(one_line(str(error))) from error
