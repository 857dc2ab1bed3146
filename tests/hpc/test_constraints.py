"""The constraints (lock) files: one per image and per host environment, used by every install,
each consistent with what it installs.

Offline: every lock pins each package once and satisfies the artifact's own requirements of
the extras it is for; the v0.11.0 image's lock holds vLLM 0.11.0's pins; every install line
passes its lock. With `uv` and PyPI: the image's requirements resolve, under the lock, to
exactly the lock, and vLLM alone resolves to the same torch/Triton (vLLM's own pins).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "containers"))
from lock import LOCKS, STUDY_COMMIT, compile_argv  # noqa: E402

# vLLM 0.11.0's requirements/cuda.txt pins torch==2.8.0; torch 2.8.0 pins triton==3.4.0 on
# x86_64 Linux; vLLM 0.11.0 asks for transformers>=4.56.0 and its tokenizer needs < 5.
V011 = {"vllm": "0.11.0", "torch": "2.8.0", "triton": "3.4.0"}
IMAGE_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "extra": "",
}


def pins(path: Path) -> dict[str, tuple[str, str | None]]:
    """{name: (version, marker)} of a lock file; a name pinned twice is an error unless the
    markers split it."""
    out: dict[str, tuple[str, str | None]] = {}
    for line in path.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{path.name}: {line} is not a pin"
        key = req.name.lower().replace("_", "-")
        if key in out:
            assert req.marker is not None and out[key][1] is not None, f"{path.name}: {key} twice"
            key += f" ; {req.marker}"
        out[key] = (spec.version, str(req.marker) if req.marker else None)
    return out


@pytest.mark.parametrize("name", list(LOCKS))
def test_every_lock_exists_pins_once_and_meets_the_artifacts_requirements(name):
    lock = LOCKS[name]
    path = REPO / lock.path
    pinned = pins(path)
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in lock.extras:
        wanted += project["optional-dependencies"][extra]
    env = (
        IMAGE_ENV
        if lock.python == "3.12"
        else {**IMAGE_ENV, "python_version": "3.11", "python_full_version": "3.11.7"}
    )
    for line in wanted:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        key = req.name.lower().replace("_", "-")
        assert key in pinned, f"{path.name} does not pin {key} ({line})"
        version, marker = pinned[key]
        assert marker is None or Marker(marker).evaluate(env)
        assert req.specifier.contains(version, prereleases=True), (
            f"{path.name}: {key}=={version} vs {line}"
        )


def test_the_v011_image_lock_holds_vllms_own_pins_and_transformers_4():
    pinned = pins(REPO / LOCKS["vllm-v0.11.0"].path)
    for name, version in V011.items():
        assert pinned[name][0] == version, name
    assert Version("4.56") <= Version(pinned["transformers"][0]) < Version("5")
    assert "flashinfer-python" in pinned
    # the artifact's `test` extra (triton==3.6.0) is not in an image
    assert "pytest" not in pinned and "hypothesis" not in pinned


def test_the_study_commit_lock_holds_its_own_requirement_pins():
    """Made from 2f13319f's requirements/cuda.txt (torch 2.7.1 and what must move with it)."""
    pinned = pins(REPO / LOCKS[f"vllm-{STUDY_COMMIT}"].path)
    wanted = {"torch": "2.7.1", "torchaudio": "2.7.1", "torchvision": "0.22.1"}
    wanted |= {"xformers": "0.0.31", "triton": "3.3.1", "flashinfer-python": "0.2.14.post1"}
    for name, version in wanted.items():
        assert pinned[name][0] == version, name
    # common.txt: transformers >= 4.55.2; vLLM of that time predates transformers 5
    assert Version("4.55.2") <= Version(pinned["transformers"][0]) < Version("5")
    assert "pytest" not in pinned and "vllm" not in pinned


def test_every_install_uses_its_lock():
    install = (REPO / "containers" / "install.sh").read_text()
    assert 'constraints="$SRC/containers/constraints/vllm-${VLLM_REF}.txt"' in install
    assert 'pip_c=("$VENV/bin/pip" install --constraint "$constraints")' in install
    # every pip install of the gpu variant goes through pip_c
    gpu = install.split("    gpu)", 1)[1].split(";;", 1)[0]
    # (the one other: the resolver itself, for a commit with no committed lock)
    assert re.findall(r"\"\$VENV/bin/pip\" install (?!--constraint)\S+", gpu) == [
        '"$VENV/bin/pip" install uv==0.13.9'
    ]
    assert '--constraint "$SRC/reproduce/constraints/local.txt"' in install
    host = (REPO / "reproduce" / "perlmutter" / "install.sh").read_text()
    assert '--constraint "$ARTIFACT_ROOT/reproduce/constraints/hpc.txt"' in host
    nox = (REPO / "noxfile.py").read_text()
    assert '"--constraint", str(lock)' in nox and "lock.read_bytes()" in nox


# the test extra installs uv beside the interpreter, which nox does not put on PATH
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


def resolve(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("the resolver timed out (PyPI unreachable?)")


@pytest.mark.skipif(UV is None, reason="uv is not installed (pip install uv)")
@pytest.mark.parametrize("name", ["vllm-v0.11.0", "hpc", "gpu"])
def test_the_lock_is_what_the_resolver_gives(name, tmp_path):
    """Re-resolving the inputs with the lock as constraints gives the lock itself: no conflict,
    nothing missing."""
    lock = LOCKS[name]
    inputs = tmp_path / "requirements.in"
    inputs.write_text("\n".join([*lock.requirements, f"-c {REPO / lock.path}"]) + "\n")
    out = tmp_path / "out.txt"
    result = resolve(compile_argv(str(UV), lock, inputs, out, None))
    if result.returncode != 0 and (
        "dns error" in result.stderr or "connect" in result.stderr.lower()
    ):
        pytest.skip(f"offline: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert pins(out) == {k: v for k, v in pins(REPO / lock.path).items()}


@pytest.mark.skipif(UV is None, reason="uv is not installed (pip install uv)")
def test_vllm_alone_resolves_to_the_locked_torch_and_triton(tmp_path):
    inputs = tmp_path / "vllm.in"
    inputs.write_text("vllm==0.11.0\n")
    out = tmp_path / "out.txt"
    result = resolve(
        [
            str(UV),
            "pip",
            "compile",
            str(inputs),
            "-o",
            str(out),
            "--no-header",
            "--quiet",
            "--python-version",
            "3.12",
            "--python-platform",
            "x86_64-manylinux_2_28",
        ]
    )
    if result.returncode != 0 and "dns error" in result.stderr:
        pytest.skip("offline")
    assert result.returncode == 0, result.stderr[-2000:]
    alone, locked = pins(out), pins(REPO / LOCKS["vllm-v0.11.0"].path)
    for name in ("torch", "triton"):
        assert alone[name] == locked[name] and alone[name][0] == V011[name]
