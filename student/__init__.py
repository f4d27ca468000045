"""Student detector: RetinaNet or CenterNet (``model.family``) + re-ID embedding head, its losses and inference.

Public API (see each module): :class:`ModelConfig`, :class:`LossConfig`,
:func:`build_student`, :class:`StudentDetector`, :class:`StudentOutputs`,
:class:`StudentCriterion`, :class:`LossTerms`, :func:`postprocess`,
:class:`Detector`, :class:`Detections`.
"""

# torchvision can only be imported through tdt.torch_compat (see its docstring)
from tdt.torch_compat import import_torchvision

import_torchvision()

from .api import load  # noqa: E402
from .config import LossConfig, ModelConfig  # noqa: E402
from .families import build_student  # noqa: E402
from .inference import Detections, Detector, InputDetections, postprocess  # noqa: E402
from .losses import LossTerms, StudentCriterion  # noqa: E402
from .model import StudentDetector, StudentOutputs  # noqa: E402

__all__ = [
    "Detections",
    "Detector",
    "InputDetections",
    "LossConfig",
    "LossTerms",
    "ModelConfig",
    "StudentCriterion",
    "StudentDetector",
    "StudentOutputs",
    "build_student",
    "load",
    "postprocess",
]
