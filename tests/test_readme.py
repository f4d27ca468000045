"""Every ``python -m …`` / ``python benchmarks/…`` command in the README's bash blocks parses.

The commands themselves run in the tests of their modules and in ``make demo``; this
keeps the manual from drifting: a renamed option or module fails here. Each command
is parsed by its own argparse parser (the module runs up to ``parse_args`` and stops).
"""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
BASH_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


class _Parsed(Exception):
    """Raised right after a successful parse_args, so nothing else runs."""


def readme_commands() -> list[str]:
    commands = []
    for block in BASH_BLOCK.findall(README.read_text()):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("python "):
                commands.append(line)
    return commands


def test_readme_has_commands_to_check() -> None:
    commands = readme_commands()
    assert len(commands) >= 10
    assert any(command.startswith("python -m demo") for command in commands)


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    words = shlex.split(command)[1:]
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.chdir(REPO_ROOT)
    if words[0] == "-m":
        module, arguments = words[1], words[2:]
        monkeypatch.setattr(sys, "argv", [module, *arguments])
        run = lambda: runpy.run_module(module, run_name="__main__", alter_sys=True)  # noqa: E731
    else:
        script = Path(words[0])
        assert script.is_file(), f"README names a script that does not exist: {script}"
        monkeypatch.setattr(sys, "argv", [str(script), *words[1:]])
        run = lambda: runpy.run_path(str(script), run_name="__main__")  # noqa: E731
    try:
        run()
    except _Parsed:
        return
    except SystemExit as exit_:
        pytest.fail(f"README command does not parse (exit {exit_.code}): {command}")
    pytest.fail(f"README command never called parse_args: {command}")
