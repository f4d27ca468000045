"""A shard source: one shard directory of a recipe, its mixing weight, image root and record selection.

The same type serves the recipe (``data.train`` / ``data.validation`` entries,
read by :mod:`tdt.config`), the command lines (``--shards DIR[:WEIGHT]``) and
the dataset (:class:`student.data.StudentDataset`), so a source is described
and checked in one place.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
from collections.abc import Sequence

import numpy as np

from tdt.config import ConfigError


@dataclasses.dataclass(frozen=True)
class ShardSource:
    """One shard directory and which of its records to use.

    ``weight`` is the source's share of training draws, not a per-image weight
    (see :mod:`student.data`). ``dataset_root`` overrides the image root
    recorded in the shard manifest. ``frames`` is an inclusive frame-number
    range and ``sequences`` a list of sequence names (shell-style patterns
    allowed); empty means all. ``distill_command`` is printed when the
    directory is missing. Paths are kept as given (a recipe resolves them when
    it is loaded); a path-like is stored as its string.
    """

    directory: str
    weight: float = 1.0
    dataset_root: str | None = None
    frames: tuple[int, int] | None = None
    sequences: tuple[str, ...] = ()
    distill_command: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.directory, os.PathLike):
            object.__setattr__(self, "directory", os.fspath(self.directory))
        if isinstance(self.dataset_root, os.PathLike):
            object.__setattr__(self, "dataset_root", os.fspath(self.dataset_root))
        if not self.directory:
            raise ConfigError("a shard source needs a directory")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ConfigError(f"{self.directory}: mixing weight must be a positive number, got {self.weight}")
        if self.frames is not None and not 0 <= self.frames[0] <= self.frames[1]:
            raise ConfigError(f"{self.directory}: frames must be [first, last] with 0 <= first <= last")

    def describe_selection(self) -> str:
        parts = []
        if self.frames is not None:
            parts.append(f"frames {self.frames[0]}-{self.frames[1]}")
        if self.sequences:
            parts.append(f"sequences {', '.join(self.sequences)}")
        return " and ".join(parts) if parts else "all records"

    def selection_mask(self, frames: np.ndarray, sequences: Sequence[str]) -> np.ndarray:
        """Which records (given their frame numbers and sequence names) this source selects."""
        mask = np.ones(len(frames), dtype=bool)
        if self.frames is not None:
            if np.any(frames < 0):
                raise ConfigError(
                    f"{self.directory}: records without frame numbers cannot be selected by frames "
                    f"{list(self.frames)}"
                )
            mask &= (frames >= self.frames[0]) & (frames <= self.frames[1])
        if self.sequences:
            mask &= np.array(
                [any(fnmatch.fnmatchcase(name, pattern) for pattern in self.sequences) for name in sequences],
                dtype=bool,
            )
        return mask


__all__ = ["ShardSource"]
