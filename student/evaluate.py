"""Evaluate a student on a validation selection of shard records: AP@0.5 and distillation fidelity.

    python -m student.evaluate --checkpoint out/train-pets09/last.pt
    python -m student.evaluate --checkpoint C --shards out/shards-pets --frames 301 397

AP@0.5 is :func:`tdt.detection_ap.average_precision` (VOC all-point, ignore
boxes neither reward nor punish) over detections in original image pixels.

Fidelity compares the student's embedding of each detection with the teacher
embedding of the ground-truth box it found. A detection is matched to a box
that has a teacher embedding when their IoU is >= 0.5: greedily, in
descending score order, each detection takes the highest-IoU box not yet
taken (one-to-one). For a student with D_s embedding dims, both vectors are
cut to their first D_s dims and L2-normalised (s, t). Reported:

- ``raw_cosine``: mean of s . t. Teacher (OSNet) features are non-negative, so
  even a constant vector scores about 0.7: read it with the next two.
- ``centred_cosine``: mean cosine of (s - m) and (t - m), both re-normalised,
  where m is the training-set mean of t over every training box (stored in
  the checkpoint at training time). A constant student scores about 0 here.
- ``nearest_rate``: the share of matched detections whose own teacher
  embedding is the most similar (raw cosine) to s among the teacher
  embeddings of all ground-truth boxes of its frame; only frames with at
  least two such boxes count (with one the question has no answer).

Fidelity is only reported for students trained to regress the teacher (L2
loss); a detection-only student, or one trained with identity CE alone,
reports AP only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from pipeline.shards import ShardError
from tdt.boxes import box_iou
from tdt.config import ConfigError
from tdt.detection_ap import average_precision
from tdt.process import configure_for_cli

from .api import load_student
from .checkpoint import CheckpointError, load_checkpoint
from .config import ModelConfig
from .data import DatasetOptions, StudentDataError, StudentDataset, collate
from .inference import postprocess
from .model import StudentDetector
from .recipe import MissingInputError, TrainConfig, resolve_config_path
from .selection import select_images
from .sources import ShardSource
from .transforms import detections_to_original

MATCH_IOU = 0.5


def greedy_matches(
    detection_boxes: np.ndarray,
    detection_scores: np.ndarray,
    ground_truth_boxes: np.ndarray,
    iou_threshold: float = MATCH_IOU,
) -> np.ndarray:
    """(N,) index of the ground-truth box each detection is matched to, or -1.

    Greedy in descending score order; each detection takes the highest-IoU box
    (IoU >= ``iou_threshold``) that no higher-scoring detection took.
    """
    matches = np.full(len(detection_boxes), -1, dtype=np.int64)
    if len(detection_boxes) == 0 or len(ground_truth_boxes) == 0:
        return matches
    iou = box_iou(detection_boxes, ground_truth_boxes)
    available = np.ones(len(ground_truth_boxes), dtype=bool)
    for detection in np.argsort(-np.asarray(detection_scores), kind="stable"):
        candidates = np.where(available & (iou[detection] >= iou_threshold), iou[detection], -1.0)
        best = int(np.argmax(candidates))
        if candidates[best] >= 0.0:
            matches[detection] = best
            available[best] = False
    return matches


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@dataclasses.dataclass(frozen=True)
class FidelityReport:
    embedding_dim: int
    matched_detections: int
    raw_cosine: float
    centred_cosine: float | None  # None without a training-set mean
    nearest_rate: float | None  # None when no frame has two ground-truth embeddings
    nearest_counted: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FidelityAccumulator:
    """Collects matched (student, teacher) embedding pairs frame by frame; see the module docstring.

    ``teacher_mean`` is the training-set mean of the normalised first-D_s
    teacher dims (``(D_s,)``), or None (then no centred cosine).
    """

    def __init__(
        self, embedding_dim: int, teacher_mean: np.ndarray | None = None, iou_threshold: float = MATCH_IOU
    ) -> None:
        if embedding_dim <= 0:
            raise ValueError("fidelity needs an embedding dimension > 0")
        self.embedding_dim = embedding_dim
        self.iou_threshold = iou_threshold
        self.teacher_mean = None
        if teacher_mean is not None:
            self.teacher_mean = np.asarray(teacher_mean, dtype=np.float64).reshape(-1)
            if self.teacher_mean.shape != (embedding_dim,):
                raise ValueError(
                    f"teacher mean has {self.teacher_mean.shape[0]} dims, the student {embedding_dim}"
                )
        self._raw: list[float] = []
        self._centred: list[float] = []
        self._nearest_hits = 0
        self._nearest_counted = 0

    def add_frame(
        self,
        detection_boxes: np.ndarray,
        detection_scores: np.ndarray,
        detection_embeddings: np.ndarray,
        ground_truth_boxes: np.ndarray,
        ground_truth_embeddings: np.ndarray,
    ) -> None:
        """One frame; ground-truth rows without a teacher embedding are NaN (e.g. ignore boxes)."""
        dim = self.embedding_dim
        teacher = np.asarray(ground_truth_embeddings, dtype=np.float64)
        if teacher.size == 0:
            return
        if teacher.ndim != 2 or teacher.shape[1] < dim:
            raise ValueError(f"ground-truth embeddings must be (M, >= {dim}), got {teacher.shape}")
        has_embedding = np.isfinite(teacher).all(axis=1)
        if not has_embedding.any():
            return
        candidate_boxes = np.asarray(ground_truth_boxes, dtype=np.float64).reshape(-1, 4)[has_embedding]
        teacher_unit = _unit_rows(teacher[has_embedding, :dim])
        student = np.asarray(detection_embeddings, dtype=np.float64)
        student = student.reshape(len(student), -1) if student.size else np.zeros((0, dim))
        if len(student) and student.shape[1] < dim:
            raise ValueError(f"detection embeddings have {student.shape[1]} dims, expected {dim}")
        matches = greedy_matches(
            np.asarray(detection_boxes, dtype=np.float64).reshape(-1, 4),
            np.asarray(detection_scores, dtype=np.float64).reshape(-1),
            candidate_boxes,
            self.iou_threshold,
        )
        matched = np.flatnonzero(matches >= 0)
        if len(matched) == 0:
            return
        student_unit = _unit_rows(student[matched, :dim])
        own = matches[matched]
        self._raw.extend(np.sum(student_unit * teacher_unit[own], axis=1).tolist())
        if self.teacher_mean is not None:
            centred_student = _unit_rows(student_unit - self.teacher_mean)
            centred_teacher = _unit_rows(teacher_unit[own] - self.teacher_mean)
            self._centred.extend(np.sum(centred_student * centred_teacher, axis=1).tolist())
        if len(teacher_unit) >= 2:
            similarity = student_unit @ teacher_unit.T  # (matched, candidates)
            self._nearest_hits += int(np.sum(np.argmax(similarity, axis=1) == own))
            self._nearest_counted += len(matched)

    def report(self) -> FidelityReport | None:
        """None when no detection was matched to a box with a teacher embedding."""
        if not self._raw:
            return None
        return FidelityReport(
            embedding_dim=self.embedding_dim,
            matched_detections=len(self._raw),
            raw_cosine=float(np.mean(self._raw)),
            centred_cosine=float(np.mean(self._centred)) if self._centred else None,
            nearest_rate=self._nearest_hits / self._nearest_counted if self._nearest_counted else None,
            nearest_counted=self._nearest_counted,
        )


@dataclasses.dataclass(frozen=True)
class EvaluationReport:
    """AP@0.5 and (for students regressing the teacher) fidelity over a set of images."""

    ap50: float
    images: int
    ground_truth_boxes: int  # not counting ignore boxes
    detections: int
    fidelity: FidelityReport | None
    fidelity_note: str
    settings: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["fidelity"] = self.fidelity.as_dict() if self.fidelity is not None else None
        return values

    def summary(self) -> str:
        text = (
            f"AP@0.5 {self.ap50:.4f} on {self.images} images ({self.ground_truth_boxes} boxes, "
            f"{self.detections} detections)"
        )
        fidelity = self.fidelity
        if fidelity is None:
            return f"{text}; fidelity: {self.fidelity_note}"
        centred = f"{fidelity.centred_cosine:.4f}" if fidelity.centred_cosine is not None else "n/a"
        nearest = f"{fidelity.nearest_rate:.4f}" if fidelity.nearest_rate is not None else "n/a"
        return (
            f"{text}; fidelity over {fidelity.matched_detections} matched detections "
            f"(first {fidelity.embedding_dim} dims): raw cosine {fidelity.raw_cosine:.4f}, "
            f"centred cosine {centred}, own-teacher-nearest rate {nearest}"
        )

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2, allow_nan=True) + "\n", encoding="utf-8")


def evaluate_model(
    model: StudentDetector,
    dataset: StudentDataset,
    indices: Sequence[int],
    *,
    inference_config: ModelConfig | None = None,
    teacher_mean: np.ndarray | None = None,
    compare_with_teacher: bool = True,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> EvaluationReport:
    """Evaluate ``model`` on ``dataset[i]`` for ``i`` in ``indices`` (a validation-mode dataset
    at the model's input size). ``inference_config`` may change thresholds (default: the model's)."""
    if dataset.options.mode != "validation":
        raise ValueError("evaluation needs a validation-mode dataset (deterministic letterbox)")
    config = inference_config if inference_config is not None else model.config
    if dataset.options.input_size != config.input_size:
        raise ValueError(
            f"dataset input size {dataset.options.input_size} != model input {config.input_size}"
        )
    fidelity_note = ""
    fidelity = None
    if not config.has_embedding_head:
        fidelity_note = "not applicable (detection-only student)"
    elif not compare_with_teacher:
        fidelity_note = "not applicable (embeddings trained with identity CE, not regressed to the teacher)"
    else:
        fidelity = FidelityAccumulator(config.embedding_dim, teacher_mean)
    loader = DataLoader(Subset(dataset, list(map(int, indices))), batch_size=batch_size, collate_fn=collate)
    was_training = model.training
    model.eval()
    try:
        batches = tqdm(loader, desc="evaluate", unit="batch", disable=not progress)
        detections, ground_truth = _detect_and_match(model, config, batches, torch.device(device), fidelity)
    finally:
        model.train(was_training)
    fidelity_report = fidelity.report() if fidelity is not None else None
    if fidelity is not None and fidelity_report is None:
        fidelity_note = "no detection matched a ground-truth box with a teacher embedding"
    return EvaluationReport(
        ap50=average_precision(detections, ground_truth, iou_threshold=MATCH_IOU),
        images=len(detections),
        ground_truth_boxes=int(sum(np.count_nonzero(~ignore) for _, ignore in ground_truth)),
        detections=int(sum(len(scores) for _, scores in detections)),
        fidelity=fidelity_report,
        fidelity_note=fidelity_note,
        settings={
            "input_size": list(config.input_size),
            "score_thresh": config.score_thresh,
            "nms_thresh": config.nms_thresh,
            "peak_nms_thresh": config.peak_nms_thresh,
            "detections_per_image": config.detections_per_image,
            "match_iou": MATCH_IOU,
        },
    )


@torch.inference_mode()
def _detect_and_match(
    model: StudentDetector,
    config: ModelConfig,
    batches: Iterable[tuple[torch.Tensor, list[dict[str, Any]]]],
    device: torch.device,
    fidelity: FidelityAccumulator | None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
    """Per image: (boxes, scores) in original pixels and (ground-truth boxes, ignore flags);
    matched embeddings go to ``fidelity``."""
    detections: list[tuple[np.ndarray, np.ndarray]] = []
    ground_truth: list[tuple[np.ndarray, np.ndarray]] = []
    for images, targets in batches:
        per_image = postprocess(model(images.to(device)), config)
        for found, target in zip(per_image, targets, strict=True):
            tlbr, has_area = detections_to_original(target["placement"], found.boxes.cpu().numpy())
            scores = found.scores.cpu().numpy()[has_area]
            detections.append((tlbr, scores))
            boxes = target["original_boxes"].numpy()
            ground_truth.append((boxes, target["ignore"].numpy()))
            if fidelity is not None and found.embeddings is not None:
                embeddings = found.embeddings.cpu().numpy()[has_area]
                fidelity.add_frame(tlbr, scores, embeddings, boxes, target["embeddings"].numpy())
    return detections, ground_truth


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    sources: Sequence[ShardSource] | None = None,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    score_thresh: float | None = None,
    peak_nms_thresh: float | None = None,
    progress: bool = False,
    verify_shards: bool = True,
) -> EvaluationReport:
    """Evaluate a checkpoint on ``sources`` (default: the validation sources of its recipe).

    ``verify_shards`` checks each shard's sha256 against its manifest when it is read.
    """
    model, checkpoint = load_student(checkpoint_path, device=device)
    recipe = TrainConfig.from_dict(checkpoint.config) if checkpoint.config else None
    if sources is None:
        if recipe is None or not recipe.data.validation:
            raise ConfigError(f"{checkpoint_path}: its recipe names no validation shards; pass --shards")
        sources = recipe.data.validation
    for source in sources:
        if not Path(source.directory).is_dir():
            raise MissingInputError(f"shard directory {source.directory} not found")
    inference_config = model.config
    if score_thresh is not None:
        inference_config = dataclasses.replace(inference_config, score_thresh=score_thresh)
    if peak_nms_thresh is not None:
        inference_config = dataclasses.replace(inference_config, peak_nms_thresh=peak_nms_thresh)
    dataset = StudentDataset(
        list(sources),
        DatasetOptions(
            input_size=inference_config.input_size, mode="validation", verify_checksums=verify_shards
        ),
    )
    compare_with_teacher = recipe.loss.uses_l2 if recipe is not None else True
    if (
        inference_config.has_embedding_head
        and compare_with_teacher
        and dataset.teacher_id != checkpoint.teacher_id
    ):
        raise CheckpointError(
            f"{checkpoint_path}: trained against teacher {checkpoint.teacher_id!r}, the validation shards "
            f"hold embeddings of {dataset.teacher_id!r}: fidelity would compare different spaces"
        )
    selection, _ = select_images(dataset, sources)
    saved_mean = checkpoint.teacher_mean_embedding
    teacher_mean = saved_mean.numpy() if saved_mean is not None else None
    report = evaluate_model(
        model,
        dataset,
        selection.all_indices().tolist(),
        inference_config=inference_config,
        teacher_mean=teacher_mean,
        compare_with_teacher=compare_with_teacher,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    settings = {
        **report.settings,
        "checkpoint": str(Path(checkpoint_path).resolve()),
        "step": checkpoint.step,
        "teacher_id": checkpoint.teacher_id,
        "sources": [
            {"directory": source.directory, "selection": source.describe_selection()} for source in sources
        ],
    }
    return dataclasses.replace(report, settings=settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m student.evaluate",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Without --shards the checkpoint's own validation selection is used (for configs/pets09.yaml: "
            "frames 301-397 of out/shards-pets). The report is printed and written as JSON."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="a checkpoint written by student.train"
    )
    parser.add_argument("--shards", nargs="+", metavar="DIR", help="shard directories to evaluate on")
    parser.add_argument(
        "--frames", nargs=2, type=int, metavar=("FIRST", "LAST"), help="inclusive frame-number range"
    )
    parser.add_argument("--sequences", nargs="+", metavar="NAME", help="sequence names (shell patterns)")
    parser.add_argument(
        "--dataset-root", help="image root overriding the one recorded in the shard manifests"
    )
    parser.add_argument("--score-thresh", type=float, help="detection score threshold (default: the model's)")
    parser.add_argument(
        "--peak-nms",
        type=float,
        metavar="IOU",
        help="CenterNet students: also a box NMS at this IoU over the heatmap peaks (default: the "
        "model's peak_nms_thresh, usually none); for students trained with several positives per object",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument(
        "--out", type=Path, help="JSON report path (default: evaluation_<checkpoint name>.json beside it)"
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="do not check the shards' sha256 against their manifests (their content is still checked)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _sources_from_arguments(args: argparse.Namespace, checkpoint_path: Path) -> list[ShardSource] | None:
    if args.shards is None and args.frames is None and args.sequences is None and args.dataset_root is None:
        return None
    if args.shards is not None:
        base = [ShardSource(directory=str(resolve_config_path(directory))) for directory in args.shards]
    else:
        base = list(TrainConfig.from_dict(load_checkpoint(checkpoint_path).config).data.validation)
    changes: dict[str, Any] = {}
    if args.frames is not None:
        changes["frames"] = tuple(args.frames)
    if args.sequences is not None:
        changes["sequences"] = tuple(args.sequences)
    if args.dataset_root is not None:
        changes["dataset_root"] = str(resolve_config_path(args.dataset_root))
    return [dataclasses.replace(source, **changes) for source in base]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_for_cli()
    try:
        sources = _sources_from_arguments(args, args.checkpoint)
        report = evaluate_checkpoint(
            args.checkpoint,
            sources,
            device=args.device,
            batch_size=args.batch_size,
            score_thresh=args.score_thresh,
            peak_nms_thresh=args.peak_nms,
            progress=not args.quiet,
            verify_shards=not args.no_verify,
        )
    except (CheckpointError, ConfigError, StudentDataError, ShardError, MissingInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = args.out or args.checkpoint.with_name(f"evaluation_{args.checkpoint.stem}.json")
    report.write_json(out)
    print(report.summary())
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
