"""Student detector: RetinaNet + re-ID embedding head, its losses and inference.

Public API (see each module): :class:`ModelConfig`, :class:`LossConfig`,
:func:`build_student`, :class:`StudentDetector`, :class:`StudentOutputs`,
:class:`StudentCriterion`, :class:`LossTerms`, :func:`postprocess`,
:class:`Detector`, :class:`Detections`.
"""

# torchvision needs its nms op registered before it is imported (see torchvision_compat)
import torchvision_compat

torchvision_compat.import_torchvision()

from .api import load  # noqa: E402
from .config import LossConfig, ModelConfig  # noqa: E402
from .inference import Detections, Detector, InputDetections, postprocess  # noqa: E402
from .losses import LossTerms, StudentCriterion  # noqa: E402
from .model import StudentDetector, StudentOutputs, build_student  # noqa: E402

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
