"""The one way this project reads configuration: YAML -> typed, frozen dataclasses, strictly.

Every recipe, manifest and tracker setting goes through :func:`from_plain` (or the
:class:`PlainConfig` mixin that wraps it), so the rules are the same everywhere:

* an unknown key is an error that lists the known keys (a typo must never fall back
  to a default silently); a missing key takes the field's default, and a field
  without a default must be given;
* values are checked against the field's annotation: ``bool``, ``int``, ``float``
  (an integer is accepted and widened, and so is ``1e-3``, which YAML 1.1 reads as a
  string), ``str``, :class:`~pathlib.Path`, ``Literal[...]``, ``tuple[X, ...]`` /
  ``tuple[X, Y]`` (from YAML lists), ``dict[str, X]``, nested dataclasses, ``X | None``
  and unions (each option is tried in order; the error lists why each failed);
* a dataclass's own ``__post_init__`` check that raises ``ValueError`` becomes a
  :class:`ConfigError` naming where in the document it happened;
* YAML is read with ``yaml.SafeLoader`` (no Python object tags) and a key that
  appears twice in one mapping is refused, naming the file and line.

Paths and variables (:func:`expand_path`) follow one rule: ``${VAR}`` and
``${VAR:-fallback}`` are replaced by the variable's value, or the fallback when
the variable is unset or empty (no fallback: an error). A relative result is
relative to the current directory -- as a path typed at the shell would be --
except when it *starts* with a fallback, which is relative to the given
``fallback_base`` (the project root for the shipped recipes and manifests), so
``${TDT_SHARED_DATA:-../shared/data}/...`` finds the shared data from any
working directory.

The choice of a small module over a library (pydantic, dacite, omegaconf): the
configs are plain frozen dataclasses whose checks live in ``__post_init__``;
dacite does not refuse duplicate YAML keys or widen ints, pydantic would turn
every config into a model class with its own validation language, and omegaconf
has its own interpolation syntax that differs from the shell's ``${VAR:-x}``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")

# YAML 1.1 (PyYAML) reads 1e-3 as a string, as it wants a dot and a signed exponent (1.0e-3);
# a float field takes it as the number everyone means.
YAML11_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A configuration file, key or value is invalid; the message says where."""


# ---- YAML -------------------------------------------------------------------------------------


class _StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""


def _construct_mapping_without_duplicates(loader: _StrictSafeLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=True)


_StrictSafeLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_without_duplicates
)


def parse_yaml(text: str, *, source: str = "<string>") -> Any:
    """Parse YAML safely (no object tags, no duplicate keys); errors name ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from error


def load_yaml(path: str | Path) -> Any:
    """Read and parse a YAML file with :func:`parse_yaml`; a missing file is a :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read: {error}") from error
    return parse_yaml(text, source=str(path))


def load_config(cls: type[T], path: str | Path) -> T:
    """Load a YAML file into the dataclass ``cls`` (empty file: all defaults); errors name the file."""
    document = load_yaml(path)
    try:
        return from_plain(cls, {} if document is None else document, where=cls.__name__)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def apply_overrides(document: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``document`` with each ``SECTION.KEY=VALUE`` override set (VALUE read as YAML).

    A section the document leaves out is created; whether each key and value is valid is for
    :func:`from_plain` to say, with the same rules as in a file (an unknown section or key is
    refused, listing the known ones). ``model.embedding_dim=512`` sets an int,
    ``model.embedding_head=per_anchor`` a string, ``augment.flip=false`` a bool.
    """
    result = copy.deepcopy(dict(document))
    for text in overrides:
        key, separator, value_text = text.partition("=")
        parts = key.strip().split(".")
        if not separator or not all(parts):
            raise ConfigError(f"override {text!r}: expected SECTION.KEY=VALUE, e.g. model.embedding_dim=512")
        target: Any = result
        for depth, part in enumerate(parts[:-1]):
            child = target.get(part) if isinstance(target, dict) else None
            if child is None and isinstance(target, dict):
                child = target[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {text!r}: {where} is not a section")
            target = child
        target[parts[-1]] = parse_yaml(value_text, source=f"override {text!r}")
    return result


# ---- plain values <-> dataclasses -------------------------------------------------------------


def to_plain(value: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists, paths -> strings: a YAML-safe structure."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [to_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def from_plain(hint: Any, value: Any, *, where: str = "config") -> Any:
    """Convert a parsed-YAML ``value`` to the type ``hint`` strictly; errors start with ``where``."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass_from_plain(hint, value, where)
    origin = get_origin(hint)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(hint))}")
        return value
    if origin in (types.UnionType, typing.Union):
        return _union_from_plain(hint, value, where)
    if origin is tuple:
        return _tuple_from_plain(hint, value, where)
    if origin is dict:
        key_type, item_type = get_args(hint)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {
            from_plain(key_type, key, where=f"{where} key"): from_plain(
                item_type, item, where=f"{where}.{key}"
            )
            for key, item in value.items()
        }
    if hint is Any:
        return value
    return _scalar_from_plain(hint, value, where)


def _dataclass_from_plain(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(str(key) for key in value if key not in fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(fields)}")
    missing = [
        name
        for name, field in fields.items()
        if name not in value
        and field.default is dataclasses.MISSING
        and field.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    converted = {name: from_plain(hints[name], item, where=f"{where}.{name}") for name, item in value.items()}
    try:
        return cls(**converted)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error
    except ValueError as error:  # a __post_init__ check
        raise ConfigError(f"{where}: {error}") from error


def _union_from_plain(hint: Any, value: Any, where: str) -> Any:
    options = get_args(hint)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{where}: must not be null")
    reasons = []
    for option in options:
        if option is type(None):
            continue
        try:
            return from_plain(option, value, where=where)
        except ConfigError as error:
            reasons.append(str(error))
    raise ConfigError(f"{where}: {value!r} matches none of the allowed forms ({'; '.join(reasons)})")


def _tuple_from_plain(hint: Any, value: Any, where: str) -> tuple:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    item_types = get_args(hint)
    if len(item_types) == 2 and item_types[1] is Ellipsis:
        return tuple(from_plain(item_types[0], item, where=f"{where}[{i}]") for i, item in enumerate(value))
    if len(item_types) != len(value):
        raise ConfigError(f"{where}: expected {len(item_types)} values, got {len(value)}")
    return tuple(
        from_plain(item_type, item, where=f"{where}[{i}]")
        for i, (item_type, item) in enumerate(zip(item_types, value, strict=True))
    )


def _scalar_from_plain(hint: Any, value: Any, where: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str) and YAML11_EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str | Path) or str(value) == "":
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    raise ConfigError(f"{where}: unsupported config type {hint!r}")


class PlainConfig:
    """Mixin for frozen config dataclasses: ``to_dict`` / ``from_dict`` / YAML through this module.

    ``error_type`` lets a package raise its own :class:`ConfigError` subclass.
    """

    error_type: ClassVar[type[ConfigError]] = ConfigError

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-safe dict (tuples become lists, nested configs dicts)."""
        return to_plain(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """Build from a dict; missing keys take defaults, unknown keys and bad values raise."""
        try:
            return from_plain(cls, values, where=cls.__name__)
        except ConfigError as error:
            if isinstance(error, cls.error_type):
                raise
            raise cls.error_type(str(error)) from error

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        document = load_yaml(path)
        try:
            return cls.from_dict({} if document is None else document)
        except ConfigError as error:
            raise cls.error_type(f"{path}: {error}") from error


# ---- paths ------------------------------------------------------------------------------------


def expand_path(text: str, *, fallback_base: Path, where: str = "path") -> Path:
    """Expand ``${VAR}`` / ``${VAR:-fallback}`` in ``text`` and make it absolute (rule above)."""
    base = Path.cwd()

    def substitute(match: re.Match[str]) -> str:
        nonlocal base
        variable, fallback = match.group(1), match.group(2)
        value = os.environ.get(variable)
        if value:
            return value
        if fallback is None:
            raise ConfigError(f"{where} {text!r} needs ${{{variable}}}, which is not set")
        if match.start() == 0:
            base = fallback_base
        return fallback

    expanded = Path(ENV_REFERENCE.sub(substitute, text)).expanduser()
    return Path(os.path.normpath(expanded if expanded.is_absolute() else base / expanded))
