"""What a vLLM build accepts: the long options of `vllm serve` and the VLLM_* variables.

Two sources. For the profile's own vLLM venv (`engine.venv`, the `vllm-cpu` profile's), the
install stage asks that vLLM itself: `python -m artifact.engines.vllm.surface`
inside its interpreter builds vLLM's own `vllm serve` argument parser (nothing is started,
no GPU needed) and prints the flags and `vllm.envs`' variables; the result is the run's
`install/vllm-surface.json`, and every later check of that run reads it. For builds that
live in images the host cannot import (Perlmutter's) and a `vllm` on PATH, the packaged table
`cli_surface.json` (written by containers/vllm_surface.py from such dumps) is used; a build
with no wheel of its own (2f13319f) gets what both neighbouring releases have.

This module imports only the standard library at load: it runs inside vLLM's venv.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

COMMIT = re.compile(r"[0-9a-f]{7,40}")


class BuildSurface(NamedTuple):
    """One build: its name (table key or installed version), version, flags and variables."""

    name: str
    version: str
    flags: frozenset[str]
    env: frozenset[str]

    @property
    def at_least_0110(self) -> bool:
        """EPLB for Mixtral, `--eplb-config` and the 0.11 all2all backends arrived here."""
        match = re.match(r"(\d+)\.(\d+)\.(\d+)", self.name)
        return match is not None and tuple(int(x) for x in match.groups()) >= (0, 11, 0)


def dump() -> dict:
    """The surface of the vLLM importable here (run inside vLLM's own interpreter)."""
    import vllm
    import vllm.platforms as platforms

    try:
        from vllm.platforms.cpu import CpuPlatform

        platforms._current_platform = CpuPlatform()  # parser defaults need a device type
    except ImportError:  # pragma: no cover - very old vLLM
        pass
    import vllm.envs as envs
    from vllm.entrypoints.openai.cli_args import make_arg_parser

    try:
        from vllm.utils import FlexibleArgumentParser
    except ImportError:  # moved in later releases
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    flags = sorted({o for a in parser._actions for o in a.option_strings if o.startswith("--")})
    return {
        "version": vllm.__version__,
        "flags": flags,
        "env": sorted(envs.environment_variables),
    }


def read_dump(python: str | Path, timeout_s: float = 600.0) -> dict:
    """`dump()` run by another interpreter (a vLLM venv's); its last stdout line is the JSON.

    Raises RuntimeError with the interpreter's last error line when it cannot.
    """
    try:
        done = subprocess.run(
            [str(python), "-m", "artifact.engines.vllm.surface"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{python}: {exc}") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        errors = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        raise RuntimeError(
            f"{python} -m artifact.engines.vllm.surface exited {done.returncode}: "
            + (errors[-1] if errors else "no output")
        )
    data = json.loads(lines[-1])
    return {"version": data["version"], "flags": data["flags"], "env": data["env"]}


def from_dump(data: dict, name: str | None = None) -> BuildSurface:
    version = str(data["version"])
    return BuildSurface(name or version, version, frozenset(data["flags"]), frozenset(data["env"]))


class CliSurface(NamedTuple):
    """The packaged table: every build it knows, by key."""

    builds: dict[str, BuildSurface]

    def key(self, ref: str | None) -> str | None:
        """The table key a vLLM ref is checked against (None: a build the table lacks)."""
        if not ref:
            return None
        ref = ref.strip()
        for key in self.builds:
            if COMMIT.fullmatch(key) and key.startswith(ref[:8]):
                return key
            if COMMIT.fullmatch(ref) and ref.startswith(key):
                return key
        bare = ref.lstrip("v")
        return bare if bare in self.builds else None

    def build(self, ref: str | None) -> BuildSurface | None:
        key = self.key(ref)
        return None if key is None else self.builds[key]


def read_cli_surface(path: Path) -> CliSurface:
    """A table containers/vllm_surface.py wrote; a build with no wheel of its own has what
    both of its neighbouring releases have."""
    table = json.loads(path.read_text(encoding="utf-8"))
    builds = {name: from_dump(build, name) for name, build in table["builds"].items()}
    for name, (older, newer) in table["brackets"].items():
        builds[name] = BuildSurface(
            name,
            f"between {older} and {newer}",
            builds[older].flags & builds[newer].flags,
            builds[older].env & builds[newer].env,
        )
    return CliSurface(builds)


@functools.cache
def cli_surface() -> CliSurface:
    """The builds this artifact knows without asking them (package data), read on first use."""
    return read_cli_surface(Path(__file__).with_name("cli_surface.json"))


if __name__ == "__main__":
    print(json.dumps(dump()))
    sys.exit(0)
