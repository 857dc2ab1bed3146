"""Record what an image holds: variant, build arguments and package versions (JSON).

Run by containers/install.sh at the end of the install stage (with the build-time self-test's
result, containers/selftest.py, under "selftest"); the image digest is added by
containers/build.sh after the build (a digest cannot be known from inside the image).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata

SRC = "/opt/moe-artifact/src"
PACKAGES = (
    "moe-artifact",
    "vllm",
    "torch",
    "triton",
    "flashinfer-python",
    "transformers",
    "numpy",
    "nox",
)


def version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def tool_version(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (
        (out.stdout or out.stderr).strip().splitlines()[-1] if (out.stdout or out.stderr) else None
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True)
    parser.add_argument("--vllm-ref", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--selftest", help="containers/selftest.py's JSON, when it ran")
    args = parser.parse_args()
    plugins = [
        f"{ep.name}={ep.value}" for ep in metadata.entry_points(group="vllm.general_plugins")
    ]
    info = {
        "variant": args.variant,
        "vllm_ref": args.vllm_ref if args.variant == "gpu" else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: version(name) for name in PACKAGES},
        "vllm_general_plugins": plugins,
        "nsys": tool_version(["nsys", "--version"]),
    }
    lock = os.path.join(SRC, "containers", "constraints", f"vllm-{args.vllm_ref}.txt")
    if args.variant == "gpu" and os.path.exists(lock):
        with open(lock, "rb") as fh:
            info["constraints"] = {"path": lock, "sha256": hashlib.sha256(fh.read()).hexdigest()}
    if args.selftest and os.path.exists(args.selftest):
        with open(args.selftest, encoding="utf-8") as fh:
            info["selftest"] = json.load(fh)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2, sort_keys=True)
        fh.write("\n")
    print(json.dumps(info, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
