"""Shared fixtures: the real data in ../shared/data (or $TDT_SHARED_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("TDT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set TDT_SHARED_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(shared_data_dir())


@pytest.fixture(scope="session")
def pets_dir(shared_data: Path) -> Path:
    return _require(shared_data / "PETS09-S2L1-half1")


@pytest.fixture(scope="session")
def mot17_mini_dir(shared_data: Path) -> Path:
    return _require(shared_data / "MOT17-mini")


@pytest.fixture(scope="session")
def osnet_x0_25_msmt17(shared_data: Path) -> Path:
    return _require(shared_data / "weights" / "osnet_x0_25_msmt17.pth")


@pytest.fixture(scope="session")
def mobilenet_v2_features(shared_data: Path) -> Path:
    return _require(shared_data / "weights" / "mobilenet_v2_imagenet_features.pt")
