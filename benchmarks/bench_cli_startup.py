"""Start-up time of `moe-artifact --help` and the heavy libraries it loads.

    python benchmarks/bench_cli_startup.py [--runs N]                    # moe-artifact --help
    python benchmarks/bench_cli_startup.py [--runs N] -- predict --help  # other arguments

Each run is a fresh interpreter (`python -m artifact ARGS`) started in an empty folder and
timed from outside; the figure is the median wall time of N runs. A last run reports which
of scipy, torch, sklearn, matplotlib and pandas were imported. The artifact is imported from
$PYTHONPATH when set (e.g. a worktree of an older commit), else from the installed package.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

HEAVY = ("scipy", "torch", "sklearn", "matplotlib", "pandas")
SHOW_MODULES = (
    "import runpy, sys\n"
    "sys.argv = ['moe-artifact', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('artifact', run_name='__main__')\n"
    "except SystemExit:\n"
    "    pass\n"
    "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs (default 10)")
    parser.add_argument("args", nargs="*", default=["--help"], help="CLI arguments")
    opts = parser.parse_args()
    times = []
    # Not the current folder: `python -m` would import a checkout found there.
    with tempfile.TemporaryDirectory() as empty:
        for _ in range(opts.runs):
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "artifact", *opts.args],
                capture_output=True,
                cwd=empty,
                check=True,
            )
            times.append(time.perf_counter() - start)
        shown = subprocess.run(
            [sys.executable, "-c", SHOW_MODULES, *opts.args],
            capture_output=True,
            text=True,
            cwd=empty,
            check=True,
        )
    loaded = {name.split(".")[0] for name in shown.stderr.split()}
    heavy = [name for name in HEAVY if name in loaded]
    print(f"moe-artifact {' '.join(opts.args)}: median {statistics.median(times):.3f} s")
    print(f"  runs: {opts.runs}, min {min(times):.3f} s, max {max(times):.3f} s")
    print(f"  heavy libraries loaded: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
