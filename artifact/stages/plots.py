"""Stage `plots`: every figure and table of the study, and report.md / report.html.

Reads the run directory's tidy tables (artifact.checker.tables) and draws the study's
figures (artifact.report.figures: Fig. 1-2 Experiment 1, Table 1 / Fig. 3 Experiment 2,
Fig. 4-5 Experiment 3, and Fig. 6-8: predicted vs observed imbalance, per-layer expert-load
heatmaps, per-rank load under EP), then writes `plots/report.md` and a self-contained
`plots/report.html` with the profile, provenance, findings, every figure with its caption
and the claims table (judged by artifact.checker, as the check stage does).

`--from-study DIR` first imports the original study's raw data as the run directory's
tables (artifact.study.layout; profile perlmutter and run directory runs/perlmutter-study
unless given), then plots them. `--iqr-filter` draws Experiment 3 after the study's
1.5 x IQR outlier rule (removed points shown hollow, counts in the legends).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from artifact.config.claims import claims_path
from artifact.core.errors import ArtifactError
from artifact.core.io import atomic_write_json, sha256_bytes, sha256_file
from artifact.core.runner import Stage, StageContext, StageOutcome

# Plotting and the study import load matplotlib, scipy and the readers: imported where used,
# so that building the CLI stays fast.


def add_study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from-study",
        type=Path,
        default=None,
        metavar="DIR",
        help="use the original study's raw data (trace_collection/, load_imbalance/, eplb/) "
        "as the run's tables; profile perlmutter, run dir runs/perlmutter-study by default",
    )
    parser.add_argument(
        "--claims",
        type=Path,
        default=None,
        metavar="FILE",
        help="claims file (default: the profile's expected_results)",
    )


def claims_inputs(ctx: StageContext) -> dict[str, str]:
    path = claims_path(ctx.profile, getattr(ctx.args, "claims", None))
    return {f"claims:{path.name}": sha256_file(path) if path.exists() else "missing"}


class PlotsStage(Stage):
    name = "plots"
    description = "regenerate every figure and table, and report.md / report.html"
    upstream = ("datasets", "bench", "imbalance")
    profile_sections = ("hardware", "modes", "experiments", "expected_results")

    def __init__(self, study: Path | None = None):
        self.study = study
        if study is not None:
            self.upstream = ("imbalance",)

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        add_study_options(parser)
        parser.add_argument(
            "--iqr-filter",
            action="store_true",
            help="Experiment 3 figures after the study's 1.5 x IQR outlier filter",
        )

    def plan(self, args: argparse.Namespace) -> list[Stage]:
        from artifact.study.layout import study_plan

        return study_plan(args, self, PlotsStage)

    def extra_inputs(self, ctx: StageContext) -> dict[str, str]:
        iqr = bool(getattr(ctx.args, "iqr_filter", False))
        return {**claims_inputs(ctx), "options": sha256_bytes(f"iqr_filter={iqr}".encode())}

    def run(self, ctx: StageContext) -> StageOutcome:
        from artifact.checker import check_run
        from artifact.checker.tables import RunTables, check_fresh
        from artifact.report.build import make_figures, make_report
        from artifact.study.audit import findings

        check_fresh(ctx.run_dir, self.upstream)
        out = ctx.stage_dir(self.name)
        tables = RunTables(ctx.run_dir.path)
        found = findings(tables)
        iqr = bool(getattr(ctx.args, "iqr_filter", False))
        figures, extra = make_figures(tables, ctx.profile, out, iqr=iqr, findings=found)
        claims, error = None, None
        try:
            claims, _, _ = check_run(
                ctx.run_dir.path, ctx.profile, getattr(ctx.args, "claims", None)
            )
        except ArtifactError as exc:
            error = str(exc)
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
            claims=claims,
            claims_error=error,
            findings=found,
            source=source,
        )
        _, html = report.write(out)
        atomic_write_json(
            out / "figures.json",
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
                "findings": len(found),
                "iqr_filter": iqr,
            },
        )


STAGE = PlotsStage()
