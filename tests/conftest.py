"""Shared fixtures. Compatibility tests read $MOE_ARTIFACT_STUDY_DATA and skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from artifact.study import STUDY_ENV

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def study_data() -> Path:
    """The original study's raw data folder, or skip with the reason."""
    value = os.environ.get(STUDY_ENV)
    if not value:
        pytest.skip(f"{STUDY_ENV} is not set: no original study data to compare against")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"{STUDY_ENV}={value} is not a directory")
    return path


@pytest.fixture
def local_profile_raw() -> dict:
    return yaml.safe_load((REPO / "reproduce" / "profiles" / "local.yaml").read_text())


@pytest.fixture
def write_profile(tmp_path, local_profile_raw):
    """Write a variant of the local profile (a dict patch) and return its path."""

    def _write(patch: dict | None = None, name: str = "local") -> Path:
        raw = dict(local_profile_raw)
        raw["name"] = name
        for key, value in (patch or {}).items():
            raw[key] = value
        path = tmp_path / "profiles" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(raw))
        return path

    return _write


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch) -> Path:
    """The perlmutter profile, launcher bare, against the stand-in `vllm`
    (tests/fixtures/standins.py) on PATH; returns the profile's path."""
    from standins import install

    bin_dir = tmp_path / "bin"
    install(bin_dir, "vllm")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    raw = yaml.safe_load((REPO / "reproduce" / "profiles" / "perlmutter.yaml").read_text())
    raw["engine"].update(launcher="bare", startup_timeout_s=30)
    raw["engine"].pop("hf_home")
    for mode in raw["modes"].values():
        mode.pop("image", None)
    path = tmp_path / "profiles" / "perlmutter.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path
