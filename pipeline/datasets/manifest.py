"""Dataset manifests: one YAML per dataset in ``manifests/``, named by its file stem.

Schema (unknown keys are refused, so typos fail loudly)::

    format: motchallenge | crowdhuman | jde
    description: one line
    root:
      default: ${TDT_DATA:-../data}/MOT17   # expanded by tdt.config.expand_path: a path that
                                            # starts with a fallback is relative to the folder
                                            # holding manifests/, any other relative path to
                                            # the current directory
      env: TDT_MOT17_ROOT                   # overrides the default; --root overrides both
    has_identities: true                    # false: every identity is read as -1
    options:                                # per format, all strings
      gt_format: mot15 | mot17 | mot20      # motchallenge (required; mot17 also for MOT16; mot20
                                            #   adds class 6 to the ignored distractor classes)
      image_dir: Images                     # crowdhuman (default Images)
      box_field: fbox | vbox | hbox         # crowdhuman (default fbox)
    default_split: train
    splits:
      <name>:                               # motchallenge:
        sequences: [train/MOT17-*-FRCNN]    #   folders or globs under the root; "." = the root
        frames: [1, 300]                    #   optional inclusive frame-number range, or
        frame_fraction: [0.0, 0.5]          #   optional [start, end) share of each sequence
      <name>:                               # crowdhuman / jde:
        annotations: [annotation_train.odgt]  # .odgt files / .train list files under the root
    source:                                 # printed when the data is missing
      url: https://...
      instructions: how to download and extract
      layout: expected files under the root

The document is read with :mod:`tdt.config` (strict YAML, duplicate keys refused) into
:class:`ManifestDocument`; the checks that span fields (options and split keys per format,
``default_split`` among the splits) are in its ``__post_init__``. Every error is a
:class:`ManifestError` naming the file.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.datasets.paths import checked_relative_path
from pipeline.errors import DatasetNotFoundError, PipelineError
from tdt.config import ConfigError, expand_path, from_plain, load_yaml

DataFormat = Literal["motchallenge", "crowdhuman", "jde"]
FORMAT_OPTIONS: dict[str, dict[str, tuple[str, ...] | None]] = {
    # option name -> allowed values (None: any non-empty string)
    "crowdhuman": {"image_dir": None, "box_field": ("fbox", "vbox", "hbox")},
    "motchallenge": {"gt_format": ("mot15", "mot17", "mot20")},
    "jde": {},
}
DEFAULT_OPTIONS: dict[str, dict[str, str]] = {
    "crowdhuman": {"image_dir": "Images", "box_field": "fbox"},
    "motchallenge": {},
    "jde": {},
}
REQUIRED_OPTIONS: dict[str, tuple[str, ...]] = {
    "crowdhuman": (),
    "motchallenge": ("gt_format",),
    "jde": (),
}
SPLIT_KEYS = {
    "motchallenge": frozenset({"sequences", "frames", "frame_fraction"}),
    "crowdhuman": frozenset({"annotations"}),
    "jde": frozenset({"annotations"}),
}
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ManifestError(PipelineError, ConfigError):
    """A dataset manifest is invalid; the message names the file and the key."""


def _non_empty(value: str, name: str) -> None:
    if not value.strip():
        raise ValueError(f"{name} must be a non-empty string")


@dataclass(frozen=True)
class DataSource:
    """Where a user gets the data and how it must be laid out (printed when it is missing)."""

    url: str
    layout: str
    instructions: str

    def __post_init__(self) -> None:
        for name in ("url", "layout", "instructions"):
            _non_empty(getattr(self, name), name)


@dataclass(frozen=True)
class RootSpec:
    """``default``: the root when neither ``--root`` nor ``$env`` is given (variables expanded)."""

    default: str
    env: str

    def __post_init__(self) -> None:
        _non_empty(self.default, "default")
        if not ENV_NAME.fullmatch(self.env):
            raise ValueError(f"env {self.env!r} is not an environment variable name")


@dataclass(frozen=True)
class SplitSpec:
    """One named split.

    motchallenge: ``sequences`` are folders (or glob patterns) relative to the root,
    ``.`` for a root that is itself a sequence; ``frames`` is an inclusive frame-number
    range and ``frame_fraction`` a [start, end) fraction of each sequence's frames.
    crowdhuman: ``annotations`` are .odgt files; jde: ``annotations`` are list files.
    ``name`` is the split's key under ``splits``, set when the manifest is read.
    """

    name: str = field(default="", init=False)
    sequences: tuple[str, ...] = ()
    frames: tuple[int, int] | None = None
    frame_fraction: tuple[float, float] | None = None
    annotations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sequences", _relative_paths(self.sequences, "sequences", allow_root=True))
        object.__setattr__(
            self, "annotations", _relative_paths(self.annotations, "annotations", allow_root=False)
        )
        frames, fraction = self.frames, self.frame_fraction
        if frames is not None and fraction is not None:
            raise ValueError("give frames or frame_fraction, not both")
        if frames is not None and not 1 <= frames[0] <= frames[1]:
            raise ValueError(f"frames {list(frames)} must be [first, last], 1 <= first <= last")
        if fraction is not None and not 0.0 <= fraction[0] < fraction[1] <= 1.0:
            raise ValueError(f"frame_fraction {list(fraction)} must be [start, end) in [0, 1]")

    def given_keys(self) -> list[str]:
        """The keys the manifest set for this split (the format decides which are allowed)."""
        given = {
            "sequences": bool(self.sequences),
            "frames": self.frames is not None,
            "frame_fraction": self.frame_fraction is not None,
            "annotations": bool(self.annotations),
        }
        return [key for key, present in given.items() if present]


def _relative_paths(paths: tuple[str, ...], name: str, *, allow_root: bool) -> tuple[str, ...]:
    """Normalised paths relative to the dataset root; ``.`` (the root itself) where allowed."""
    checked = []
    for item in paths:
        if allow_root and item.strip() in (".", "./"):
            checked.append(".")
        else:
            checked.append(checked_relative_path(item, where=name, error=ValueError))
    return tuple(checked)


@dataclass(frozen=True)
class ManifestDocument:
    """A manifest YAML as written (see the module docstring); ``options`` gain the format's defaults."""

    format: DataFormat
    description: str
    root: RootSpec
    has_identities: bool
    default_split: str
    splits: dict[str, SplitSpec]
    source: DataSource
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _non_empty(self.description, "description")
        object.__setattr__(self, "options", _checked_options(self.options, self.format))
        if not self.splits:
            raise ValueError("splits must be a non-empty mapping of name to split spec")
        named = {}
        for name, spec in self.splits.items():
            _check_split_keys(spec, self.format, f"splits.{name}")
            named[name] = copy.copy(spec)
            object.__setattr__(named[name], "name", name)
        object.__setattr__(self, "splits", named)
        if self.default_split not in self.splits:
            raise ValueError(
                f"default_split {self.default_split!r} is not one of the splits {sorted(self.splits)}"
            )


def _checked_options(given: dict[str, str], data_format: str) -> dict[str, str]:
    allowed = FORMAT_OPTIONS[data_format]
    for key, value in given.items():
        if key not in allowed:
            raise ValueError(
                f"option {key!r} does not apply to format {data_format} (allowed: {sorted(allowed)})"
            )
        choices = allowed[key]
        if not value or (choices is not None and value not in choices):
            expected = " or ".join(choices) if choices else "a non-empty string"
            raise ValueError(f"option {key}={value!r} must be {expected}")
    options = {**DEFAULT_OPTIONS[data_format], **given}
    missing = [key for key in REQUIRED_OPTIONS[data_format] if key not in options]
    if missing:
        raise ValueError(f"format {data_format} needs options {missing}")
    if "image_dir" in options:
        options["image_dir"] = checked_relative_path(
            options["image_dir"], where="options.image_dir", error=ValueError
        )
    return options


def _check_split_keys(spec: SplitSpec, data_format: str, where: str) -> None:
    allowed = SPLIT_KEYS[data_format]
    wrong = [key for key in spec.given_keys() if key not in allowed]
    if wrong:
        raise ValueError(
            f"{where}: keys {wrong} do not apply to format {data_format} (allowed: {sorted(allowed)})"
        )
    required = "sequences" if data_format == "motchallenge" else "annotations"
    if not getattr(spec, required):
        raise ValueError(f"{where}.{required} must be a non-empty list of paths relative to the dataset root")


@dataclass(frozen=True)
class DatasetManifest:
    """A loaded manifest: its document, the name it goes by (the file stem) and its file."""

    name: str
    path: Path
    document: ManifestDocument

    @property
    def format(self) -> str:
        return self.document.format

    @property
    def description(self) -> str:
        return self.document.description

    @property
    def has_identities(self) -> bool:
        return self.document.has_identities

    @property
    def options(self) -> dict[str, str]:
        return self.document.options

    @property
    def splits(self) -> dict[str, SplitSpec]:
        return self.document.splits

    @property
    def default_split(self) -> str:
        return self.document.default_split

    @property
    def source(self) -> DataSource:
        return self.document.source

    @property
    def root_default(self) -> str:
        return self.document.root.default

    @property
    def root_env(self) -> str:
        return self.document.root.env

    @property
    def base_dir(self) -> Path:
        """A root default that starts with a fallback is relative to this folder: the one holding ``manifests/``."""
        return self.path.resolve().parent.parent

    def split(self, name: str | None = None) -> SplitSpec:
        chosen = self.default_split if name is None else name
        if chosen not in self.splits:
            raise PipelineError(
                f"dataset '{self.name}' has no split '{chosen}' (splits: {', '.join(self.splits)})"
            )
        return self.splits[chosen]

    def annotation_paths(self, split: SplitSpec, root: Path, *, kind: str = "annotation file") -> list[Path]:
        """``split.annotations`` under ``root``; a missing one is a DatasetNotFoundError saying how to get it."""
        files = [root / name for name in split.annotations]
        for path in files:
            if not path.is_file():
                raise DatasetNotFoundError(
                    f"dataset '{self.name}' split '{split.name}': {kind} {path} does not exist.\n"
                    f"{self.how_to_get()}"
                )
        return files

    def how_to_get(self) -> str:
        """The text a CLI prints to tell a user how to obtain and point at this dataset."""
        layout = "\n".join("    " + line for line in self.source.layout.strip().splitlines())
        return (
            f"Get it from {self.source.url}\n"
            f"  {self.source.instructions.strip()}\n"
            f"  Expected layout under the dataset root:\n{layout}\n"
            f"  Point at it with --root <dir> or by setting {self.root_env}=<dir> "
            f"(default: {self.root_default})."
        )


def manifests_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "manifests"


def available_datasets() -> list[str]:
    return sorted(path.stem for path in manifests_dir().glob("*.yaml"))


def load_manifest(name_or_path: str | Path) -> DatasetManifest:
    """Load a built-in manifest by name (``crowdhuman``) or any manifest YAML by path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text:
        path = Path(text)
        if not path.is_file():
            raise DatasetNotFoundError(f"manifest file {path} does not exist")
    else:
        path = manifests_dir() / f"{text}.yaml"
        if not DATASET_NAME.match(text) or not path.is_file():
            raise DatasetNotFoundError(
                f"unknown dataset '{text}'; available: {', '.join(available_datasets())} "
                "(or pass the path of a manifest YAML)"
            )
    try:
        document = from_plain(ManifestDocument, load_yaml(path), where="manifest")
    except ConfigError as error:
        message = str(error)
        raise ManifestError(message if message.startswith(str(path)) else f"{path}: {message}") from error
    return DatasetManifest(name=path.stem, path=path, document=document)


def resolve_root(manifest: DatasetManifest, override: str | Path | None = None) -> Path:
    """The dataset root: ``override`` (--root), else $root_env, else the manifest default."""
    if override is not None and str(override) != "":
        root, origin = Path(override).expanduser(), "--root"
    elif os.environ.get(manifest.root_env):
        root, origin = Path(os.environ[manifest.root_env]).expanduser(), f"${manifest.root_env}"
    else:
        try:
            root = expand_path(manifest.root_default, fallback_base=manifest.base_dir, where="root.default")
        except ConfigError as error:
            raise ManifestError(f"{manifest.path}: {error}") from error
        origin = f"manifest default {manifest.root_default}"
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"dataset '{manifest.name}' not found: root {root} (from {origin}) is not a "
            f"directory.\n{manifest.how_to_get()}"
        )
    return root.resolve()
