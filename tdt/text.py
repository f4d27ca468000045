"""Text helpers shared by the command-line entry points."""

from __future__ import annotations


def one_line(message: str) -> str:
    """``message`` with every run of whitespace (newlines included) collapsed to one space.

    Errors that end a command are printed this way so that each is a single line of stderr.
    """
    return " ".join(message.split())


__all__ = ["one_line"]
