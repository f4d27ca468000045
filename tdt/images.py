"""Reading an image file, refusing truncated ones.

libjpeg decodes a JPEG cut short without an error: the missing part of the image
comes out flat grey and the only trace is a "Premature end of JPEG file" warning
printed on stderr, which a program cannot see. Boxes and embeddings computed on
such an image are silently wrong, so every image the project decodes (teacher crops,
student training images, tracker frames) goes through :func:`read_image`, which
first checks that the file is complete:

- JPEG: an end-of-image marker (FF D9) must follow the last start-of-scan marker
  (FF DA). Inside entropy-coded data a FF byte is always followed by 00 or a restart
  marker, so neither pair can occur there; bytes after the end-of-image marker
  (camera trailers, padding) are allowed.
- PNG: the IEND chunk must be present.

Only the end of the file is read for the check: its last 4 KiB, and the last
:data:`TAIL_BYTES` when those do not settle it.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

JPEG_SIGNATURE = b"\xff\xd8"
JPEG_END_OF_IMAGE = b"\xff\xd9"
JPEG_START_OF_SCAN = b"\xff\xda"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END_CHUNK = b"IEND"
QUICK_TAIL_BYTES = 4 * 1024
TAIL_BYTES = 64 * 1024


class ImageFileError(ValueError):
    """An image file that cannot be used: unreadable, truncated or not an image. Names the file."""


def truncation_problem(path: Path | str) -> str | None:
    """Why the JPEG or PNG file at ``path`` is incomplete, or None (complete, or another format)."""
    with open(path, "rb") as stream:
        head = stream.read(len(PNG_SIGNATURE))
        size = stream.seek(0, os.SEEK_END)
        # Most files end with their end marker: a short read settles them; only the
        # others (trailers, or truncation) get the longer look.
        for window in (QUICK_TAIL_BYTES, TAIL_BYTES):
            stream.seek(max(0, size - window))
            problem = _end_marker_problem(head, stream.read())
            if problem is None or window >= size:
                break
    return problem


def _end_marker_problem(head: bytes, tail: bytes) -> str | None:
    if head.startswith(JPEG_SIGNATURE):
        if tail.rfind(JPEG_END_OF_IMAGE) <= tail.rfind(JPEG_START_OF_SCAN):
            return "truncated JPEG (no end-of-image marker after the image data)"
    elif head == PNG_SIGNATURE and PNG_END_CHUNK not in tail:
        return "truncated PNG (no IEND chunk)"
    return None


def read_image(path: Path | str, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """``cv2.imread(path, flags)`` of a complete image file; :class:`ImageFileError` otherwise."""
    image = cv2.imread(str(path), flags)
    if image is None:
        raise ImageFileError(f"{path}: cannot decode image (corrupt or not an image)")
    try:
        problem = truncation_problem(path)
    except OSError as error:
        raise ImageFileError(f"{path}: cannot read the image file ({error.strerror or error})") from error
    if problem is not None:
        raise ImageFileError(f"{path}: {problem}")
    return image


__all__ = ["ImageFileError", "read_image", "truncation_problem"]
