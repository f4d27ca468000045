"""Importing the packages and calling the libraries leave process-wide state alone.

Each check runs in a fresh interpreter (a subprocess running ``PROBE``), which first sets
torch's and OpenCV's thread counts to 3 (a value none of our code chooses), then takes one
step (import every module; build a teacher and embed; load a student and detect; distil in
process) and reports the state after it.

What the allocator check proves: glibc's mmap threshold is dynamic but never rises above
32 MiB by itself, so a fresh 64 MiB ``malloc`` is always served by its own ``mmap`` (counted in
``mallinfo2().hblks``) unless someone raised ``M_MMAP_THRESHOLD`` -- which is what
:func:`tdt.malloc.keep_freed_memory` does (to 1 GiB, together with ``M_TRIM_THRESHOLD``, which
cannot be read back). The probe also reports whether ``keep_freed_memory`` ran at all in the
process, and a control step shows that the mmap check does see the tuning when it is applied.
It says nothing about ``mallopt`` calls by third-party libraries other than that threshold.
"""

from __future__ import annotations

import ast
import ctypes.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tdt", "teacher", "pipeline", "student", "tracker")

PROBE = r"""
import ctypes, ctypes.util, importlib, json, pkgutil, sys, tempfile, warnings
from pathlib import Path

libc = ctypes.CDLL(ctypes.util.find_library("c"))


class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


def large_block_gets_own_mapping():
    before = libc.mallinfo2().hblks
    block = libc.malloc(64 << 20)
    mapped = libc.mallinfo2().hblks == before + 1
    libc.free(block)
    return mapped


import cv2
import torch

torch.set_num_threads(3)
cv2.setNumThreads(3)


def state():
    import tdt.malloc

    return {"torch": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
            "cv2": cv2.getNumThreads(), "mmap": large_block_gets_own_mapping(),
            "malloc_tuned": tdt.malloc.applied_in_this_process()}


baseline = state()


def import_every_module():
    for package in PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            if info.name.rsplit(".", 1)[-1] != "__main__":
                importlib.import_module(info.name)


def teacher_embeds():
    import numpy as np
    from teacher import TeacherConfig, build_teacher

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        teacher = build_teacher(TeacherConfig(name="osnet_x0_25", batch_size=4), allow_random_weights=True)
    image = np.full((64, 48, 3), 127, np.uint8)
    teacher.embed_crops(image, np.array([[0, 0, 20, 40], [10, 10, 40, 60]], np.float32))


def student_loads_and_detects():
    import numpy as np
    from student import ModelConfig, build_student, load
    from student.checkpoint import TrainingCheckpoint, save_checkpoint

    config = ModelConfig(backbone="mobilenet_v2_fpn", fpn_channels=16, head_width=16, head_depth=1,
                         embedding_dim=8, embedding_head="per_location", embedding_head_width=16,
                         input_height=64, input_width=96, score_thresh=0.0)
    model = build_student(config, warn_if_random_backbone=False)
    with tempfile.TemporaryDirectory() as folder:
        path = save_checkpoint(Path(folder) / "tiny.pt", TrainingCheckpoint(
            step=0, model_state=model.state_dict(), model_config=config.to_dict()))
        detector = load(path)
    detector.detect(np.full((60, 90, 3), 100, np.uint8))


def distill_in_process():
    import cv2, numpy as np
    from pipeline.records import ImageRecord
    from pipeline.runner import ClusterConfig, DistillRequest, distill
    from teacher import TeacherConfig, build_teacher

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        teacher = build_teacher(TeacherConfig(name="osnet_x0_25", batch_size=4), allow_random_weights=True)
    with tempfile.TemporaryDirectory() as folder:
        cv2.imwrite(str(Path(folder) / "a.jpg"), np.full((64, 48, 3), 90, np.uint8))
        record = ImageRecord(image="a.jpg", width=48, height=64, boxes=[[0, 0, 20, 40]],
                             identities=[1], ignore=[False])
        request = DistillRequest(dataset_name="probe", split="all", dataset_root=Path(folder),
                                 dataset_fingerprint="probe", records=(record,), source_bytes=1,
                                 reader_stats={}, out_dir=Path(folder) / "shards",
                                 allow_random_teacher=True)
        distill(request, teacher, ClusterConfig(workers=0))


def apply_the_cli_set_up():
    from tdt.process import configure_for_cli

    configure_for_cli()


STEPS = {"import": import_every_module, "teacher": teacher_embeds, "student": student_loads_and_detects,
         "distill": distill_in_process, "cli": apply_the_cli_set_up}
PACKAGES = sys.argv[1].split(",")
after = {}
for step in sys.argv[2:]:
    STEPS[step]()
    after[step] = state()

import tdt.torch_compat

compiled_ops = None
if "torchvision" in sys.modules:
    import torchvision.extension

    compiled_ops = torchvision.extension._has_ops()
print(json.dumps({"baseline": baseline, "after": after, "python_nms": tdt.torch_compat.using_python_nms(),
                  "torchvision_compiled_ops": compiled_ops}))
"""

needs_glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or ctypes.util.find_library("c") is None,
    reason="the allocator check reads glibc's mallinfo2",
)


def probe(*steps: str) -> dict:
    """Run ``steps`` in order in a fresh interpreter; the state before and after each."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(PACKAGES), *steps],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    expected = {"torch": 3, "cv2": 3, "mmap": True, "malloc_tuned": False}
    assert report["baseline"] == {**report["baseline"], **expected}
    return report


@needs_glibc
@pytest.mark.slow
def test_imports_and_library_calls_change_no_process_state() -> None:
    """Import every module of the packages, then build a teacher and embed, load a student and
    detect, distil in process (``workers=0``): threads, allocator and the tuning flag stay put."""
    steps = ("import", "teacher", "student", "distill")
    report = probe(*steps)
    for step in steps:
        assert report["after"][step] == report["baseline"], f"after step {step!r}"
    # The one documented exception (tdt.torch_compat): the Python nms op, registered only where
    # torchvision's compiled ops cannot load.
    assert report["torchvision_compiled_ops"] is not None
    if report["python_nms"]:
        assert report["torchvision_compiled_ops"] is False


@needs_glibc
@pytest.mark.slow
def test_the_cli_set_up_is_what_the_probe_detects() -> None:
    """Control: the checks above can fail -- the explicit CLI set-up is seen by the same probe."""
    report = probe("cli")
    after = report["after"]["cli"]
    assert after["malloc_tuned"] is True
    assert after["mmap"] is False
    assert after["torch"] == report["baseline"]["torch"]


# ---- every command-line entry point opts in ---------------------------------------------------

ENTRY_PACKAGES = ("pipeline", "teacher", "student", "tracker", "demo")


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def _tree(module: str) -> ast.Module | None:
    path = REPO / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return ast.parse(candidate.read_text(encoding="utf-8"))
    return None


def _called_names(nodes: list[ast.AST]) -> set[str]:
    names = set()
    for root in nodes:
        for node in ast.walk(root):
            if isinstance(node, ast.Call):
                func = node.func
                names.add(func.id if isinstance(func, ast.Name) else getattr(func, "attr", ""))
    return names


def _reaches_set_up(module: str, nodes: list[ast.AST], depth: int = 0) -> bool:
    """Whether ``nodes`` call configure_for_cli, directly or through project functions (a few levels)."""
    called = _called_names(nodes)
    if "configure_for_cli" in called or depth > 3:
        return "configure_for_cli" in called
    tree = _tree(module)
    for node in tree.body if tree else ():
        if isinstance(node, ast.FunctionDef) and node.name in called:
            if _reaches_set_up(module, [node], depth + 1):
                return True
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = alias.asname or alias.name
                source = _tree(node.module)
                if name in called and node.module.split(".")[0] in ENTRY_PACKAGES + ("tdt",) and source:
                    functions = [
                        f for f in source.body if isinstance(f, ast.FunctionDef) and f.name == alias.name
                    ]
                    if functions and _reaches_set_up(node.module, functions, depth + 1):
                        return True
    return False


def _entry_points() -> dict[str, list[ast.AST]]:
    """Modules run as ``python -m``: the statements of their ``__main__`` guard (or of ``__main__.py``)."""
    entries = {}
    for package in ENTRY_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            if path.name == "__main__.py" and not any(
                isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body
            ):
                entries[_module_name(path)] = list(tree.body)
            for node in tree.body:
                if isinstance(node, ast.If) and ast.unparse(node.test) in (
                    "__name__ == '__main__'",
                    '__name__ == "__main__"',
                ):
                    entries[_module_name(path)] = list(node.body)
    return entries


def test_every_command_line_entry_point_opts_in_to_the_process_set_up() -> None:
    entries = _entry_points()
    assert {"pipeline.distill", "pipeline.verify", "student.train", "tracker.track", "demo.__main__"} <= set(
        entries
    )
    missing = [module for module, body in entries.items() if not _reaches_set_up(module, body)]
    assert not missing, f"entry points that never call tdt.process.configure_for_cli: {missing}"
