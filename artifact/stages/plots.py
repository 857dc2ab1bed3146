"""Stage `plots`: every figure and table of the study, and report.md / report.html.

Reads the run directory's tidy tables (artifact.checker.tables) and draws the study's
figures (artifact.report.figures: Fig. 1-2 Experiment 1, Table 1 / Fig. 3 Experiment 2,
Fig. 4-5 Experiment 3, and Fig. 6-8: predicted vs observed imbalance, per-layer expert-load
heatmaps, per-rank load under EP), then writes `plots/report.md` and a self-contained
`plots/report.html` with the profile, provenance, findings, every figure with its caption
and the claims table. The verdicts and findings are the check stage's
(`check/claims.json`): `moe-artifact plots` runs check first (skipped when up to date).

`--from-study DIR` first imports the original study's raw data as the run directory's
tables (the study-import stage, artifact.study.layout; profile perlmutter and run directory
runs/perlmutter-study unless given), then checks and plots them. `--iqr-filter` draws
Experiment 3 after the study's 1.5 x IQR outlier rule (removed points shown hollow, counts
in the legends).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from artifact.core.io import atomic_write_json, sha256_bytes
from artifact.core.runner import Stage, StageContext, StageOutcome
from artifact.stages.check import STAGE as CHECK
from artifact.stages.check import add_study_options

# Plotting and the study import load matplotlib, scipy and the readers: imported where used,
# so that building the CLI stays fast.


class PlotsStage(Stage):
    name = "plots"
    upstream: tuple[str, ...] = ("datasets", "bench", "imbalance", "check")
    profile_sections = ("hardware", "modes", "experiments", "expected_results")

    def __init__(self, study: Path | None = None):
        self.study = study
        if study is not None:
            self.upstream = ("study-import", "check")

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        add_study_options(parser)
        parser.add_argument(
            "--iqr-filter",
            action="store_true",
            help="Experiment 3 figures after the study's 1.5 x IQR outlier filter",
        )

    def steps(self, args: argparse.Namespace) -> list[Stage]:
        """The check stage's steps (the report shows its verdicts), then this stage."""
        *before, check = CHECK.steps(args)
        study = getattr(check, "study", None)
        return [*before, check, self if study is None else PlotsStage(study=study)]

    def extra_inputs(self, ctx: StageContext) -> dict[str, str]:
        iqr = bool(getattr(ctx.args, "iqr_filter", False))
        return {"options": sha256_bytes(f"iqr_filter={iqr}".encode())}

    def run(self, ctx: StageContext) -> StageOutcome:
        from artifact.checker import read_verdicts
        from artifact.checker.tables import RunTables, check_fresh
        from artifact.report.build import make_figures, make_report

        check_fresh(ctx.run_dir, self.upstream)
        out = ctx.stage_dir(self.name)
        tables = RunTables(ctx.run_dir.path)
        verdicts = read_verdicts(ctx.layout.claims_json)
        iqr = bool(getattr(ctx.args, "iqr_filter", False))
        figures, extra = make_figures(tables, ctx.profile, out, iqr=iqr, findings=verdicts.findings)
        source = (
            f"the original study's raw data ({self.study})"
            if self.study
            else "this artifact's own runs"
        )
        report = make_report(
            tables=tables,
            profile=ctx.profile,
            figures=figures,
            extra=extra,
            claims=verdicts.claims,
            findings=verdicts.findings,
            source=source,
        )
        _, html = report.write(ctx.layout.report_md, ctx.layout.report_html)
        atomic_write_json(
            ctx.layout.figures,
            [
                {
                    "number": f.number,
                    "title": f.title,
                    "caption": f.caption,
                    "file": f.path.name,
                    "section": f.section,
                }
                for f in figures
            ],
        )
        skipped = "; ".join(f"{k} SKIP" for k in extra["skipped"])
        return StageOutcome(
            summary=f"{len(figures)} figures"
            + (", Table 1" if "table1" in extra else "")
            + (f" ({skipped})" if skipped else "")
            + f"; report {html}",
            details={
                "figures": [f.path.name for f in figures],
                "skipped": extra["skipped"],
                "findings": len(verdicts.findings),
                "iqr_filter": iqr,
            },
        )


STAGE = PlotsStage()
