"""The install stage for hub models served by vLLM (the perlmutter profile): images, weights.

Images (launcher podman-hpc): every image the profile's modes use (engine.image, any
mode.image), each with the vLLM ref of the modes that use it. An image is one resumable
unit, done when `install/images/<tag>.json` exists and `podman-hpc image inspect` still finds
it holding this checkout's plugin source. An image is labelled at build with the hash of the
plugin's source files (PLUGIN_SOURCES, label `moe-artifact.plugin-source`); one whose label
differs (built from other source, or by hand without the label) is stale. Otherwise: an
image that inspect finds, not stale, is reused, else built with `containers/build.sh --tool
podman-hpc --variant gpu --vllm-ref REF --tag TAG --label moe-artifact.plugin-source=HASH
--info FILE` or, with IMAGE_PULL=registry/path set, pulled as `registry/path:<tag's
version>` and tagged (a pulled image of other plugin source is an error); then `podman-hpc
migrate TAG` makes it visible on compute nodes. The record holds the digest, the size, the
plugin source hash and the versions inside the image (containers/image_info.py's JSON):
build.sh's --info file for a build, `image inspect` plus the image's own
/opt/moe-artifact/image-info.json otherwise. `install/images.json` collects them. Launcher
`bare` (vllm on PATH) has no image.

Weights: a complete snapshot of model.hub_id in the Hugging Face cache (engine.hf_home, else
$HF_HOME or ~/.cache/huggingface): config.json and every safetensors file that
model.safetensors.index.json lists, at the commit refs/main names. Missing: downloaded with
huggingface_hub's snapshot_download inside the engine's image (bare: by this Python), the
token passed by name only (`-e HF_TOKEN`), never on a command line or in a log. Then
`install/model.json`: model_dir (the snapshot folder, what later stages serve), hub_id,
revision and commit, the safetensors files with their sizes.

Every command's output goes to `install/logs/<step>.log`; a failing command is a
StageFailed naming its log.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from artifact.config.profiles import Profile, project_root
from artifact.core.console import console, track
from artifact.core.errors import ArtifactError, StageFailed
from artifact.core.io import atomic_write_json, read_json
from artifact.core.layout import RunLayout
from artifact.engines.base import log_tail
from artifact.engines.vllm.engine import VllmEngine, safe_name

REVISION = "main"
IMAGE_INFO = "/opt/moe-artifact/image-info.json"  # written by containers/image_info.py
PULL_ENV = "IMAGE_PULL"
TOKEN_ENV = "HF_TOKEN"
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model"]
# What of the artifact runs inside vLLM's workers: the routing plugin and the log format it
# writes. Their hash labels the image, so an image holding other plugin source is rebuilt.
PLUGIN_SOURCES = ("artifact/engines/vllm/plugin", "artifact/routing/format.py")
PLUGIN_LABEL = "moe-artifact.plugin-source"
DOWNLOAD = (
    "import sys; from huggingface_hub import snapshot_download; "
    f"print(snapshot_download(sys.argv[1], revision={REVISION!r}, "
    f"allow_patterns={WEIGHT_PATTERNS!r}))"
)


def run_logged(argv: list[str], log: Path, what: str, env: dict | None = None) -> str:
    """Run `argv`, appending its output to `log`; returns stdout. Fails naming the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ {json.dumps(argv)}\n")
        fh.flush()
        try:
            proc = subprocess.run(
                argv, stdout=subprocess.PIPE, stderr=fh, text=True, env=env, check=False
            )
        except FileNotFoundError:
            raise ArtifactError(f"{what}: {argv[0]!r} is not on PATH") from None
        fh.write(proc.stdout)
    if proc.returncode != 0:
        raise StageFailed(
            f"{what} failed (exit code {proc.returncode}); last lines of {log}:\n{log_tail(log)}"
        )
    return proc.stdout


# --- images --------------------------------------------------------------------------------


def plugin_source_hash(root: Path | None = None) -> str:
    """sha256 of PLUGIN_SOURCES' Python files (relative paths and contents) under `root`."""
    root = root or project_root()
    digest = hashlib.sha256()
    for source in PLUGIN_SOURCES:
        path = root / source
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()


def profile_images(profile: Profile) -> dict[str, str]:
    """{image tag: vLLM ref} of every mode; one tag built from two refs is an error."""
    engine = VllmEngine(profile, Path())  # image names need no model folder
    images: dict[str, str] = {}
    for name, mode in profile.modes.items():
        tag, ref = engine.mode_image(mode), engine.mode_ref(mode)
        if tag is None:
            continue
        if ref is None:
            raise ArtifactError(
                f"image {tag} has no vLLM ref to build: set engine.vllm_ref or the mode's",
                path=profile.path,
                where=f"field 'modes.{name}'",
            )
        if images.setdefault(tag, ref) != ref:
            raise ArtifactError(
                f"image {tag} is given two vLLM refs ({images[tag]} and {ref}); "
                "give each build its own image tag",
                path=profile.path,
                where=f"field 'modes.{name}'",
            )
    return images


class ImageInstaller:
    def __init__(self, launcher: str, layout: RunLayout):
        self.launcher = launcher
        self.layout = layout

    def inspect(self, tag: str, expr: str) -> str | None:
        """`image inspect --format {{EXPR}}` (`.Id`, `index .Labels "NAME"`), or None when
        there is no such image."""
        proc = subprocess.run(
            [self.launcher, "image", "inspect", "--format", f"{{{{{expr}}}}}", tag],
            capture_output=True,
            text=True,
            check=False,
        )
        return proc.stdout.strip() if proc.returncode == 0 else None

    def described(self, tag: str, how: str, log: Path) -> dict:
        """The record of an image not built here: inspect plus the image's own info file."""
        size = self.inspect(tag, ".Size")
        inside = run_logged(
            [self.launcher, "run", "--rm", tag, "cat", IMAGE_INFO], log, f"reading {IMAGE_INFO}"
        )
        return {
            "tag": tag,
            "tool": self.launcher,
            "digest": self.inspect(tag, ".Digest"),
            "size_bytes": int(size) if size and size.isdigit() else None,
            "image": json.loads(inside),
            "how": how,
        }

    def plugin_source(self, tag: str) -> str:
        """The plugin source hash an image is labelled with ('' when unlabelled)."""
        held = self.inspect(tag, f'index .Labels "{PLUGIN_LABEL}"') or ""
        return "" if held == "<no value>" else held

    def install(self, tag: str, ref: str) -> dict:
        marker = self.layout.image_record(safe_name(tag))
        source_hash = plugin_source_hash()
        found = self.inspect(tag, ".Id") is not None
        held = self.plugin_source(tag) if found else None
        current = found and held == source_hash
        if marker.exists() and current:
            console.print(f"  image {tag}: installed before, reused")
            return read_json(marker)
        log = self.layout.install_log(f"image-{safe_name(tag)}")
        pull = os.environ.get(PULL_ENV)
        if found and not current:
            console.print(
                f"  image {tag}: holds plugin source {held[:12] if held else '(unlabelled)'}, "
                f"this checkout has {source_hash[:12]}: stale, replacing it"
            )
        if current:
            console.print(f"  image {tag}: found by {self.launcher}, reused")
            how = "reused"
        elif pull:
            source = f"{pull}:{tag.rsplit(':', 1)[-1]}"
            console.print(f"  image {tag}: pulling {source} (log {log})")
            run_logged([self.launcher, "pull", source], log, f"pulling {source}")
            run_logged([self.launcher, "tag", source, tag], log, f"tagging {source} as {tag}")
            if (pulled := self.plugin_source(tag)) != source_hash:
                raise StageFailed(
                    f"{source} holds plugin source {pulled[:12] or '(unlabelled)'}, this "
                    f"checkout has {source_hash[:12]}: push an image built from this checkout, "
                    f"or unset {PULL_ENV} to build it here"
                )
            how = f"pulled from {source}"
        else:
            info = self.layout.image_record(safe_name(tag), "build.json")
            console.print(
                f"  image {tag}: building vLLM {ref} with containers/build.sh (log {log})"
            )
            run_logged(
                [
                    str(project_root() / "containers" / "build.sh"),
                    "--tool",
                    self.launcher,
                    "--variant",
                    "gpu",
                    "--vllm-ref",
                    ref,
                    "--tag",
                    tag,
                    "--label",
                    f"{PLUGIN_LABEL}={source_hash}",
                    "--info",
                    str(info),
                ],
                log,
                f"building image {tag}",
            )
            how = "built"
        console.print(f"  image {tag}: podman-hpc migrate (for the compute nodes)")
        run_logged([self.launcher, "migrate", tag], log, f"migrating image {tag}")
        if how == "built":
            record = {**read_json(info), "how": how}
        else:
            record = self.described(tag, how, log)
        record["vllm_ref"] = ref
        record["plugin_source"] = source_hash
        atomic_write_json(marker, record)
        return record


# --- weights -------------------------------------------------------------------------------


def hf_home(engine: VllmEngine) -> Path:
    configured = engine.profile.engine.hf_home
    if configured:
        return Path(engine.expand(configured, "engine.hf_home"))
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))


def snapshot(hf: Path, hub_id: str) -> tuple[Path | None, str | None, list[str]]:
    """(snapshot folder, commit, missing files) of the cached `hub_id` at REVISION."""
    repo = hf / "hub" / f"models--{hub_id.replace('/', '--')}"
    ref = repo / "refs" / REVISION
    if not ref.is_file():
        return None, None, [f"{ref} (no snapshot of {hub_id})"]
    commit = ref.read_text(encoding="utf-8").strip()
    folder = repo / "snapshots" / commit
    wanted = ["config.json", "model.safetensors.index.json"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        wanted += sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    # exists() follows the cache's symlinks into blobs/: a partial download has dangling ones.
    missing = [name for name in wanted if not (folder / name).exists()]
    return folder, commit, missing


def model_hub_id(engine: VllmEngine) -> str:
    """The model's hub id: the weights come from the Hugging Face hub."""
    hub_id = engine.profile.model.hub_id
    if not hub_id:
        raise ArtifactError(
            "the vLLM install downloads the weights from the hub: set model.hub_id",
            path=engine.profile.path,
            where="field 'model.hub_id'",
        )
    return hub_id


def download_argv(engine: VllmEngine, hf: Path) -> list[str]:
    launcher = engine.profile.engine.launcher
    hub_id = model_hub_id(engine)
    if launcher == "bare":
        return [sys.executable, "-c", DOWNLOAD, hub_id]
    image = str(engine.profile.engine.image)
    return [
        launcher,
        "run",
        "--rm",
        "-e",
        TOKEN_ENV,  # by name: the value stays in the environment
        "-e",
        f"HF_HOME={hf}",
        "-v",
        f"{hf}:{hf}",
        image,
        "python",
        "-c",
        DOWNLOAD,
        hub_id,
    ]


def install_weights(engine: VllmEngine, layout: RunLayout) -> dict:
    model = engine.profile.model
    hub_id = model_hub_id(engine)
    hf = hf_home(engine)
    folder, commit, missing = snapshot(hf, hub_id)
    if missing:
        if not os.environ.get(TOKEN_ENV):
            raise ArtifactError(
                f"{hub_id} is not complete in the Hugging Face cache {hf} (missing "
                f"{missing[0]}) and downloading it needs a token: the model is gated; accept "
                f"its terms on huggingface.co and `export {TOKEN_ENV}=...` (it is passed by "
                "name, never printed), then rerun the install stage"
            )
        log = layout.install_log("weights")
        console.print(f"  weights: downloading {hub_id} into {hf} (log {log})")
        hf.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HF_HOME=str(hf))
        run_logged(download_argv(engine, hf), log, f"downloading {hub_id}", env=env)
        folder, commit, missing = snapshot(hf, hub_id)
        if missing:
            raise StageFailed(
                f"{hub_id}: the download finished but {missing[0]} is missing from "
                f"the cache; see {log}"
            )
    else:
        console.print(f"  weights: {hub_id} complete in {hf}, reused")
    assert folder is not None
    files = {p.name: p.stat().st_size for p in sorted(folder.glob("*.safetensors"))}
    return {
        "model_dir": str(folder),
        "name": model.name,
        "source": model.source,
        "hub_id": hub_id,
        "revision": REVISION,
        "commit": commit,
        "hf_home": str(hf),
        "dtype": model.dtype,
        "files": files,
    }


def install_hub(profile: Profile, layout: RunLayout) -> tuple[dict, str]:
    """Images and weights of a hub model served by vLLM; returns (model record, summary)."""
    if profile.engine.kind != "vllm":
        raise ArtifactError(
            f"hub models are served by the vLLM engine here, not {profile.engine.kind}",
            path=profile.path,
            where="field 'engine.kind'",
        )
    launcher = profile.engine.launcher
    if launcher == "apptainer":
        raise ArtifactError(
            "the install stage builds podman-hpc images; for apptainer build the .sif with "
            "`containers/build.sh --tool apptainer --variant gpu --vllm-ref REF --tag FILE.sif`",
            path=profile.path,
            where="field 'engine.launcher'",
        )
    engine = VllmEngine(profile, Path())
    images = {}
    if launcher != "bare":
        if shutil.which(launcher) is None:
            raise ArtifactError(
                f"{launcher} is not on PATH: run the install on a Perlmutter login node "
                "(reproduce/perlmutter/install.sh)",
                path=profile.path,
                where="field 'engine.launcher'",
            )
        installer = ImageInstaller(launcher, layout)
        for tag, ref in track(list(profile_images(profile).items()), "images"):
            images[tag] = installer.install(tag, ref)
        atomic_write_json(layout.images_record, images)
    record = install_weights(engine, layout)
    size_gb = sum(record["files"].values()) / 2**30
    summary = (
        f"{record['hub_id']} at {str(record['commit'])[:12]} ({len(record['files'])} "
        f"safetensors files, {size_gb:.1f} GB) in {record['hf_home']}"
        + (f"; images {', '.join(images)}" if images else "")
    )
    return record, summary
