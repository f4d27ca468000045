"""What a teacher is made of: architecture, weights file, device, batching and input normalisation."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tdt.imagenet import IMAGENET_MEAN_RGB as IMAGENET_MEAN
from tdt.imagenet import IMAGENET_STD_RGB as IMAGENET_STD
from teacher.errors import TeacherError
from teacher.registry import DEFAULT_TEACHER, WEIGHTS_ENV_VAR, teacher_spec

REID_INPUT_SIZE = (256, 128)  # height, width


@dataclass(frozen=True)
class TeacherConfig:
    """A teacher's build settings. Hashable, picklable (Dask workers rebuild teachers from it).

    ``weights`` may be given as a str; it is stored as a Path.
    ``trust_pickle`` allows unpickling a weights file that weights_only loading refuses
    (see the ``teacher`` package docstring); it is never implied.
    """

    name: str = DEFAULT_TEACHER
    weights: Path | None = None
    device: str = "cpu"
    batch_size: int = 64
    input_size: tuple[int, int] = REID_INPUT_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        teacher_spec(self.name)
        if self.weights is not None and not isinstance(self.weights, Path):
            object.__setattr__(self, "weights", Path(self.weights))
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise TeacherError(f"teacher batch size must be a positive integer, got {self.batch_size!r}")
        if len(self.input_size) != 2 or not all(isinstance(v, int) and v > 0 for v in self.input_size):
            raise TeacherError(f"teacher input size must be (height, width) > 0, got {self.input_size!r}")
        object.__setattr__(self, "input_size", tuple(self.input_size))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise TeacherError(f"teacher mean/std must be 3 values, std > 0; got {self.mean}, {self.std}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @classmethod
    def from_env_and_args(
        cls,
        *,
        name: str = DEFAULT_TEACHER,
        weights: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        trust_pickle: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> TeacherConfig:
        """Config from CLI-style values; ``weights`` falls back to ``$TDT_TEACHER_WEIGHTS``.

        An explicit ``weights`` always wins over the environment; an empty variable counts as unset.
        """
        env = os.environ if environ is None else environ
        chosen = weights if weights not in (None, "") else env.get(WEIGHTS_ENV_VAR) or None
        return cls(
            name=name,
            weights=None if chosen is None else Path(chosen).expanduser(),
            device=device,
            batch_size=batch_size,
            trust_pickle=trust_pickle,
        )
