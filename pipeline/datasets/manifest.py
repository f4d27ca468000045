"""Dataset manifests: one YAML per dataset in ``manifests/``, named by its file stem.

Schema (unknown keys are refused, so typos fail loudly)::

    format: motchallenge | crowdhuman | jde
    description: one line
    root:
      default: ${TDT_DATA:-../data}/MOT17   # ${VAR} / ${VAR:-fallback} expanded; a relative
                                            # path is relative to the folder holding manifests/
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
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.datasets.paths import checked_relative_path
from pipeline.errors import DatasetNotFoundError, PipelineError

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
TOP_LEVEL_KEYS = frozenset(
    {"format", "description", "root", "has_identities", "options", "default_split", "splits", "source"}
)
SPLIT_KEYS = {
    "motchallenge": frozenset({"sequences", "frames", "frame_fraction"}),
    "crowdhuman": frozenset({"annotations"}),
    "jde": frozenset({"annotations"}),
}
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class DataSource:
    """Where a user gets the data and how it must be laid out (printed when it is missing)."""

    url: str
    layout: str
    instructions: str


@dataclass(frozen=True)
class SplitSpec:
    """One named split.

    motchallenge: ``sequences`` are folders (or glob patterns) relative to the root,
    ``.`` for a root that is itself a sequence; ``frames`` is an inclusive frame-number
    range and ``frame_fraction`` a [start, end) fraction of each sequence's frames.
    crowdhuman: ``annotations`` are .odgt files; jde: ``annotations`` are list files.
    """

    name: str
    sequences: tuple[str, ...] = ()
    frames: tuple[int, int] | None = None
    frame_fraction: tuple[float, float] | None = None
    annotations: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetManifest:
    name: str
    format: str
    description: str
    root_default: str
    root_env: str
    splits: dict[str, SplitSpec]
    default_split: str
    has_identities: bool
    source: DataSource
    options: dict[str, str]
    path: Path

    @property
    def base_dir(self) -> Path:
        """Relative default roots resolve here: the folder holding ``manifests/``."""
        return self.path.resolve().parent.parent

    def split(self, name: str | None = None) -> SplitSpec:
        chosen = self.default_split if name is None else name
        if chosen not in self.splits:
            raise PipelineError(
                f"dataset '{self.name}' has no split '{chosen}' (splits: {', '.join(self.splits)})"
            )
        return self.splits[chosen]

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
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML: {exc}") from exc
    return _parse_manifest(document, path)


def resolve_root(manifest: DatasetManifest, override: str | Path | None = None) -> Path:
    """The dataset root: ``override`` (--root), else $root_env, else the manifest default."""
    if override is not None and str(override) != "":
        root, origin = Path(override).expanduser(), "--root"
    elif os.environ.get(manifest.root_env):
        root, origin = Path(os.environ[manifest.root_env]).expanduser(), f"${manifest.root_env}"
    else:
        root = _expand_default_root(manifest)
        origin = f"manifest default {manifest.root_default}"
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"dataset '{manifest.name}' not found: root {root} (from {origin}) is not a "
            f"directory.\n{manifest.how_to_get()}"
        )
    return root.resolve()


def _expand_default_root(manifest: DatasetManifest) -> Path:
    def substitute(match: re.Match[str]) -> str:
        variable, fallback = match.group(1), match.group(2)
        value = os.environ.get(variable)
        if value:
            # a variable leading the path is a path the user typed: relative to their cwd
            return os.path.abspath(value) if match.start() == 0 else value
        if fallback is None:
            raise PipelineError(f"{manifest.path}: root default needs ${{{variable}}}, which is not set")
        return fallback

    root = Path(ENV_REFERENCE.sub(substitute, manifest.root_default)).expanduser()
    return Path(os.path.normpath(root if root.is_absolute() else manifest.base_dir / root))


def _parse_manifest(document: Any, path: Path) -> DatasetManifest:
    where = f"manifest {path}"
    if not isinstance(document, dict):
        raise PipelineError(f"{where}: expected a mapping at the top level")
    unknown = set(document) - TOP_LEVEL_KEYS
    if unknown:
        raise PipelineError(
            f"{where}: unknown keys {sorted(map(str, unknown))} (allowed: {sorted(TOP_LEVEL_KEYS)})"
        )
    data_format = document.get("format")
    if data_format not in FORMAT_OPTIONS:
        raise PipelineError(f"{where}: format must be one of {sorted(FORMAT_OPTIONS)}, got {data_format!r}")

    root = document.get("root")
    if not isinstance(root, dict) or set(root) != {"default", "env"}:
        raise PipelineError(f"{where}: root must be a mapping with exactly 'default' and 'env'")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(root["env"])):
        raise PipelineError(f"{where}: root.env {root['env']!r} is not an environment variable name")

    has_identities = document.get("has_identities")
    if not isinstance(has_identities, bool):
        raise PipelineError(f"{where}: has_identities must be true or false")

    options = _parse_options(document.get("options") or {}, data_format, where)
    splits = _parse_splits(document.get("splits"), data_format, where)
    default_split = document.get("default_split")
    if default_split not in splits:
        raise PipelineError(
            f"{where}: default_split {default_split!r} is not one of the splits {sorted(splits)}"
        )

    source = document.get("source")
    if not isinstance(source, dict) or set(source) != {"url", "layout", "instructions"}:
        raise PipelineError(
            f"{where}: source must be a mapping with exactly 'url', 'layout' and 'instructions'"
        )

    return DatasetManifest(
        name=path.stem,
        format=data_format,
        description=_text(document.get("description"), f"{where}: description"),
        root_default=_text(root["default"], f"{where}: root.default"),
        root_env=str(root["env"]),
        splits=splits,
        default_split=default_split,
        has_identities=has_identities,
        source=DataSource(
            url=_text(source["url"], f"{where}: source.url"),
            layout=_text(source["layout"], f"{where}: source.layout"),
            instructions=_text(source["instructions"], f"{where}: source.instructions"),
        ),
        options=options,
        path=path,
    )


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PipelineError(f"{where} must be a non-empty string")
    return value


def _parse_options(raw: Any, data_format: str, where: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise PipelineError(f"{where}: options must be a mapping")
    allowed = FORMAT_OPTIONS[data_format]
    options = dict(DEFAULT_OPTIONS[data_format])
    for key, value in raw.items():
        if key not in allowed:
            raise PipelineError(
                f"{where}: option {key!r} does not apply to format {data_format} (allowed: {sorted(allowed)})"
            )
        choices = allowed[key]
        if not isinstance(value, str) or not value or (choices is not None and value not in choices):
            expected = " or ".join(choices) if choices else "a non-empty string"
            raise PipelineError(f"{where}: option {key}={value!r} must be {expected}")
        options[key] = value
    missing = [key for key in REQUIRED_OPTIONS[data_format] if key not in options]
    if missing:
        raise PipelineError(f"{where}: format {data_format} needs options {missing}")
    if "image_dir" in options:
        options["image_dir"] = checked_relative_path(
            options["image_dir"], where=f"{where}: options.image_dir", error=PipelineError
        )
    return options


def _parse_splits(raw: Any, data_format: str, where: str) -> dict[str, SplitSpec]:
    if not isinstance(raw, dict) or not raw:
        raise PipelineError(f"{where}: splits must be a non-empty mapping of name to split spec")
    allowed = SPLIT_KEYS[data_format]
    splits = {}
    for name, spec in raw.items():
        split_where = f"{where}: splits.{name}"
        if not isinstance(spec, dict):
            raise PipelineError(f"{split_where} must be a mapping")
        unknown = set(spec) - allowed
        if unknown:
            raise PipelineError(
                f"{split_where}: keys {sorted(map(str, unknown))} do not apply to format {data_format} "
                f"(allowed: {sorted(allowed)})"
            )
        splits[str(name)] = _parse_split(str(name), spec, data_format, split_where)
    return splits


def _parse_split(name: str, spec: dict[str, Any], data_format: str, where: str) -> SplitSpec:
    if data_format != "motchallenge":
        annotations = _relative_paths(spec.get("annotations"), f"{where}.annotations", allow_root=False)
        return SplitSpec(name=name, annotations=annotations)
    sequences = _relative_paths(spec.get("sequences"), f"{where}.sequences", allow_root=True)
    frames = _pair(spec.get("frames"), f"{where}.frames", int)
    fraction = _pair(spec.get("frame_fraction"), f"{where}.frame_fraction", float)
    if frames is not None and fraction is not None:
        raise PipelineError(f"{where}: give frames or frame_fraction, not both")
    if frames is not None and not 1 <= frames[0] <= frames[1]:
        raise PipelineError(f"{where}.frames {list(frames)} must be [first, last], 1 <= first <= last")
    if fraction is not None and not 0.0 <= fraction[0] < fraction[1] <= 1.0:
        raise PipelineError(f"{where}.frame_fraction {list(fraction)} must be [start, end) in [0, 1]")
    return SplitSpec(name=name, sequences=sequences, frames=frames, frame_fraction=fraction)


def _relative_paths(raw: Any, where: str, *, allow_root: bool) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or not all(isinstance(item, str) for item in raw):
        raise PipelineError(f"{where} must be a non-empty list of paths relative to the dataset root")
    paths = []
    for item in raw:
        if allow_root and item.strip() in (".", "./"):
            paths.append(".")
        else:
            paths.append(checked_relative_path(item, where=where, error=PipelineError))
    return tuple(paths)


def _pair(raw: Any, where: str, kind: type[int] | type[float]) -> tuple[Any, Any] | None:
    if raw is None:
        return None
    allowed_types = (int,) if kind is int else (int, float)
    if not (
        isinstance(raw, list)
        and len(raw) == 2
        and all(isinstance(item, allowed_types) and not isinstance(item, bool) for item in raw)
    ):
        raise PipelineError(f"{where} must be a list of two {kind.__name__} values")
    return (kind(raw[0]), kind(raw[1]))
