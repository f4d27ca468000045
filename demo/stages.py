"""Running the demo's stages as the same shell commands a user would type.

Each stage is one ``python -m ...`` command, echoed before it runs so the demo
doubles as a tutorial. A stage whose outputs already exist is skipped, so a
second ``make demo`` (or one after an interruption) reuses the finished work:

- the generator, the distiller and the trainer are resumable themselves; the
  demo only decides between a fresh run, ``--resume`` and nothing to do;
- the comparison and the rendering leave a stamp (``.demo-stamp.json`` in their
  output folder) holding the command and the size and mtime of every input it
  read; a stage with a matching stamp is skipped.

Two trainings that both have work to do run side by side (:class:`SideBySide`),
each on half the threads: two one-thread trainings on two cores finish sooner
than the same two one after the other on two threads each, because a small
model's step does not use two threads fully. Their output goes to log files and
the demo draws one progress bar per training from each run's ``train_log.csv``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STAMP_NAME = ".demo-stamp.json"


class StageFailed(RuntimeError):
    """A stage's command exited non-zero; the message names the stage and the command."""

    def __init__(self, stage: str, command: Sequence[str], returncode: int) -> None:
        self.returncode = returncode
        super().__init__(
            f"stage '{stage}' failed (exit status {returncode}): {shell_line(command)}\n"
            "fix what its message says and run the demo again: finished stages are reused"
        )


@dataclass(frozen=True)
class Stage:
    """One step of the chain: a command, and how to tell it already ran."""

    name: str
    command: tuple[str, ...]
    # Inputs whose change must re-run a stamped stage (checkpoints, weights).
    stamp_inputs: tuple[Path, ...] = ()
    # Folder holding the stamp; None for stages that are resumable on their own.
    stamp_dir: Path | None = None
    skip_reason: str | None = None
    # For a training run side by side: the run's train_log.csv and its last step, read to
    # draw its progress bar while its own output goes to a log file.
    progress_log: Path | None = None
    progress_total: int = 0


@dataclass(frozen=True)
class SideBySide:
    """Stages started together, each in its own process, their output in ``log_dir``."""

    stages: tuple[Stage, ...]
    log_dir: Path


@dataclass
class StageLog:
    """Wall time of every stage that ran (or was skipped) in this invocation; stages run side
    by side each count from the group's start to their own end."""

    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        # No sum of the stages' seconds: stages run side by side overlap in time.
        return {"seconds": self.seconds, "skipped": self.skipped}


def shell_line(command: Sequence[str]) -> str:
    """The command as one would type it, with ``python`` for this interpreter."""
    shown = ["python" if part == sys.executable else part for part in command]
    return shlex.join(shown)


def python_module(module: str, *arguments: object) -> tuple[str, ...]:
    return (sys.executable, "-m", module, *(str(argument) for argument in arguments))


def _stamp_payload(stage: Stage) -> dict:
    inputs = {}
    for path in stage.stamp_inputs:
        stat = path.stat()
        inputs[str(path)] = [stat.st_size, stat.st_mtime_ns]
    return {"command": shell_line(stage.command), "inputs": inputs}


def stamp_matches(stage: Stage) -> bool:
    if stage.stamp_dir is None:
        return False
    stamp = stage.stamp_dir / STAMP_NAME
    if not stamp.is_file() or not all(path.exists() for path in stage.stamp_inputs):
        return False
    try:
        recorded = json.loads(stamp.read_text())
    except json.JSONDecodeError:
        return False
    return recorded == _stamp_payload(stage)


def write_stamp(stage: Stage) -> None:
    if stage.stamp_dir is None:
        return
    stage.stamp_dir.mkdir(parents=True, exist_ok=True)
    temporary = stage.stamp_dir / (STAMP_NAME + ".tmp")
    temporary.write_text(json.dumps(_stamp_payload(stage), indent=2) + "\n")
    os.replace(temporary, stage.stamp_dir / STAMP_NAME)


def run_stage(stage: Stage, log: StageLog, *, environment: dict[str, str] | None = None) -> None:
    """Run ``stage`` unless it is already done; raise StageFailed if its command fails."""
    print(f"\n=== {stage.name}", flush=True)
    if stage.skip_reason is not None or stamp_matches(stage):
        print(f"    done already ({stage.skip_reason or 'same command and inputs as the last run'})")
        print(f"    $ {shell_line(stage.command)}", flush=True)
        log.skipped.append(stage.name)
        log.seconds[stage.name] = 0.0
        return
    print(f"$ {shell_line(stage.command)}", flush=True)
    started = time.perf_counter()
    completed = subprocess.run(stage.command, env=environment, check=False)
    log.seconds[stage.name] = round(time.perf_counter() - started, 1)
    if completed.returncode != 0:
        raise StageFailed(stage.name, stage.command, completed.returncode)
    write_stamp(stage)
    print(f"    ({log.seconds[stage.name]:.0f} s)", flush=True)


def output_log(group: SideBySide, stage: Stage) -> Path:
    """Where a side-by-side stage's own output (its progress bar, warnings, errors) goes."""
    if stage.progress_log is not None:
        return group.log_dir / f"{stage.progress_log.parent.name}.log"
    return group.log_dir / (re.sub(r"[^A-Za-z0-9]+", "-", stage.name).strip("-") + ".log")


def logged_step(train_log: Path | None) -> int:
    """The last step a training wrote to its ``train_log.csv`` (0 before its first row)."""
    if train_log is None or not train_log.is_file():
        return 0
    lines = train_log.read_text(encoding="utf-8").splitlines()
    for line in reversed(lines[1:]):
        first = line.split(",", 1)[0]
        if first.isdigit():
            return int(first)
    return 0


def run_side_by_side(group: SideBySide, log: StageLog, *, poll_seconds: float = 1.0) -> None:
    """Run every stage of ``group`` at once; raise StageFailed naming the first that fails.

    A failure stops the others (a training resumes from its last checkpoint on the next run)
    and prints the end of the failed stage's log.
    """
    from tqdm import tqdm

    group.log_dir.mkdir(parents=True, exist_ok=True)
    for stage in group.stages:
        print(f"\n=== {stage.name}", flush=True)
        print(f"$ {shell_line(stage.command)}", flush=True)
        print(f"    (side by side; its output goes to {output_log(group, stage)})", flush=True)
    print(flush=True)
    started = time.perf_counter()
    running: dict[str, subprocess.Popen] = {}
    bars: dict[str, tqdm] = {}
    handles = []
    try:
        for position, stage in enumerate(group.stages):
            handle = open(output_log(group, stage), "w", encoding="utf-8")  # noqa: SIM115 (closed below)
            handles.append(handle)
            running[stage.name] = subprocess.Popen(stage.command, stdout=handle, stderr=subprocess.STDOUT)
            bars[stage.name] = tqdm(
                total=stage.progress_total or None,
                desc=stage.name.split(" (")[0],
                unit="step",
                position=position,
                dynamic_ncols=True,
            )
        pending = {stage.name: stage for stage in group.stages}
        while pending:
            time.sleep(poll_seconds)
            for name, stage in list(pending.items()):
                bar = bars[name]
                bar.update(max(0, logged_step(stage.progress_log) - bar.n))
                returncode = running[name].poll()
                if returncode is None:
                    continue
                del pending[name]
                log.seconds[name] = round(time.perf_counter() - started, 1)
                if returncode != 0:
                    _stop(running)
                    for each in bars.values():
                        each.close()
                    _print_tail(output_log(group, stage))
                    raise StageFailed(name, stage.command, returncode)
    finally:
        _stop(running)
        for bar in bars.values():
            bar.close()
        for handle in handles:
            handle.close()
    for stage in group.stages:
        write_stamp(stage)
        print(f"    {stage.name}: done ({log.seconds[stage.name]:.0f} s)", flush=True)
        for line in _closing_lines(output_log(group, stage)):
            print(f"      {line}", flush=True)


EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def run_chain(steps: Iterable[Stage | SideBySide], log: StageLog) -> int:
    """Run every step in turn: 0, or the exit status after saying why the chain stopped
    (a failed stage, or Ctrl-C: running it again resumes where it stopped)."""
    try:
        for step in steps:
            if isinstance(step, SideBySide):
                run_side_by_side(step, log)
            else:
                run_stage(step, log)
    except StageFailed as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume where it stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


# What a finished training or evaluation says about itself on its last lines.
CLOSING_PREFIXES = ("trained steps", "solved the embedding", "AP@")


def _closing_lines(path: Path) -> list[str]:
    return [line for line in _log_lines(path) if line.startswith(CLOSING_PREFIXES)]


def _log_lines(path: Path) -> list[str]:
    """The log's lines as a terminal shows them: carriage-return progress updates split apart."""
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    return text.splitlines()


def _stop(running: dict[str, subprocess.Popen]) -> None:
    for process in running.values():
        if process.poll() is None:
            process.terminate()
    for process in running.values():
        process.wait()


def _print_tail(path: Path, lines: int = 30) -> None:
    tail = [line for line in _log_lines(path) if line.strip()][-lines:]
    print(f"\n--- last lines of {path}:", file=sys.stderr)
    print("\n".join(tail), file=sys.stderr, flush=True)
