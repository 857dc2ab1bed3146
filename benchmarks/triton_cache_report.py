"""What the compiler made of each Triton kernel in a cache folder (run after a benchmark).

    TRITON_CACHE_DIR=/tmp/tc <benchmark>; python3 benchmarks/triton_cache_report.py /tmp/tc

One line per compiled kernel: name, warps, stages, shared memory (metadata); from the PTX
the count of Hopper matrix instructions (wgmma.mma_async), bulk tensor copies (TMA:
cp.async.bulk.tensor), asynchronous copies (cp.async) and local-memory stores (spills);
registers and stack frame from `cuobjdump --dump-resource-usage` where it is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

PATTERNS = {
    "wgmma": r"wgmma\.mma_async",
    "tma": r"cp\.async\.bulk\.tensor",
    "cp_async": r"cp\.async\.c[ag]",
    "local_st": r"st\.local",
}


def resources(cubin: Path) -> str:
    if not shutil.which("cuobjdump"):
        return ""
    out = subprocess.run(
        ["cuobjdump", "--dump-resource-usage", str(cubin)], capture_output=True, text=True
    ).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return f" regs={match.group(1)} stack={match.group(2)}" if match else ""


def main(cache: Path) -> None:
    for meta_path in sorted(cache.glob("*/*.json")):
        ptx = meta_path.with_suffix(".ptx")
        if not ptx.exists():
            continue
        meta = json.loads(meta_path.read_text())
        text = ptx.read_text()
        counts = " ".join(f"{k}={len(re.findall(p, text))}" for k, p in PATTERNS.items())
        cubin = meta_path.with_suffix(".cubin")
        print(
            f"{meta.get('name')} warps={meta.get('num_warps')} stages={meta.get('num_stages')} "
            f"shared={meta.get('shared')} {counts}" + (resources(cubin) if cubin.exists() else "")
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
