"""What ran where: package versions, the artifact's git commit, host and hardware.

Recorded in every stage record of manifest.json so a reviewer can tell two runs apart.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import socket
import subprocess
from importlib import metadata
from pathlib import Path

# Distributions whose versions matter for a result; absent ones are recorded as null.
TRACKED_PACKAGES = (
    "moe-artifact",
    "numpy",
    "scipy",
    "scikit-learn",
    "sentencepiece",
    "mistral-common",
    "pydantic",
    "aiohttp",
    "torch",
    "transformers",
    "triton",
    "vllm",
    "flashinfer-python",
    "matplotlib",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


@functools.lru_cache(maxsize=1)
def git_commit() -> dict[str, str | bool | None]:
    """Commit of the artifact checkout and whether its tracked files differ from it."""
    root = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def gpus() -> list[dict[str, str]]:
    """GPUs as nvidia-smi lists them (empty without an NVIDIA driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    cards = []
    for line in out.strip().splitlines():
        name, mem, driver = (part.strip() for part in line.split(","))
        cards.append({"name": name, "memory": mem, "driver": driver})
    return cards


def host_info() -> dict:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "gpus": gpus(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "nersc_host": os.environ.get("NERSC_HOST"),
    }
