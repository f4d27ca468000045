"""Errors a user can act on: the CLIs print them in one line and exit with code 2."""

from __future__ import annotations


class PipelineError(Exception):
    """A problem with the user's input or set-up (not a bug): shown without a traceback."""


class DatasetNotFoundError(PipelineError):
    """Unknown dataset name, or its root is missing: says where to get it."""


class AnnotationError(PipelineError):
    """A malformed annotation file: names the file and, where known, the line."""


class MissingImagesError(PipelineError):
    """Images referenced by annotations are absent: lists the first few and the count."""


class EmptyDatasetError(PipelineError):
    """A dataset or split selected no images."""
