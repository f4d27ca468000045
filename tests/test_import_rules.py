"""The layering of the packages (README "Code layout"), checked on the source without importing it.

Every ``import`` / ``from ... import`` statement counts, also those inside functions (a lazy
import is still a dependency); only imports under ``if TYPE_CHECKING:`` do not (they never run:
a type named in an annotation, not a dependency at run time). The layers, lowest first::

    tdt -> teacher -> pipeline -> student -> tracker (frame-source adapters) -> demo

A package may import the layers below it, with two narrower rules: ``student`` reads only the
shard format (``pipeline.shards``) of the pipeline, and of ``tracker`` only the frame-source
adapters (``tracker.sources``) may import ``student`` or ``teacher``. The association core
of the tracker must not pull in torch, even indirectly (checked over the import closure,
package ``__init__`` modules included).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tdt", "teacher", "pipeline", "student", "tracker", "demo")
PROJECT = frozenset(PACKAGES)

# module (or package prefix) -> the project modules it may import besides its own package.
# The most specific entry applies.
ALLOWED: dict[str, tuple[str, ...]] = {
    "tdt": (),
    "teacher": ("tdt",),
    "pipeline": ("tdt", "teacher"),
    "pipeline.shards": ("tdt",),  # the shard format the student reads: no teacher, no Dask runner
    "student": ("tdt", "teacher", "pipeline.shards"),
    "tracker": ("tdt",),
    "tracker.sources": ("tdt", "teacher", "pipeline", "student"),
    # the command-line layer: builds the teacher options it hands to the frame sources
    "tracker.cli": ("tdt", "teacher"),
    "demo": PACKAGES,
}
# Own package imports that are still too much: the shard format reads nothing else of the pipeline.
OWN_PACKAGE_LIMITS: dict[str, tuple[str, ...]] = {"pipeline.shards": ("pipeline.shards",)}

TRACKER_CORE = (
    "tracker.association",
    "tracker.matching",
    "tracker.kalman",
    "tracker.config",
    "tracker.mot_format",
    "tracker.evaluation",
    "tdt.boxes",
    "tdt.detection_ap",
)
HEAVY = ("torch", "torchvision", "torchreid", "student", "teacher")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    line: int
    target: str  # the imported module (a project module where the name resolves to one)


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


MODULES = module_files()


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, *([name] if name else [])])


def _statements(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except what is under ``if TYPE_CHECKING:``."""
    nodes, pending = [], [tree]
    while pending:
        node = pending.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))
    return nodes


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    path = MODULES[module]
    found = []
    for node in _statements(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                _resolve_relative(module, path.name == "__init__.py", node.level, node.module)
                if node.level
                else node.module
            )
            for alias in node.names:
                # `from pkg import sub` imports the module pkg.sub where there is one
                submodule = f"{base}.{alias.name}"
                found.append(Import(module, node.lineno, submodule if submodule in MODULES else base))
    return tuple(found)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _rule(table: dict[str, tuple[str, ...]], module: str) -> tuple[str, ...] | None:
    matches = [key for key in table if _within(module, key)]
    return table[max(matches, key=len)] if matches else None


def violations(module: str) -> list[str]:
    allowed = _rule(ALLOWED, module) or ()
    own_limit = _rule(OWN_PACKAGE_LIMITS, module)
    own_package = module.split(".")[0]
    wrong = []
    for imp in imports_of(module):
        top = imp.target.split(".")[0]
        if top not in PROJECT:
            continue
        if top == own_package:
            ok = own_limit is None or any(_within(imp.target, p) for p in own_limit)
        else:
            ok = any(_within(imp.target, p) for p in allowed)
        line = f"{_display(MODULES[module])}:{imp.line} imports {imp.target}"
        if not ok and line not in wrong:
            wrong.append(line)
    return sorted(wrong, key=lambda text: int(text.split(":")[1].split()[0]))


def _display(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def test_every_module_is_covered_by_a_rule() -> None:
    assert {"tdt.config", "teacher.model", "pipeline.worker", "student.data", "tracker.sources"} <= set(
        MODULES
    )
    assert all(_rule(ALLOWED, module) is not None for module in MODULES)


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_the_layers_below(package: str) -> None:
    wrong = [line for module in MODULES if _within(module, package) for line in violations(module)]
    assert not wrong, "layering broken:\n" + "\n".join(wrong)


def closure(module: str) -> dict[str, str]:
    """Every module reached from ``module`` (project modules followed, parents' __init__ included),
    mapped to the chain of imports that reaches it."""
    reached: dict[str, str] = {module: module}
    pending = [module]
    while pending:
        current = pending.pop()
        parents = [".".join(current.split(".")[:i]) for i in range(1, current.count(".") + 1)]
        targets = [(current, parent) for parent in parents] + [
            (current, i.target) for i in imports_of(current)
        ]
        for source, target in targets:
            if target in reached:
                continue
            reached[target] = f"{reached[source]} -> {target}"
            if target in MODULES:
                pending.append(target)
    return reached


@pytest.mark.parametrize("module", TRACKER_CORE)
def test_tracker_core_pulls_in_no_torch_student_or_teacher(module: str) -> None:
    assert module in MODULES, f"{module} is listed as tracker core but does not exist"
    heavy = [chain for name, chain in closure(module).items() if any(_within(name, h) for h in HEAVY)]
    assert not heavy, "\n".join(heavy)


def test_the_checker_sees_a_broken_rule(tmp_path: Path) -> None:
    """Control: a lazy import of student inside a tracker function is reported."""
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from teacher import TeacherConfig\n"
        "def f():\n    from student import load\n    import torch\n"
    )
    MODULES["tracker._probe"] = tmp_path / "_probe.py"
    MODULES["tracker._probe"].write_text(source)
    try:
        assert violations("tracker._probe") == [f"{tmp_path / '_probe.py'}:5 imports student"]
        assert "torch" in closure("tracker._probe")
    finally:
        del MODULES["tracker._probe"]
        imports_of.cache_clear()
