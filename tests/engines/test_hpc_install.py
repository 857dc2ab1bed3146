"""The install stage for the perlmutter profile against a stand-in `podman-hpc` (tests/
standins.py) running the real containers/build.sh: images built or pulled, migrated and
recorded, weights downloaded inside the image with the token passed by name only, resume,
images of other plugin source rebuilt."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from standins import SNAPSHOT_COMMIT, install, podman_images, set_podman_image

from artifact.config.profiles import load_profile, project_root
from artifact.core.errors import ArtifactError
from artifact.core.manifest import RunDir
from artifact.core.runner import StageContext, run_stage
from artifact.engines.vllm import hpc_install
from artifact.engines.vllm.hpc_install import PLUGIN_LABEL, PLUGIN_SOURCES, plugin_source_hash
from artifact.stages import load_stage

TOKEN = "hf_secret_value_never_shown"
HUB_ID = "mistralai/Mixtral-8x7B-v0.1"
MAIN, EPLB = "moe-artifact-vllm:2f13319f", "moe-artifact-vllm:v0.11.0"


@pytest.fixture
def podman(tmp_path, monkeypatch) -> Path:
    """The stand-in on PATH; returns the file its calls are appended to."""
    bin_dir = tmp_path / "bin"
    install(bin_dir, "podman-hpc")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PODMAN_STATE", str(tmp_path / "images.json"))
    monkeypatch.setenv("FAKE_PODMAN_CALLS", str(tmp_path / "calls"))
    monkeypatch.setenv("SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("IMAGE_PULL", raising=False)
    return tmp_path / "calls"


def calls(path: Path) -> list[list[str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def install_stage(ctx) -> str:
    return run_stage(load_stage("install"), ctx)


def all_text(run: Path, calls_file: Path) -> str:
    """Every file the stage wrote (records, logs, manifest) and every argv, as one text."""
    texts = [p.read_text(errors="replace") for p in sorted(run.rglob("*")) if p.is_file()]
    return "\n".join([*texts, calls_file.read_text()])


def test_build_migrate_download_and_resume(podman, tmp_path, monkeypatch):
    ctx = StageContext(profile=load_profile("perlmutter"), run_dir=RunDir(tmp_path / "run"))
    hf = tmp_path / "scratch" / "moe-artifact" / "hf"
    out = ctx.stage_dir("install")

    # No token: both images are built and migrated, then the gated download is refused.
    with pytest.raises(ArtifactError, match="the model is gated.*export HF_TOKEN"):
        install_stage(ctx)
    made = calls(podman)
    builds = [c for c in made if c[0] == "build"]
    assert [c[c.index("-t") + 1] for c in builds] == [MAIN, EPLB]
    assert "VLLM_REF=2f13319f" in builds[0] and "VLLM_REF=v0.11.0" in builds[1]
    assert builds[0][-1] == str(project_root())  # containers/build.sh's context
    assert ["migrate", MAIN] in made and ["migrate", EPLB] in made
    assert made[0] == ["image", "inspect", "--format", "{{.Id}}", MAIN]
    assert not any("python" in c for c in made)
    record = json.loads((out / "images" / "moe-artifact-vllm_2f13319f.json").read_text())
    assert record["how"] == "built" and record["tool"] == "podman-hpc"
    assert record["digest"].startswith("sha256:") and record["image"]["packages"]["vllm"]
    assert record["vllm_ref"] == "2f13319f"

    # With the token: the images are reused, the weights downloaded inside the main image.
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert install_stage(ctx) == "complete"
    new = calls(podman)[len(made) :]
    assert not any(c[0] in ("build", "migrate") for c in new)
    download = [c for c in new if "python" in c]
    assert download == [
        [
            "run",
            "--rm",
            "-e",
            "HF_TOKEN",
            "-e",
            f"HF_HOME={hf}",
            "-v",
            f"{hf}:{hf}",
            MAIN,
            "python",
            "-c",
            download[0][-2],
            HUB_ID,
        ]
    ]
    assert "snapshot_download" in download[0][-2]
    images = json.loads((out / "images.json").read_text())
    assert sorted(images) == [MAIN, EPLB]
    assert images[EPLB]["vllm_ref"] == "v0.11.0"
    model = json.loads((out / "model.json").read_text())
    snapshot = hf / "hub" / "models--mistralai--Mixtral-8x7B-v0.1" / "snapshots" / SNAPSHOT_COMMIT
    assert model["model_dir"] == str(snapshot) and model["commit"] == SNAPSHOT_COMMIT
    assert model["hub_id"] == HUB_ID and model["revision"] == "main"
    assert model["files"] == {
        "model-00001-of-00002.safetensors": 100,
        "model-00002-of-00002.safetensors": 101,
    }
    assert (out / "logs" / "weights.log").exists()

    # Up to date; and redone with --force everything is found and reused, nothing fetched.
    assert install_stage(ctx) == "skipped"
    before = len(calls(podman))
    ctx.force = True
    assert install_stage(ctx) == "complete"
    again = calls(podman)[before:]
    assert not any(c[0] in ("build", "pull") or "python" in c for c in again)
    assert ["migrate", MAIN] in again  # found, but no record of this run dir had migrated it
    assert json.loads((out / "model.json").read_text()) == model
    assert TOKEN not in all_text(ctx.run_dir.path, podman)


def test_pull_instead_of_build(podman, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGE_PULL", "registry.example.org/moe")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("FAKE_PULLED_LABELS", json.dumps({PLUGIN_LABEL: plugin_source_hash()}))
    ctx = StageContext(profile=load_profile("perlmutter"), run_dir=RunDir(tmp_path / "run"))
    assert install_stage(ctx) == "complete"
    made = calls(podman)
    source = "registry.example.org/moe:2f13319f"
    assert [c for c in made if c[0] != "image"][:3] == [
        ["pull", source],
        ["tag", source, MAIN],
        ["migrate", MAIN],
    ]
    assert ["run", "--rm", MAIN, "cat", "/opt/moe-artifact/image-info.json"] in made
    assert not any(c[0] == "build" for c in made)
    record = json.loads((ctx.stage_dir("install") / "images.json").read_text())[MAIN]
    assert record["how"] == f"pulled from {source}" and record["size_bytes"] == 4096
    assert TOKEN not in all_text(ctx.run_dir.path, podman)

    # A registry image of other plugin source is refused, in one line naming both hashes.
    monkeypatch.setenv("FAKE_PULLED_LABELS", json.dumps({PLUGIN_LABEL: "0" * 64}))
    ctx = StageContext(profile=load_profile("perlmutter"), run_dir=RunDir(tmp_path / "run2"))
    set_podman_image(MAIN, {PLUGIN_LABEL: "0" * 64})
    with pytest.raises(ArtifactError, match="holds plugin source 000000000000, this checkout"):
        install_stage(ctx)


def test_plugin_source_hash_covers_the_plugin_only(tmp_path):
    for source in PLUGIN_SOURCES:
        src = project_root() / source
        files = sorted(src.rglob("*.py")) if src.is_dir() else [src]
        for file in files:
            copy = tmp_path / file.relative_to(project_root())
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(file.read_bytes())
    assert plugin_source_hash(tmp_path) == plugin_source_hash()
    (tmp_path / "artifact" / "engines" / "vllm" / "other.py").write_text("x = 1\n")
    assert plugin_source_hash(tmp_path) == plugin_source_hash()
    hooks = tmp_path / "artifact" / "engines" / "vllm" / "plugin" / "hooks.py"
    hooks.write_text(hooks.read_text() + "# changed\n")
    assert plugin_source_hash(tmp_path) != plugin_source_hash()


def test_images_of_other_plugin_source_are_rebuilt(podman, tmp_path, monkeypatch):
    """inspect finds both tags, but one was built by hand (no label) and one from other
    plugin source: both are rebuilt with this checkout's label; a plugin change redoes it."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    current = plugin_source_hash()
    set_podman_image(MAIN, {})
    set_podman_image(EPLB, {PLUGIN_LABEL: "0" * 64})
    ctx = StageContext(profile=load_profile("perlmutter"), run_dir=RunDir(tmp_path / "run"))
    assert install_stage(ctx) == "complete"
    builds = [c for c in calls(podman) if c[0] == "build"]
    assert [c[c.index("-t") + 1] for c in builds] == [MAIN, EPLB]
    assert all(c[c.index("--label") + 1] == f"{PLUGIN_LABEL}={current}" for c in builds)
    assert podman_images() == {MAIN: {PLUGIN_LABEL: current}, EPLB: {PLUGIN_LABEL: current}}
    images = json.loads((ctx.stage_dir("install") / "images.json").read_text())
    assert {r["how"] for r in images.values()} == {"built"}
    assert {r["plugin_source"] for r in images.values()} == {current}

    # Forced again with the same source: found and reused.
    before = len(calls(podman))
    ctx.force = True
    assert install_stage(ctx) == "complete"
    assert not any(c[0] == "build" for c in calls(podman)[before:])

    # The plugin's source changes: the stage is no longer up to date and rebuilds both.
    ctx.force = False
    monkeypatch.setattr(hpc_install, "plugin_source_hash", lambda root=None: "1" * 64)
    before = len(calls(podman))
    assert install_stage(ctx) == "complete"
    rebuilt = [c for c in calls(podman)[before:] if c[0] == "build"]
    assert [c[c.index("-t") + 1] for c in rebuilt] == [MAIN, EPLB]
    assert podman_images()[MAIN] == {PLUGIN_LABEL: "1" * 64}
