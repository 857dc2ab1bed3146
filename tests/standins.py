"""Stand-ins for the executables that cannot run here: `podman-hpc` (installed onto PATH by
`install`) and the Hugging Face cache it fills.

- podman-hpc: image inspect / build (as containers/build.sh calls it) / pull / tag /
  migrate / rm / run; images live in $FAKE_PODMAN_STATE (a JSON list), every argv is appended
  to $FAKE_PODMAN_CALLS; `run ... python -c <snapshot_download> HUB_ID` needs HF_TOKEN in its
  environment and writes a snapshot into $HF_HOME.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SNAPSHOT_COMMIT = "0123456789abcdef0123456789abcdef01234567"
SAFETENSORS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def install(bin_dir: Path, name: str) -> Path:
    """Put the stand-in `name` (podman-hpc) onto `bin_dir`."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / name
    exe.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]\n"
        "import standins\n"
        f"sys.exit(standins.MAIN[{name!r}](sys.argv[1:]))\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def _record(env: str, argv: list[str]) -> None:
    if os.environ.get(env):
        with open(os.environ[env], "a", encoding="utf-8") as fh:
            fh.write(json.dumps(argv) + "\n")


# --- the Hugging Face cache ----------------------------------------------------------------


def write_hf_snapshot(hf_home: Path, hub_id: str) -> Path:
    """A complete (tiny) cached snapshot of `hub_id` in the hub cache layout."""
    repo = Path(hf_home) / "hub" / f"models--{hub_id.replace('/', '--')}"
    folder = repo / "snapshots" / SNAPSHOT_COMMIT
    folder.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(SNAPSHOT_COMMIT)
    (folder / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    weight_map = {f"layer{i}": name for i, name in enumerate(SAFETENSORS)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for i, name in enumerate(SAFETENSORS):
        (folder / name).write_bytes(b"\0" * (100 + i))
    return folder


# --- podman-hpc ----------------------------------------------------------------------------


def _images() -> list[str]:
    path = Path(os.environ["FAKE_PODMAN_STATE"])
    return json.loads(path.read_text()) if path.exists() else []


def _add_image(tag: str) -> None:
    Path(os.environ["FAKE_PODMAN_STATE"]).write_text(json.dumps([*_images(), tag]))


def podman_hpc(argv: list[str]) -> int:
    _record("FAKE_PODMAN_CALLS", argv)
    if argv[:2] == ["image", "inspect"]:
        tag = argv[-1]
        if tag not in _images():
            print(f"Error: {tag}: image not known", file=sys.stderr)
            return 125
        field = argv[argv.index("--format") + 1]
        print({"{{.Id}}": "f00d", "{{.Digest}}": f"sha256:{tag.encode().hex()}"}.get(field, "4096"))
        return 0
    if argv[0] == "build":
        _add_image(argv[argv.index("-t") + 1])
        return 0
    if argv[0] == "pull":
        _add_image(argv[1])
        return 0
    if argv[0] == "tag":
        _add_image(argv[2])
        return 0
    if argv[0] in ("migrate", "rm"):
        return 0
    if argv[0] == "run":
        if argv[-2:] == ["cat", "/opt/moe-artifact/image-info.json"]:
            print(json.dumps({"variant": "gpu", "packages": {"vllm": "fake"}, "nsys": "fake"}))
            return 0
        if "python" in argv:
            if not os.environ.get("HF_TOKEN"):
                print("401: gated repository", file=sys.stderr)
                return 1
            home = next(a.split("=", 1)[1] for a in argv if a.startswith("HF_HOME="))
            print(write_hf_snapshot(Path(home), argv[-1]))
            return 0
    print(f"podman-hpc stand-in: unexpected {argv}", file=sys.stderr)
    return 2


MAIN = {"podman-hpc": podman_hpc}
