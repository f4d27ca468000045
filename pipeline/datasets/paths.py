"""Paths that come from annotation or manifest text must stay inside the dataset root."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

from pipeline.errors import AnnotationError


def checked_relative_path(raw: str, *, where: str, error: type[Exception] = AnnotationError) -> str:
    """Return ``raw`` as a normalised POSIX path relative to the dataset root.

    The check is lexical on purpose: symlinks the user placed inside the root are
    theirs to make; what we refuse is annotation text that points elsewhere.
    Backslashes count as separators so that a Windows-style ``..\\`` is caught too.
    """
    text = raw.strip()
    if _plainly_relative(text):
        return text
    text = text.replace("\\", "/")
    if not text:
        raise error(f"{where}: empty path")
    if text.startswith("/") or PureWindowsPath(text).drive:
        raise error(
            f"{where}: absolute path {raw!r} is not allowed; paths must be relative to the dataset root"
        )
    parts = PurePosixPath(text).parts
    if ".." in parts:
        raise error(f"{where}: path {raw!r} uses '..' and would leave the dataset root")
    if not parts:
        raise error(f"{where}: path {raw!r} names the dataset root itself, not a file")
    return PurePosixPath(*parts).as_posix()


def _plainly_relative(text: str) -> bool:
    """Fast path for the common case (tens of thousands of paths per dataset): nothing to
    normalise and nothing that could escape. Anything unusual takes the full check."""
    return (
        bool(text)
        and not text.startswith(("/", "."))
        and not text.endswith(("/", "/."))
        and not any(marker in text for marker in ("\\", ":", "..", "//", "/./"))
    )
