"""The Perlmutter batch scripts: shellcheck, directives, the profile's Slurm settings, and a
dry run of submit.sh against a stand-in `sbatch` (no Slurm here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from artifact.config.profiles import load_profile
from artifact.core.runner import PIPELINE
from artifact.engines.base import ServerLimits, get_engine
from artifact.engines.vllm.engine import flag_names
from artifact.engines.vllm.surface import cli_surface

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "reproduce" / "perlmutter"
SHELL = sorted(SCRIPTS.glob("*.sh")) + sorted(SCRIPTS.glob("*.sbatch"))


def test_scripts_exist_and_are_bash():
    names = {p.name for p in SHELL}
    assert {"common.sh", "install.sh", "submit.sh", "experiment.sbatch", "finish.sbatch"} <= names
    for path in SHELL:
        assert path.read_text().startswith("#!/usr/bin/env bash\n"), path.name


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_passes_on_every_script():
    scripts = [*SHELL, *sorted((REPO / "containers").glob("*.sh"))]
    result = subprocess.run(
        ["shellcheck", "-x", *[str(p.relative_to(REPO)) for p in scripts]],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def directives(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if match := re.match(r"#SBATCH --([\w-]+)(?:=(\S+))?", line):
            out[match.group(1)] = match.group(2) or ""
    return out


def test_sbatch_directives():
    gpu = directives(SCRIPTS / "experiment.sbatch")
    assert gpu["constraint"] == "gpu" and gpu["gpus-per-node"] == "4" and gpu["nodes"] == "1"
    assert "exclusive" in gpu
    cpu = directives(SCRIPTS / "finish.sbatch")
    assert cpu["constraint"] == "cpu" and cpu["qos"] == "shared"


def test_stages_the_jobs_run_exist():
    for path in (SCRIPTS / "experiment.sbatch", SCRIPTS / "finish.sbatch"):
        match = re.search(r"for stage in ([\w ]+); do", path.read_text())
        assert match, path.name
        for stage in match.group(1).split():
            assert stage in PIPELINE, (path.name, stage)


def run_slurm_helper(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "profile_slurm.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_profile_slurm_settings():
    out = run_slurm_helper(
        "sbatch-args", "config_sweep", env={"MOE_ARTIFACT_SLURM_ACCOUNT": "m0000"}
    )
    assert out.returncode == 0, out.stderr
    args = out.stdout.split()
    assert "--account=m0000" in args and "--constraint=gpu" in args and "--qos=regular" in args
    assert "--time=06:00:00" in args and "--gpus-per-node=4" in args
    missing = run_slurm_helper("sbatch-args", "imbalance", env={"MOE_ARTIFACT_SLURM_ACCOUNT": ""})
    assert missing.returncode == 2 and "slurm.account" in missing.stderr
    out = run_slurm_helper("experiments")
    assert out.stdout.split() == ["config_sweep", "eplb_ablation", "imbalance"]


def test_every_server_the_jobs_start_uses_flags_of_its_pinned_vllm(monkeypatch):
    """Each experiment's modes at each of its limits: the argument list the engine runs."""
    monkeypatch.setenv("SCRATCH", "/scratch")
    profile = load_profile("perlmutter")
    engine = get_engine(profile, Path("/m"))
    sweep = profile.experiments.config_sweep
    points = [ServerLimits(s, sweep.fixed_max_num_batched_tokens) for s in sweep.max_num_seqs]
    points += [ServerLimits(sweep.fixed_max_num_seqs, t) for t in sweep.max_num_batched_tokens]
    plan = {"config_sweep": (sweep.modes, points)}
    for name in ("eplb_ablation", "imbalance"):
        exp = getattr(profile.experiments, name)
        plan[name] = (exp.modes, [ServerLimits(exp.max_num_seqs, exp.max_num_batched_tokens)])
    for modes, limits in plan.values():
        for mode_name in modes:
            mode = profile.modes[mode_name]
            engine.validate_mode(mode_name, mode)
            key = cli_surface().key(engine.mode_ref(mode))
            for lim in limits:
                argv = engine.command(mode, lim, 8000, log_path=Path("/runs/x/server.log"))
                inner = argv[argv.index("vllm") :]
                flags = cli_surface().builds[key].flags
                assert [f for f in flag_names(inner) if f not in flags] == []
    ablation = profile.experiments.eplb_ablation
    assert ablation is not None
    for mode_name in ablation.modes:  # both arms on one build
        assert cli_surface().key(engine.mode_ref(profile.modes[mode_name])) == "0.11.0"
    assert cli_surface().key(engine.mode_ref(profile.modes["all2all"])) == "2f13319f"


def test_submit_dry_run_with_a_stand_in_sbatch(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(
        f'#!/usr/bin/env bash\necho "$*" >> "{calls}"\necho $(( 1000 + $(wc -l < "{calls}") ))\n'
    )
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    (venv / "activate").write_text(f'export PATH="{venv}:$PATH"\n')
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SCRATCH": str(tmp_path / "scratch"),
        "MOE_ARTIFACT_VENV": str(venv.parent),
        "MOE_ARTIFACT_SLURM_ACCOUNT": "m0000",
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        ["bash", str(SCRIPTS / "submit.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1001", "1002", "1003", "1004"]
    lines = calls.read_text().splitlines()
    assert len(lines) == 4
    assert lines[0].endswith("experiment.sbatch config_sweep") and "--time=06:00:00" in lines[0]
    assert "--dependency" not in lines[0]
    assert "--dependency=afterany:1001" in lines[1] and lines[1].endswith("eplb_ablation")
    assert "--dependency=afterany:1002" in lines[2] and "--time=08:00:00" in lines[2]
    assert lines[3].endswith("finish.sbatch") and "--dependency=afterany:1003" in lines[3]
    assert all("--account=m0000" in line for line in lines)


def test_install_script_makes_the_venv_then_runs_the_install_stage(tmp_path):
    """install.sh with a stand-in venv python (pip calls recorded, the rest run for real) and
    the stand-in podman-hpc: the install stage builds, migrates and downloads."""
    from standins import install

    bin_dir = tmp_path / "bin"
    install(bin_dir, "podman-hpc")
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    pip_calls = tmp_path / "pip-calls"
    python = venv / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        f'if [[ $1 == -m && $2 == pip ]]; then echo "$*" >> "{pip_calls}"; exit 0; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SCRATCH": str(tmp_path / "scratch"),
        "MOE_ARTIFACT_VENV": str(venv.parent),
        "MOE_ARTIFACT_RUN_DIR": str(run_dir),
        "FAKE_PODMAN_STATE": str(tmp_path / "images.json"),
        "FAKE_PODMAN_CALLS": str(tmp_path / "podman-calls"),
        "HF_TOKEN": "hf_test_token_value",
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        ["bash", str(SCRIPTS / "install.sh")], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    lock = REPO / "reproduce" / "constraints" / "hpc.txt"
    assert f"-m pip install --quiet --constraint {lock} -e {REPO}[hpc] nox" in pip_calls.read_text()
    model = json.loads((run_dir / "install" / "model.json").read_text())
    assert model["model_dir"].startswith(str(tmp_path / "scratch" / "moe-artifact" / "hf"))
    podman = (tmp_path / "podman-calls").read_text()
    assert podman.count('"migrate"') == 2 and "hf_test_token_value" not in podman + result.stderr


def test_finish_job_runs_nsys_stats_in_the_image_not_a_host_module():
    text = (SCRIPTS / "finish.sbatch").read_text()
    assert "module load nsight-systems" not in text and "command -v podman-hpc" in text
