"""Stage `study-import`: the original study's raw data as the run directory's tables.

The first step of `moe-artifact check --from-study DIR` (and so of `plots --from-study DIR`):
artifact.study.layout reads the study's layout into `study-import/`, where the checker and the
report read the tables that the imbalance stage writes for a run of our own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from artifact.core.errors import ArtifactError
from artifact.core.runner import Stage, StageContext, StageOutcome
from artifact.study.layout import check_study, import_study, study_hash


class StudyImportStage(Stage):
    """The first step of `plots` / `check --from-study DIR`: the study's data as the run
    directory's tables, under `study-import/` (artifact.checker.tables reads them there)."""

    name = "study-import"
    upstream = ()
    profile_sections = ()

    def __init__(self, study: Path):
        self.study = Path(study)

    def extra_inputs(self, ctx: StageContext) -> dict[str, str]:
        return {f"study:{self.study.resolve()}": study_hash(self.study)}

    def run(self, ctx: StageContext) -> StageOutcome:
        if ctx.run_dir.record("bench"):
            raise ArtifactError(
                "this run directory holds the artifact's own runs; give --from-study a "
                "run directory of its own (--run-dir)",
                path=ctx.run_dir.path,
            )
        counts = import_study(self.study, ctx.stage_dir(self.name))
        return StageOutcome(
            summary=f"the study's data at {self.study}: {counts['traces']} traces, "
            f"{counts['imbalance_runs']} imbalance runs, {counts['correlations']} correlations"
            + (", EPLB kernel comparison" if counts["eplb"] else ""),
            details={"from_study": str(self.study.resolve()), **counts},
        )


def study_import(args: argparse.Namespace) -> StudyImportStage:
    """The import step of a `--from-study DIR` command. Sets the study's default profile
    (perlmutter) and run directory (runs/<profile>-study)."""
    study = Path(args.from_study)
    check_study(study)
    if not args.profile:
        args.profile = "perlmutter"
    if args.run_dir is None:
        args.run_dir = Path("runs") / f"{Path(args.profile).stem}-study"
    return StudyImportStage(study)
