"""The training run: build what a recipe describes, then step, log, checkpoint and evaluate.

:func:`train` is the library entry point (``python -m student.train`` is its
command line). A run is put together by small builders -- the checkpoint to
resume and its recipe check, the process group, seeding, the data, the model and
its loss (through :mod:`student.families`), the optimiser / scheduler / loss
scaler, the DDP wrapper -- and :meth:`_TrainingRun.run` is the loop.

Determinism: every training image is identified by a :class:`student.data.SampleKey`
(epoch, draw number, image) derived from the step alone (:class:`student.selection.DrawStream`),
and its augmentation is seeded by that key, so a run resumed from a checkpoint
sees exactly the batches (and, with the restored model, optimiser, schedule and
RNG state, computes exactly the losses) of an uninterrupted run on the same device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import random
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from tdt.config import ConfigError

from .checkpoint import (
    CheckpointError,
    CheckpointKeeper,
    TrainingCheckpoint,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
)
from .data import DatasetOptions, StudentDataset, collate, loader_worker_init
from .distributed import (
    DistributedContext,
    end_process_group,
    resolve_device,
    start_process_group,
    threads_per_process,
)
from .evaluate import EvaluationReport, evaluate_checkpoint
from .families import build_criterion, build_student
from .losses import LossTerms
from .model import StudentDetector
from .recipe import RECIPE_NAME, TrainConfig, check_inputs_exist, recipe_differences, write_recipe
from .refit import RefitReport, refit_embedding_head
from .schedule import build_optimizer, replan_schedule
from .selection import DrawStream, SelectedImages, overlapping_images, select_images
from .train_log import IntervalMeans, TrainingLog, short_postfix

EVALUATION_NAME = "evaluation.json"
LOSS_TARGET_KEYS = ("boxes", "ignore", "identities", "embeddings")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class TrainingOutcome:
    """What a finished :func:`train` call did. ``step_losses`` are the total losses of the
    steps this call ran (its first is step ``start_step + 1``); ``evaluation`` is the
    end-of-run evaluation (``run.evaluate_at_end`` with validation sources; main process only)."""

    out_dir: Path
    start_step: int
    final_step: int
    last_checkpoint: Path | None
    step_losses: tuple[float, ...]
    seconds_per_step: float
    is_main_process: bool
    evaluation: EvaluationReport | None = None
    refit: RefitReport | None = None
    precision: str = "float32"  # the training steps' arithmetic, e.g. "bfloat16 autocast"


def train(config: TrainConfig, *, resume: Path | None = None, progress: bool = True) -> TrainingOutcome:
    """Train (or, with ``resume``, continue) according to ``config``; see :class:`TrainConfig`.

    With ``config.run.evaluate_at_end`` and validation sources, the last checkpoint is
    then evaluated and the report written to ``evaluation.json`` in the output directory.

    Process-wide state this call touches, because training needs it: torch's thread
    count is ``config.run.threads`` during the call and restored afterwards; the
    global torch / numpy / Python RNGs are seeded from ``config.run.seed`` (or, on
    resume, restored from the checkpoint); under torchrun the process group is
    joined and left.
    """
    previous_threads = torch.get_num_threads()
    try:
        outcome = _TrainingRun.prepare(config, resume=resume, progress=progress).run()
        return _evaluate_at_end(config, outcome, progress=progress)
    finally:
        torch.set_num_threads(previous_threads)


class TrainingStep(nn.Module):
    """Model and criterion as one module, so DDP also synchronises the criterion's parameters
    (the identity classifier, uncertainty weights)."""

    def __init__(self, model: StudentDetector, criterion: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, images: Tensor, targets: Sequence[Mapping[str, Tensor]]) -> LossTerms:
        return self.criterion(self.model(images), targets)


# ---- builders --------------------------------------------------------------------------------
def _checkpoint_to_resume(config: TrainConfig, resume: Path | None) -> TrainingCheckpoint | None:
    """The checkpoint to continue from, refused when its architecture or recipe differs."""
    if resume is None:
        return None
    checkpoint = load_checkpoint(resume, expected_config=config.model)
    differences = recipe_differences(checkpoint.config, config.to_dict())
    if differences:
        raise CheckpointError(
            f"{resume}: the recipe differs from the one the checkpoint was trained with: "
            + "; ".join(differences)
        )
    return checkpoint


def _refuse_to_overwrite_a_run(config: TrainConfig, checkpoint: TrainingCheckpoint | None) -> None:
    out_dir = Path(config.run.out_dir)
    existing = latest_checkpoint(out_dir) if out_dir.is_dir() else None
    if checkpoint is None and existing is not None:
        raise ConfigError(
            f"{out_dir} already holds checkpoints of a run ({existing.name}); continue it with "
            f"--resume {out_dir} or choose another --out"
        )


def cpu_has_native_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 natively here; elsewhere it is emulated, several times
    slower than float32."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """float16 under ``run.amp`` on CUDA; bfloat16 under ``run.cpu_precision`` on a CPU that
    has it natively; else None (float32)."""
    if device.type == "cuda":
        return torch.float16 if config.run.amp else None
    wanted = config.run.cpu_precision
    if device.type != "cpu" or wanted == "float32":
        return None
    if cpu_has_native_bfloat16():
        return torch.bfloat16
    if wanted == "auto":
        return None
    raise ConfigError(
        "run.cpu_precision bfloat16: this CPU has no native bfloat16 arithmetic (AVX512-BF16 or AMX) "
        "and would emulate it, slower than float32; use float32 or auto"
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclasses.dataclass(frozen=True)
class _TrainingData:
    dataset: StudentDataset
    selection: SelectedImages
    teacher_mean: np.ndarray | None  # training-set mean of the regressed teacher dims


def _build_training_data(
    config: TrainConfig, checkpoint: TrainingCheckpoint | None, context: DistributedContext
) -> _TrainingData:
    model_config = config.model
    options = DatasetOptions(
        input_size=model_config.input_size,
        mode="train",
        augment=config.augment,
        seed=config.run.seed,
        verify_checksums=config.run.verify_shards,
    )
    dataset = StudentDataset(list(config.data.train), options)
    if (
        model_config.has_embedding_head
        and config.loss.uses_l2
        and dataset.embedding_dim < model_config.embedding_dim
    ):
        raise ConfigError(
            f"the student regresses {model_config.embedding_dim} teacher dims but the shards hold "
            f"{dataset.embedding_dim}-d embeddings"
        )
    if checkpoint is not None and checkpoint.teacher_id != dataset.teacher_id:
        raise CheckpointError(
            f"the checkpoint of step {checkpoint.step} was trained against teacher "
            f"{checkpoint.teacher_id!r}, the shards are from {dataset.teacher_id!r}"
        )
    selection, teacher_mean = select_images(dataset, config.data.train, model_config.embedding_dim)
    shared = overlapping_images(config.data.train, config.data.validation)
    if shared and context.is_main:
        warnings.warn(f"{shared} validation images are also training images", stacklevel=4)
    return _TrainingData(dataset, selection, teacher_mean)


def _build_step_module(
    config: TrainConfig, dataset: StudentDataset, device: torch.device, *, fresh: bool
) -> TrainingStep:
    """Model and loss of ``config.model.family``; a fresh run loads the ImageNet backbone weights."""
    backbone_weights = config.run.backbone_weights if fresh else None
    model = build_student(config.model, backbone_weights, warn_if_random_backbone=fresh)
    criterion = build_criterion(config.loss, config.model, dataset.num_identities)
    step_module = TrainingStep(model, criterion).to(device)
    if config.run.channels_last:
        step_module.to(memory_format=torch.channels_last)
    return step_module


@dataclasses.dataclass(frozen=True)
class _Optimisation:
    """Optimiser, learning-rate scheduler and (mixed precision) gradient scaler of a run."""

    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler

    @classmethod
    def build(cls, step_module: TrainingStep, config: TrainConfig, use_amp: bool) -> _Optimisation:
        optimizer = build_optimizer(list(step_module.named_parameters()), config.optim)
        scheduler = LambdaLR(optimizer, lr_lambda=config.optim.schedule())
        return cls(optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=use_amp))

    def restore(self, checkpoint: TrainingCheckpoint, config: TrainConfig) -> None:
        if checkpoint.optimizer_state is None or checkpoint.scheduler_state is None:
            raise CheckpointError(
                f"checkpoint of step {checkpoint.step} lacks optimiser or scheduler state: cannot resume"
            )
        self.optimizer.load_state_dict(checkpoint.optimizer_state)
        self.scheduler.load_state_dict(checkpoint.scheduler_state)
        if checkpoint.config.get("optim", {}).get("max_steps") != config.optim.max_steps:
            replan_schedule(self.scheduler, self.optimizer, config.optim.schedule(), checkpoint.step)
        if self.scaler.is_enabled() and checkpoint.grad_scaler_state:
            self.scaler.load_state_dict(checkpoint.grad_scaler_state)


def _restore(
    checkpoint: TrainingCheckpoint,
    step_module: TrainingStep,
    optimisation: _Optimisation,
    config: TrainConfig,
) -> int:
    """Load model, loss, optimiser and RNG state; returns the checkpoint's step."""
    step_module.model.load_state_dict(checkpoint.model_state)
    if checkpoint.criterion_state is not None:
        step_module.criterion.load_state_dict(checkpoint.criterion_state)
    elif step_module.criterion.state_dict():
        raise CheckpointError(f"checkpoint of step {checkpoint.step} lacks the loss's state: cannot resume")
    optimisation.restore(checkpoint, config)
    if checkpoint.rng_state is not None:
        restore_rng_state(checkpoint.rng_state)
    return checkpoint.step


def _wrap_for_processes(
    step_module: TrainingStep, context: DistributedContext, device: torch.device
) -> nn.Module:
    if not context.is_distributed:
        return step_module
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(step_module, device_ids=device_ids)


def _cpu_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {key: tensor.detach().cpu() for key, tensor in state.items()}


def _evaluate_at_end(config: TrainConfig, outcome: TrainingOutcome, *, progress: bool) -> TrainingOutcome:
    wanted = config.run.evaluate_at_end and config.data.validation and outcome.is_main_process
    if not wanted or outcome.last_checkpoint is None:
        return outcome
    report = evaluate_checkpoint(
        outcome.last_checkpoint,
        device=resolve_device(config.run.device, DistributedContext()),
        batch_size=config.run.eval_batch_size,
        progress=progress,
        verify_shards=config.run.verify_shards,
    )
    report.write_json(outcome.out_dir / EVALUATION_NAME)
    return dataclasses.replace(outcome, evaluation=report)


# ---- the run ---------------------------------------------------------------------------------
@dataclasses.dataclass
class _TrainingRun:
    config: TrainConfig
    context: DistributedContext
    device: torch.device
    progress: bool
    data: _TrainingData
    step_module: TrainingStep
    forward_module: nn.Module  # step_module, or its DDP wrapper
    optimisation: _Optimisation
    start_step: int
    keeper: CheckpointKeeper
    autocast_dtype: torch.dtype | None  # None: float32

    @classmethod
    def prepare(cls, config: TrainConfig, *, resume: Path | None, progress: bool) -> _TrainingRun:
        context = DistributedContext.from_environment()
        checkpoint = _checkpoint_to_resume(config, resume)
        check_inputs_exist(config, need_backbone_weights=checkpoint is None)
        _refuse_to_overwrite_a_run(config, checkpoint)
        start_process_group(context)
        device = resolve_device(config.run.device, context)
        autocast_dtype = _autocast_dtype(config, device)
        torch.set_num_threads(threads_per_process(config.run.threads, context))
        _seed_everything(config.run.seed)
        data = _build_training_data(config, checkpoint, context)
        step_module = _build_step_module(config, data.dataset, device, fresh=checkpoint is None)
        optimisation = _Optimisation.build(step_module, config, use_amp=autocast_dtype == torch.float16)
        start_step = 0 if checkpoint is None else _restore(checkpoint, step_module, optimisation, config)
        if start_step >= config.optim.max_steps:
            raise ConfigError(
                f"the checkpoint is at step {start_step}, max_steps is {config.optim.max_steps}: nothing to do "
                "(raise --max-steps to train longer)"
            )
        return cls(
            config=config,
            context=context,
            device=device,
            progress=progress,
            data=data,
            step_module=step_module,
            forward_module=_wrap_for_processes(step_module, context, device),
            optimisation=optimisation,
            start_step=start_step,
            keeper=CheckpointKeeper(Path(config.run.out_dir), keep_last=config.run.keep_last_checkpoints),
            autocast_dtype=autocast_dtype,
        )

    @property
    def model(self) -> StudentDetector:
        return self.step_module.model

    @functools.cached_property
    def _trainable(self) -> list[nn.Parameter]:
        return [parameter for parameter in self.step_module.parameters() if parameter.requires_grad]

    @property
    def use_amp(self) -> bool:
        return self.optimisation.scaler.is_enabled()

    def run(self) -> TrainingOutcome:
        run_config, max_steps = self.config.run, self.config.optim.max_steps
        images_per_step = self.config.optim.batch_size * self.context.world_size
        meter = IntervalMeans(images_per_step, self.data.selection.count)
        log = self._open_log()
        batches = self._batches()
        step_losses: list[float] = []
        last_checkpoint = None
        started = time.perf_counter()
        self.step_module.train()
        bar = self._progress_bar()
        try:
            for step in range(self.start_step + 1, max_steps + 1):
                images, targets = self._next_batch(batches)
                learning_rate = self.optimisation.optimizer.param_groups[0]["lr"]
                terms, grad_norm = self._train_step(images, targets, step)
                values = terms.as_floats()
                step_losses.append(values["loss"])
                meter.add({**values, "grad_norm": grad_norm, "learning_rate": learning_rate})
                bar.update(1)
                if step % run_config.log_every == 0 or step == max_steps:
                    means = meter.close_interval(step)
                    bar.set_postfix(short_postfix(means), refresh=False)
                    if log is not None:
                        log.write(step, means)
                refit_pending = step == max_steps and self.config.optim.embedding_refit_ridge is not None
                if (
                    self.context.is_main
                    and not refit_pending
                    and (step % run_config.checkpoint_every == 0 or step == max_steps)
                ):
                    last_checkpoint = self._save(step)
        finally:
            bar.close()
            if log is not None:
                log.close()
        seconds_per_step = (time.perf_counter() - started) / max(1, max_steps - self.start_step)
        refit = None
        ridge = self.config.optim.embedding_refit_ridge
        if self.context.is_main and self.start_step < max_steps and ridge is not None:
            # the last step's checkpoint holds the solved layer, so that a crash during the solve
            # resumes from the previous checkpoint and repeats the same steps
            refit = self._refit_embedding_head(ridge)
            last_checkpoint = self._save(max_steps)
        end_process_group(self.context)
        self.model.eval()
        return TrainingOutcome(
            out_dir=Path(run_config.out_dir),
            start_step=self.start_step,
            final_step=max_steps,
            last_checkpoint=last_checkpoint,
            step_losses=tuple(step_losses),
            seconds_per_step=seconds_per_step,
            is_main_process=self.context.is_main,
            refit=refit,
            precision=f"{self.autocast_dtype} autocast".removeprefix("torch.")
            if self.autocast_dtype is not None
            else "float32",
        )

    def _refit_embedding_head(self, ridge: float) -> RefitReport:
        options = DatasetOptions(
            input_size=self.config.model.input_size,
            mode="validation",
            verify_checksums=self.config.run.verify_shards,
        )
        # the training images only: a source's frames / sequences filters apply, as in training
        images = Subset(
            StudentDataset(list(self.config.data.train), options), self.data.selection.all_indices().tolist()
        )
        return refit_embedding_head(
            self.model,
            images,
            ridge,
            device=self.device,
            batch_size=self.config.run.eval_batch_size,
            progress=self.progress,
        )

    def _progress_bar(self) -> tqdm:
        return tqdm(
            total=self.config.optim.max_steps,
            initial=self.start_step,
            desc="train",
            unit="step",
            disable=not (self.progress and self.context.is_main),
            dynamic_ncols=True,
        )

    def _open_log(self) -> TrainingLog | None:
        """The main process writes the recipe and the log; the others write nothing."""
        if not self.context.is_main:
            return None
        out_dir = Path(self.config.run.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_recipe(out_dir / RECIPE_NAME, self.config)
        return TrainingLog(out_dir, self.start_step, self.config.run.tensorboard)

    def _batches(self) -> Iterator[tuple[Tensor, list[dict[str, Any]]]]:
        batch_size = self.config.optim.batch_size
        stream = DrawStream(
            self.data.selection,
            self.config.run.seed,
            start=self.start_step * batch_size,
            rank=self.context.rank,
            world_size=self.context.world_size,
        )
        workers = self.config.data.loader_workers
        loader = DataLoader(
            self.data.dataset,
            batch_size=batch_size,
            sampler=stream,
            collate_fn=collate,
            num_workers=workers,
            worker_init_fn=loader_worker_init if workers > 0 else None,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        return iter(loader)

    def _next_batch(
        self, batches: Iterator[tuple[Tensor, list[dict[str, Any]]]]
    ) -> tuple[Tensor, list[dict[str, Tensor]]]:
        """The next batch on the device: images (channels-last if asked) and the loss's targets."""
        images, targets = next(batches)
        images = images.to(self.device, non_blocking=True)
        if self.config.run.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss_targets = [
            {key: target[key].to(self.device, non_blocking=True) for key in LOSS_TARGET_KEYS}
            for target in targets
        ]
        return images, loss_targets

    def _train_step(
        self, images: Tensor, targets: list[dict[str, Tensor]], step: int
    ) -> tuple[LossTerms, float]:
        optimizer, scaler = self.optimisation.optimizer, self.optimisation.scaler
        optimizer.zero_grad(set_to_none=True)
        precision = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with precision:
            terms: LossTerms = self.forward_module(images, targets)
        if not torch.isfinite(terms.total.detach()) and not self.use_amp:
            raise TrainingDivergedError(
                f"loss is {float(terms.total)} at step {step} ({terms.as_floats()}); "
                "lower optim.learning_rate or optim.grad_clip_norm"
            )
        scaler.scale(terms.total).backward()
        scaler.unscale_(optimizer)
        clip = self.config.optim.grad_clip_norm
        grad_norm = float(nn.utils.clip_grad_norm_(self._trainable, clip if clip is not None else math.inf))
        scaler.step(optimizer)
        scaler.update()
        self.optimisation.scheduler.step()
        return terms, grad_norm

    def _save(self, step: int) -> Path:
        teacher_mean = self.data.teacher_mean
        dataset = self.data.dataset
        return self.keeper.save(
            TrainingCheckpoint(
                step=step,
                model_state=_cpu_state(self.model.state_dict()),
                model_config=self.config.model.to_dict(),
                optimizer_state=self.optimisation.optimizer.state_dict(),
                scheduler_state=self.optimisation.scheduler.state_dict(),
                criterion_state=dict(self.step_module.criterion.state_dict()),
                config=self.config.to_dict(),
                teacher_fingerprint=dataset.teacher_fingerprint,
                teacher_id=dataset.teacher_id,
                shard_sources=[summary.as_dict() for summary in dataset.source_summaries()],
                rng_state=capture_rng_state(),
                grad_scaler_state=self.optimisation.scaler.state_dict() if self.use_amp else None,
                # evaluation centres embeddings with this training-set mean (see student.evaluate)
                teacher_mean_embedding=torch.from_numpy(teacher_mean) if teacher_mean is not None else None,
                extra={
                    "images_per_step": self.config.optim.batch_size * self.context.world_size,
                    "world_size": self.context.world_size,
                    "train_images": self.data.selection.count,
                },
            )
        )


__all__ = ["EVALUATION_NAME", "TrainingDivergedError", "TrainingOutcome", "TrainingStep", "train"]
