"""Supported re-ID teachers, where their weights come from, and the model-zoo files we know.

Every teacher is a torchreid 0.2.5 architecture built without pretrained weights
(torchreid's own ``pretrained=True`` downloads from Google Drive, which never
happens here); trained weights always come from a local file the user names.
"""

from __future__ import annotations

from dataclasses import dataclass

from teacher.errors import TeacherError

MODEL_ZOO_URL = "https://kaiyangzhou.github.io/deep-person-reid/MODEL_ZOO"
WEIGHTS_ENV_VAR = "TDT_TEACHER_WEIGHTS"
WEIGHTS_OPTION = "--teacher-weights"
TRUST_PICKLE_OPTION = "--trust-teacher-pickle"
DEFAULT_TEACHER = "osnet_x1_0"


@dataclass(frozen=True)
class TeacherSpec:
    """One supported architecture and the model-zoo file a user should download for it."""

    name: str
    zoo_weights_file: str
    description: str


_SPECS = (
    TeacherSpec("osnet_x1_0", "osnet_x1_0_msmt17.pth", "OSNet x1.0, 512-d (the paper's teacher)"),
    TeacherSpec("osnet_x0_75", "osnet_x0_75_msmt17.pth", "OSNet x0.75, 512-d"),
    TeacherSpec("osnet_x0_5", "osnet_x0_5_msmt17.pth", "OSNet x0.5, 512-d"),
    TeacherSpec("osnet_x0_25", "osnet_x0_25_msmt17.pth", "OSNet x0.25, 512-d (fastest)"),
    TeacherSpec("osnet_ain_x1_0", "osnet_ain_x1_0_msmt17.pth", "OSNet-AIN x1.0, 512-d"),
    TeacherSpec("resnet50", "resnet50_msmt17.pth", "ResNet-50, 2048-d"),
)
TEACHER_SPECS: dict[str, TeacherSpec] = {spec.name: spec for spec in _SPECS}
TEACHER_NAMES: tuple[str, ...] = tuple(TEACHER_SPECS)


@dataclass(frozen=True)
class KnownZooWeights:
    """An official torchreid model-zoo file, identified by the sha256 of its bytes."""

    file_name: str
    architecture: str


# Official model-zoo files whose bytes we have checked. Being listed here is the trust
# decision that lets such a file be unpickled even if it ever needs more than
# weights_only loading (both files below do load with weights_only=True).
KNOWN_ZOO_WEIGHTS: dict[str, KnownZooWeights] = {
    "6f57607fed9f502b9efed546108132ee715df5a5b6e6932c6269bacb47f59f99": KnownZooWeights(
        "osnet_x0_25_msmt17.pth", "osnet_x0_25"
    ),
    "c0ff09177a21417a19bc73bbf5af4eb5d2b097c2074ed35e67819ee6cd93612c": KnownZooWeights(
        "osnet_x0_25_market1501.pth", "osnet_x0_25"
    ),
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
    """One sentence telling the user which file to download and how to point at it."""
    spec = TEACHER_SPECS.get(name, TEACHER_SPECS[DEFAULT_TEACHER])
    return (
        f"For {spec.name}, download {spec.zoo_weights_file} from the torchreid model zoo "
        f"({MODEL_ZOO_URL}) and pass its path with {WEIGHTS_OPTION} or set {WEIGHTS_ENV_VAR}."
    )
