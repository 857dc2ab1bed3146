"""The preflight job (reproduce/perlmutter/preflight.py, `nox -s preflight`): generated here and
run as Slurm would run it, against the stand-ins (tests/fixtures/standins.py): `podman-hpc`
runs the image's commands (the model build with the artifact, `vllm serve` and `nsys` as the
stand-ins), so every mode of the perlmutter profile is served from its image, the ablation's
pass is profiled, and every stage completes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from standins import install

from artifact.config.profiles import load_profile

REPO = Path(__file__).resolve().parents[2]
PREFLIGHT = REPO / "reproduce" / "perlmutter" / "preflight.py"


def generate(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PREFLIGHT), "--profile", "perlmutter", "--run-dir", str(run_dir),
         *extra],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def test_the_generated_profile_keeps_every_mode_and_image_with_a_seeded_model(tmp_path):
    result = generate(tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "expected: 13 server starts" in result.stdout and "00:20:00" in result.stdout
    pre = load_profile(tmp_path / "run" / "perlmutter-preflight.yaml")
    full = load_profile("perlmutter")
    assert pre.model.source == "seeded" and pre.model.hub_id is None
    assert pre.modes == full.modes and pre.engine.image == full.engine.image
    assert pre.engine.launcher == "podman-hpc" and pre.engine.hf_home is None
    arch = pre.model.architecture
    assert arch["num_attention_heads"] % 4 == arch["num_key_value_heads"] % 4 == 0
    assert pre.experiments.eplb_ablation.nsys
    script = (tmp_path / "run" / "preflight.sbatch").read_text()
    for directive in ("--nodes=1", "--time=00:20:00", "--gpus-per-node=4", "--constraint=gpu"):
        assert f"#SBATCH {directive}\n" in script
    assert "moe-artifact-vllm:2f13319f python -m artifact install" in script


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_the_job_script_passes_shellcheck(tmp_path):
    assert generate(tmp_path / "run").returncode == 0
    result = subprocess.run(
        ["shellcheck", str(tmp_path / "run" / "preflight.sbatch")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout


def test_the_preflight_job_runs_every_mode_from_its_image(tmp_path):
    bin_dir = tmp_path / "bin"
    for name in ("podman-hpc", "vllm", "nsys"):
        install(bin_dir, name)
    venv = tmp_path / "venv"  # the host environment reproduce/perlmutter/install.sh makes
    (venv / "bin").mkdir(parents=True)
    for python in (bin_dir / "python", venv / "bin" / "python"):  # this interpreter
        python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
        python.chmod(0o755)
    (venv / "bin" / "activate").write_text("")
    run_dir = tmp_path / "run"
    assert generate(run_dir).returncode == 0
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "SCRATCH": str(tmp_path / "scratch"),
        "MOE_ARTIFACT_VENV": str(venv),
        "MOE_ARTIFACT_RUN_DIR": str(run_dir),
        "FAKE_PODMAN_CALLS": str(tmp_path / "podman-calls"),
    }
    raw = yaml.safe_load((run_dir / "perlmutter-preflight.yaml").read_text())
    raw["engine"].update(startup_timeout_s=60, device="cpu")  # the model build: no CUDA here
    (run_dir / "perlmutter-preflight.yaml").write_text(yaml.safe_dump(raw))
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(run_dir / "preflight.sbatch")],
        capture_output=True, text=True, check=False, env=env, timeout=900,
    )  # fmt: skip
    seconds = time.monotonic() - started
    errors = [x for x in result.stderr.splitlines() if x.startswith(("error", "bench", "FAIL"))]
    assert result.returncode == 0, "\n".join(errors) + result.stderr[-3000:]
    assert "PREFLIGHT OK" in result.stderr, result.stderr[-2000:]
    # every mode served from its own image, the ablation's pass profiled
    calls = (tmp_path / "podman-calls").read_text()
    for mode, image in (
        ("baseline", "moe-artifact-vllm:2f13319f"),
        ("all2all-eplb", "moe-artifact-vllm:v0.11.0"),
    ):
        assert (run_dir / "serve" / mode / "provenance.json").is_file()
        assert image in calls
    assert '"exec", "moe-artifact-' in calls and '"nsys", "start"' in calls
    assert (run_dir / "imbalance" / "eplb.json").is_file()
    eplb_arm = run_dir / "bench" / "eplb_ablation" / "all2all-eplb"
    assert (eplb_arm / "diagnostic" / "balancedness.json").is_file()  # in its container too
    assert (run_dir / "check" / "claims.md").is_file()
    assert (run_dir / "cache").is_dir()  # the model, built "in the image" on the node
    print(f"preflight against the stand-ins: {seconds:.0f} s")


def test_submit_passes_the_account_and_refuses_without_one(tmp_path, monkeypatch):
    sbatch = tmp_path / "bin" / "sbatch"
    sbatch.parent.mkdir()
    sbatch.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/sbatch-args\n')
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{sbatch.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("MOE_ARTIFACT_SLURM_ACCOUNT", "m1234")
    assert generate(tmp_path / "run", "--submit").returncode == 0
    script = tmp_path / "run" / "preflight.sbatch"
    assert (tmp_path / "sbatch-args").read_text().split() == ["--account=m1234", str(script)]
    monkeypatch.delenv("MOE_ARTIFACT_SLURM_ACCOUNT")
    refused = generate(tmp_path / "run", "--submit")
    assert refused.returncode == 2 and "no Slurm account" in refused.stderr
    assert "Traceback" not in refused.stderr
