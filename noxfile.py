"""Nox sessions: one per pipeline stage, `reproduce` (all of them), `tests` and `lint`.

Every session is a thin wrapper over `python -m artifact`; arguments after `--` go to the CLI,
e.g. `nox -s bench -- --profile local --force`. All stage sessions share one environment
(`.nox/artifact`, or `.nox/artifact-hpc` for the perlmutter profile, whose host side needs no
torch), created on first use and reinstalled only when pyproject.toml changes.

Inside a container, run nox with `--no-venv`: the sessions then use the interpreter that runs
nox, which must have the artifact installed (`pip install -e .[local,test]`).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PIPELINE = ("install", "datasets", "serve", "bench", "imbalance", "plots", "check")

nox.options.sessions = ["reproduce"]
nox.options.reuse_venv = "yes"


def _passthrough() -> bool:
    """True when nox was asked to run without virtualenvs (`--no-venv` or backend none)."""
    argv = sys.argv[1:]
    if "--no-venv" in argv:
        return True
    for flag in ("--force-venv-backend", "-fb", "--default-venv-backend", "-db"):
        if (
            flag in argv
            and argv.index(flag) + 1 < len(argv)
            and argv[argv.index(flag) + 1] == "none"
        ):
            return True
    return False


def _profile(posargs: list[str]) -> str:
    if "--profile" in posargs and posargs.index("--profile") + 1 < len(posargs):
        return posargs[posargs.index("--profile") + 1]
    for arg in posargs:
        if arg.startswith("--profile="):
            return arg.split("=", 1)[1]
    return "perlmutter" if os.environ.get("NERSC_HOST") == "perlmutter" else "local"


def _python(session: nox.Session, extras: str) -> str:
    """The interpreter of the shared environment, created or updated as needed."""
    if _passthrough():
        return sys.executable
    env_dir = ROOT / ".nox" / ("artifact-hpc" if "hpc" in extras else "artifact")
    python = env_dir / "bin" / "python"
    stamp = env_dir / ".installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(env_dir), external=True)
    if not stamp.exists() or stamp.read_text() != want:
        session.run(
            str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip", external=True
        )
        session.run(
            str(python), "-m", "pip", "install", "--quiet", "-e", f".[{extras}]", external=True
        )
        stamp.write_text(want)
    return str(python)


def _extras(posargs: list[str]) -> str:
    return "hpc,test,lint" if _profile(posargs) == "perlmutter" else "local,test,lint"


def _stage_exists(name: str) -> bool:
    return (ROOT / "artifact" / "stages" / f"{name}.py").exists()


def _run_cli(session: nox.Session, *command: str) -> None:
    python = _python(session, _extras(session.posargs))
    session.run(python, "-m", "artifact", *command, *session.posargs, external=True)


def _stage_session(name: str, doc: str):
    @nox.session(name=name, venv_backend="none", default=False)
    def stage(session: nox.Session) -> None:
        if not _stage_exists(name):
            session.skip(f"stage '{name}' is not built yet")
        _run_cli(session, name)

    stage.__doc__ = doc
    return stage


install = _stage_session(
    "install", "Prepare the engine: seeded model + tokenizer (local) or image + weights (HPC)."
)
datasets = _stage_session(
    "datasets", "Generate the workload datasets and their predicted imbalance scores."
)
serve = _stage_session(
    "serve", "Start each mode's server once, check its health and record its provenance."
)
bench = _stage_session(
    "bench", "Run the config sweep and imbalance experiments against real servers."
)
imbalance = _stage_session(
    "imbalance", "Turn routing logs into imbalance metrics and correlate them with performance."
)
plots = _stage_session("plots", "Regenerate every figure and table, and report.md/report.html.")
check = _stage_session("check", "Judge every claim against the expected results (exit 1 on FAIL).")


@nox.session(venv_backend="none")
def reproduce(session: nox.Session) -> None:
    """Run every stage in order on the profile (default: local), skipping up-to-date ones."""
    _run_cli(session, "reproduce")


@nox.session(venv_backend="none", default=False)
def tests(session: nox.Session) -> None:
    """Run the test suite (compatibility tests read $MOE_ARTIFACT_STUDY_DATA when set)."""
    python = _python(session, "local,test,lint")
    session.run(python, "-m", "pytest", *session.posargs, external=True)


@nox.session(venv_backend="none", default=False)
def lint(session: nox.Session) -> None:
    """Run ruff (lint and format check) over the package, tests and noxfile."""
    python = _python(session, "local,test,lint")
    session.run(python, "-m", "ruff", "check", ".", external=True)
    session.run(python, "-m", "ruff", "format", "--check", ".", external=True)
