"""Record what an image holds: variant, build arguments and package versions (JSON).

Run by containers/install.sh at the end of the install stage; the image digest is added by
containers/build.sh after the build (a digest cannot be known from inside the image).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from importlib import metadata

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
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2, sort_keys=True)
        fh.write("\n")
    print(json.dumps(info, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
