"""Running the demo's stages as the same shell commands a user would type.

Each stage is one ``python -m ...`` command, echoed before it runs so the demo
doubles as a tutorial. A stage whose outputs already exist is skipped, so a
second ``make demo`` (or one after an interruption) reuses the finished work:

- the generator, the distiller and the trainer are resumable themselves; the
  demo only decides between a fresh run, ``--resume`` and nothing to do;
- the comparison and the rendering leave a stamp (``.demo-stamp.json`` in their
  output folder) holding the command and the size and mtime of every input it
  read; a stage with a matching stamp is skipped.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
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


@dataclass
class StageLog:
    """Wall time of every stage that ran (or was skipped) in this invocation."""

    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "skipped": self.skipped, "total": sum(self.seconds.values())}


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
