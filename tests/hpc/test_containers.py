"""The container definitions: the Containerfile and the Apptainer definition are generated
from one spec and run the same install script the same way; the scripts pass shellcheck.

Building the images is `nox -s container-smoke` (CPU variant, here) and
reproduce/perlmutter/install.sh (GPU variants, on Perlmutter), not a unit test.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = REPO / "containers"


def test_generated_files_are_current():
    result = subprocess.run(
        [sys.executable, str(CONTAINERS / "render.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def containerfile_install() -> tuple[str, dict[str, str]]:
    text = (CONTAINERS / "Containerfile").read_text()
    run = re.search(r"^RUN (.*)$", text, re.M).group(1)
    args = dict(re.findall(r"^ARG (\w+)=(.*)$", text, re.M))
    return run, args


def apptainer_install() -> tuple[str, dict[str, str]]:
    text = (CONTAINERS / "moe-artifact.def").read_text()
    post = text.split("%post\n", 1)[1].split("\n\n", 1)[0]
    run = next(line.strip() for line in post.splitlines() if "install.sh" in line)
    block = text.split("%arguments\n", 1)[1].split("\n\n", 1)[0]
    args = dict(line.strip().split("=", 1) for line in block.splitlines())
    return run, args


def test_both_definitions_install_the_same_things():
    c_run, c_args = containerfile_install()
    a_run, a_args = apptainer_install()
    # the same script, the same variables, in the same order
    c_vars = re.findall(r'(\w+)="\$\{(\w+)\}"', c_run)
    a_vars = re.findall(r'(\w+)="\{\{ (\w+) \}\}"', a_run)
    assert c_vars == a_vars and all(k == v for k, v in c_vars)
    assert c_run.split('" ')[-1] == a_run.split('" ')[-1]
    assert c_run.endswith("bash /opt/moe-artifact/src/containers/install.sh")
    # the same defaults (Apptainer's docker bootstrap drops the registry prefix)
    assert c_args.pop("BASE_IMAGE").removeprefix("docker.io/") == a_args.pop("BASE_IMAGE")
    assert c_args == a_args
    assert c_args["VLLM_REF"] == "2f13319f47eb9a78b471c5ced0fcf90862cd16a2"
    # every variable the install script reads is passed by both
    script = (CONTAINERS / "install.sh").read_text()
    for name in ("VARIANT", "VLLM_REF", "NSYS_PACKAGE", "EXTRA_CA", "WHEELS"):
        assert f"${{{name}" in script or f"${name}" in script
        assert name in dict(c_vars)


def test_install_script_pins_vllm_and_installs_the_plugin_and_nsys():
    script = (CONTAINERS / "install.sh").read_text()
    assert "VLLM_USE_PRECOMPILED=1" in script and "checkout --detach" in script
    assert '"vllm[flashinfer]==${VLLM_REF#v}"' in script  # tags: the release wheel
    assert "[flashinfer]" in script and "NSYS_PACKAGE" in script
    assert '"${pip_c[@]}" -e "${SRC}[hpc]"' in script  # the artifact and its plugin
    assert "image-info.json" in script and "--selftest /opt/moe-artifact/selftest.json" in script


def test_image_info_records_versions(tmp_path):
    out = tmp_path / "info.json"
    subprocess.run(
        [
            sys.executable,
            str(CONTAINERS / "image_info.py"),
            "--variant",
            "cpu",
            "--vllm-ref",
            "x",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    info = json.loads(out.read_text())
    assert info["variant"] == "cpu" and info["vllm_ref"] is None
    assert info["packages"]["numpy"] and "vllm" in info["packages"]
    # the build-time self-test's result rides along into install/images.json
    selftest = tmp_path / "selftest.json"
    selftest.write_text(json.dumps({"build": {"vllm": "0.11.0"}, "failures": []}))
    subprocess.run(
        [sys.executable, str(CONTAINERS / "image_info.py"), "--variant", "gpu",
         "--vllm-ref", "v0.11.0", "--selftest", str(selftest), "--out", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    assert json.loads(out.read_text())["selftest"]["build"] == {"vllm": "0.11.0"}


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_container_scripts_pass_shellcheck():
    scripts = sorted(str(p) for p in CONTAINERS.glob("*.sh"))
    result = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
