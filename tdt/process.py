"""Process-wide set-up that the command-line entry points opt in to, explicitly.

Library calls of this project (``build_teacher``, ``student.load``, ``pipeline.runner.distill``,
the tracker, ...) leave the process as they found it: the allocator, torch's and OpenCV's
thread counts. A program that owns its process asks for the set-up it wants, once, at the top
of its ``main()``:

* :func:`configure_for_cli` -- every ``python -m ...`` command of the project calls it: glibc
  keeps freed memory for the next batch (:mod:`tdt.malloc`) and, if given, torch's intra-op
  thread count is set;
* :func:`configure_worker_process` -- a process started only to run this project's tasks (a
  Dask worker of the distiller, a renderer of the synthetic world): the same, plus one OpenCV
  thread and (unless the tasks never use torch) one torch thread, because the processes, not
  threads, share out the cores.

The one exception is the torchvision compatibility shim (:mod:`tdt.torch_compat`), which
``student`` applies on import because torchvision cannot be imported without it on a torch
build its compiled ops do not match; see that module for exactly what it changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdt.malloc import keep_freed_memory


@dataclass(frozen=True)
class ProcessSetup:
    """What a ``configure_*`` call did (the CLIs may log it)."""

    keeps_freed_memory: bool  # glibc thresholds raised (False: not glibc, nothing to tune)
    torch_threads: int | None  # torch's intra-op thread count set by the call; None: left alone
    opencv_threads: int | None = None  # OpenCV's thread count set by the call; None: left alone


def configure_for_cli(*, torch_threads: int | None = None) -> ProcessSetup:
    """Set up the process of a command-line entry point: allocator and, if given, torch threads.

    Idempotent; call it at the top of ``main()``, never from library code.
    """
    if torch_threads is not None:
        if isinstance(torch_threads, bool) or not isinstance(torch_threads, int) or torch_threads < 1:
            raise ValueError(f"torch threads must be a positive integer, got {torch_threads!r}")
        import torch

        torch.set_num_threads(torch_threads)
    return ProcessSetup(keeps_freed_memory=keep_freed_memory(), torch_threads=torch_threads)


def configure_worker_process(*, torch_threads: int | None = 1) -> ProcessSetup:
    """Set up a process that exists to run this project's tasks: allocator, one torch and one cv2 thread.

    ``torch_threads=None`` leaves torch alone, unimported, for workers whose tasks never use it.
    """
    import cv2

    setup = configure_for_cli(torch_threads=torch_threads)
    cv2.setNumThreads(1)
    return ProcessSetup(
        keeps_freed_memory=setup.keeps_freed_memory, torch_threads=torch_threads, opencv_threads=1
    )
