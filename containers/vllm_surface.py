"""The command-line surface of a vLLM build: `vllm serve` flags and VLLM_* variables.

    python containers/vllm_surface.py dump > surface-<version>.json   (needs vLLM importable)
    python containers/vllm_surface.py write surface-*.json            (regenerates the table)
    python containers/vllm_surface.py check                           (installed vLLM vs table)

`dump` builds vLLM's own `vllm serve` argument parser (no GPU needed: the CPU platform is
forced, nothing is started) and lists its long options and the environment variables in
`vllm.envs`. `write` turns dumps into `artifact/engines/vllm/cli_surface.py`; a build with no
wheel of its own (2f13319f) is given as `--bracket NAME=OLDER,NEWER`: a flag counts as present
there when both neighbouring releases have it. `check` compares the installed vLLM with the
table (used by `nox -s vllm-check` on a machine that can install the pinned vLLM).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "artifact" / "vllm_plugin" / "cli_surface.py"


def dump() -> dict:
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


def render(surfaces: dict[str, dict], brackets: dict[str, tuple[str, str]], sources: str) -> str:
    lines = [
        '"""`vllm serve` flags and VLLM_* variables per vLLM build (generated; do not edit).',
        "",
        "Regenerate with containers/vllm_surface.py (see its docstring).",
        "Sources:",
        *textwrap.wrap(sources, 96, initial_indent="  ", subsequent_indent="  "),
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "FLAGS: dict[str, frozenset[str]] = {}",
        "ENV: dict[str, frozenset[str]] = {}",
        "VERSIONS: dict[str, str] = {}",
        "",
    ]
    for name, surface in surfaces.items():
        lines.append(f"VERSIONS[{name!r}] = {surface['version']!r}")
        lines.append(f"FLAGS[{name!r}] = frozenset(")
        lines.append("    [")
        lines += [f"        {flag!r}," for flag in surface["flags"]]
        lines.append("    ]")
        lines.append(")")
        lines.append(f"ENV[{name!r}] = frozenset(")
        lines.append("    [")
        lines += [f"        {env!r}," for env in surface["env"]]
        lines.append("    ]")
        lines.append(")")
    for name, (older, newer) in brackets.items():
        lines.append(f"# {name}: no wheel of its own; present in both {older} and {newer}.")
        lines.append(f"VERSIONS[{name!r}] = 'between {older} and {newer}'")
        lines.append(f"FLAGS[{name!r}] = FLAGS[{older!r}] & FLAGS[{newer!r}]")
        lines.append(f"ENV[{name!r}] = ENV[{older!r}] & ENV[{newer!r}]")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("dump")
    w = sub.add_parser("write")
    w.add_argument("dumps", nargs="+", type=Path)
    w.add_argument("--bracket", action="append", default=[], metavar="NAME=OLDER,NEWER")
    w.add_argument("--sources", default="vllm wheels from PyPI")
    c = sub.add_parser("check")
    c.add_argument("--build", required=True, help="table key the installed vLLM must match")
    args = parser.parse_args(argv)
    if args.cmd == "dump":
        print(json.dumps(dump()))
        return 0
    if args.cmd == "write":
        surfaces = {}
        for path in args.dumps:
            data = json.loads(path.read_text().strip().splitlines()[-1])
            surfaces[data["version"]] = data
        brackets = {}
        for spec in args.bracket:
            name, _, pair = spec.partition("=")
            older, _, newer = pair.partition(",")
            brackets[name] = (older, newer)
        TABLE.write_text(render(surfaces, brackets, args.sources))
        if shutil.which("ruff"):
            subprocess.run(["ruff", "format", "-q", str(TABLE)], check=False)
        print(f"wrote {TABLE}")
        return 0
    sys.path.insert(0, str(ROOT))
    from artifact.engines.vllm.cli_surface import FLAGS

    live = dump()
    want = FLAGS[args.build]
    missing = sorted(want - set(live["flags"]))
    print(f"vLLM {live['version']}: {len(live['flags'])} flags; table {args.build}: {len(want)}")
    if missing:
        print("flags in the table but not in the installed vLLM:", ", ".join(missing))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
