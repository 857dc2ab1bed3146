"""Fault injection against real processes: the `python -m artifact` CLI and the embedded
server with the tiny seeded model. Every process a test starts is killed at its end, also
when the test fails, so a failing test never leaves a server behind on the machine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from helpers import tiny_mixtral, tiny_sweep
from processes import Cli

REPO = Path(__file__).resolve().parents[2]


def write_tiny_profile(folder: Path) -> Path:
    """The local profile shrunk to the bench stage test's size: one mode, two units."""
    raw = yaml.safe_load((REPO / "reproduce" / "profiles" / "local.yaml").read_text())
    raw["model"].update(architecture=tiny_mixtral(max_position_embeddings=512), max_model_len=512)
    raw["engine"]["startup_timeout_s"] = 120
    raw["modes"] = {"grouped_mm": raw["modes"]["grouped_mm"]}
    raw["datasets"] = {"seed": 3, "count": 4, "prompts_per_dataset": 4}
    raw["experiments"] = {
        "eplb_ablation": raw["experiments"]["eplb_ablation"],
        "config_sweep": tiny_sweep(),
    }
    path = folder / "local.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def fault_env(tmp_path_factory) -> dict[str, str]:
    """Environment of every CLI run here: its own model cache, the config sweep only."""
    return {
        "MOE_ARTIFACT_CACHE": str(tmp_path_factory.mktemp("cache")),
        "MOE_ARTIFACT_EXPERIMENTS": "config_sweep",
    }


@pytest.fixture(scope="session")
def fault_profile(tmp_path_factory) -> Path:
    return write_tiny_profile(tmp_path_factory.mktemp("profile"))


@pytest.fixture(scope="session")
def prepared_run(tmp_path_factory, fault_profile, fault_env) -> Path:
    """A run directory with install, datasets and serve complete (bench comes next)."""
    from artifact.config.profiles import load_profile
    from artifact.core.manifest import RunDir
    from artifact.core.runner import StageContext, run_stage
    from artifact.stages import load_stage

    run = tmp_path_factory.mktemp("prepared") / "run"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in fault_env.items():
            mp.setenv(name, value)
        ctx = StageContext(profile=load_profile(fault_profile), run_dir=RunDir(run))
        for name in ("install", "datasets", "serve"):
            run_stage(load_stage(name), ctx)
    return run


@pytest.fixture
def tiny_engine(prepared_run, fault_profile):
    """The embedded engine serving the prepared run's tiny model."""
    from artifact.config.profiles import load_profile
    from artifact.core.records import ModelRecord, read_record
    from artifact.engines.base import get_engine

    model = read_record(prepared_run / "install" / "model.json", ModelRecord).model_dir
    return get_engine(load_profile(fault_profile), Path(model))


@pytest.fixture
def run_dir(prepared_run, tmp_path) -> Path:
    """A fresh copy of the prepared run directory."""
    target = tmp_path / "run"
    shutil.copytree(prepared_run, target)
    return target


@pytest.fixture
def cli(tmp_path, fault_env):
    """Start CLI runs with `cli(args...)`; all are killed (with their servers) at the end."""
    started: list[Cli] = []

    def start(*args: str | Path) -> Cli:
        run = Cli([str(a) for a in args], tmp_path, fault_env)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill_all()
