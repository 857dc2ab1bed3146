"""Run the `kernels` stage on a GPU machine straight from a checkout (no install, no CLI).

    PYTHONPATH=. python3 benchmarks/kernels_device.py --run-dir /tmp/run [stage options]

The stage's own options apply (see `artifact/stages/kernels.py`); the manifest and outputs
go to <run-dir>/manifest.json and <run-dir>/kernels/. The profile only names the run (the
stage reads none of its sections). On a machine without the raw logs, pass the replay
sources as a loads file made here with `moe-artifact kernel-loads`:

    moe-artifact kernel-loads study-baseline=$MOE_ARTIFACT_STUDY_DATA/load_imbalance/\
baseline_gates_logs ... --out .devdata/loads.json --max-rows 4000
    PYTHONPATH=. python3 benchmarks/kernels_device.py --run-dir /tmp/run \
--replay .devdata/loads.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from artifact.config.profiles import load_profile
from artifact.core.console import console
from artifact.core.errors import ArtifactError
from artifact.core.manifest import RunDir
from artifact.core.runner import StageContext, run_stage
from artifact.stages.kernels import STAGE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--profile", default="local", help="profile that names the run")
    parser.add_argument("--force", action="store_true")
    STAGE.configure_parser(parser)
    args = parser.parse_args()
    try:
        ctx = StageContext(
            profile=load_profile(args.profile),
            run_dir=RunDir(args.run_dir),
            force=args.force,
            args=args,
        )
        run_stage(STAGE, ctx)
    except ArtifactError as exc:
        console.print(f"[red]error[/]: {exc}", soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
