"""Exceptions and warnings of the teacher package."""

from __future__ import annotations


class TeacherError(Exception):
    """A problem the user can fix (weights file, teacher name, option); one-line message for CLIs."""


class RandomTeacherWeightsWarning(UserWarning):
    """A teacher was built without trained weights: fine for unit tests and timings, never for results."""
