"""Stage `check`: judge every claim of the profile's expected results on the run.

Loads `expected_results/<profile>.yaml` (artifact.config.claims), evaluates each claim's
query over the run directory's tidy tables and judges it (artifact.checker.rules): PASS,
FAIL, SKIP, XFAIL or XPASS, with expected and observed values and the reason. Prints the
claims table and the provenance findings (artifact.study.audit), writes `check/claims.json`
(verdicts, counts, hardware, findings; the plots stage's report reads it) and
`check/claims.md`, and ends with exit code 1 when any claim FAILs or XPASSes (the stage
itself is complete: its verdict is recorded, not an error).

`--from-study DIR` is the audit: the study's own claims (`expected_results/study-audit.yaml`
unless --claims says otherwise, each known defect an xfail) judged on the study's own raw
data, imported as the run's tables by the study-import stage first (artifact.study.layout),
plus the provenance findings from its server logs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from artifact.config.claims import claims_path
from artifact.core.console import console
from artifact.core.io import atomic_write_json, atomic_write_text, sha256_file
from artifact.core.runner import Stage, StageContext, StageOutcome

SEVERITY = {"error": "red", "warning": "yellow"}


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
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="write check/ and plots/ under DIR and leave the run directory (and its manifest) "
        "unchanged, e.g. for a read-only run directory; the run must be complete",
    )
    parser.add_argument(
        "--claims",
        type=Path,
        default=None,
        metavar="FILE",
        help="claims file (default: the profile's expected_results)",
    )


class CheckStage(Stage):
    name = "check"
    upstream: tuple[str, ...] = ("datasets", "bench", "imbalance")
    profile_sections = ("hardware", "modes", "experiments", "expected_results")

    def __init__(self, study: Path | None = None):
        self.study = study
        if study is not None:
            self.upstream = ("study-import",)

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        add_study_options(parser)

    def steps(self, args: argparse.Namespace) -> list[Stage]:
        """This stage, after the study-import stage with --from-study."""
        if getattr(args, "from_study", None) is None:
            return [self]
        from artifact.stages.study_import import study_import

        imported = study_import(args)
        return [imported, CheckStage(study=imported.study)]

    def extra_inputs(self, ctx: StageContext) -> dict[str, str]:
        path = claims_path(
            ctx.profile, getattr(ctx.args, "claims", None), study=self.study is not None
        )
        return {f"claims:{path.name}": sha256_file(path) if path.exists() else "missing"}

    def run(self, ctx: StageContext) -> StageOutcome:
        from artifact.checker import (
            check_run,
            claims_markdown,
            counts,
            failing,
            payload,
            rich_table,
            summary_line,
        )
        from artifact.checker.tables import check_fresh
        from artifact.study.audit import findings

        check_fresh(ctx.run_dir, self.upstream)
        results, claims_file, tables = check_run(
            ctx.run_dir.path,
            ctx.profile,
            getattr(ctx.args, "claims", None),
            study=self.study is not None,
        )
        found = findings(tables)
        hardware = tables.hardware()
        atomic_write_json(
            ctx.layout.claims_json,
            payload(
                results,
                profile=ctx.profile.name,
                claims_file=str(claims_file.path),
                hardware=hardware,
                run_dir=str(ctx.run_dir.path),
                from_study=str(self.study) if self.study else None,
                findings=found,
            ),
        )
        md = f"# Claims: {ctx.profile.name}\n\n{summary_line(results)}; hardware `{hardware}`\n\n"
        md += claims_markdown(results)
        if found:
            md += "\n## Findings\n\n" + "".join(
                f"- **{f['severity']}** `{f['id']}`: {f['finding']} ({f['evidence']})\n"
                for f in found
            )
        atomic_write_text(ctx.layout.claims_md, md)
        title = f"claims of {ctx.profile.name} on {ctx.run_dir.path} (hardware {hardware})"
        console.print(rich_table(results, title=title))
        for f in found:
            console.print(
                f"[{SEVERITY.get(f['severity'], 'white')}]{f['severity']}[/] "
                f"{escape(f['id'])}: {escape(f['finding'])}",
                soft_wrap=True,
            )
        failed = failing(results)
        return StageOutcome(
            summary=f"{summary_line(results)}"
            + (f" (FAIL or XPASS: {', '.join(failed)})" if failed else "")
            + f"; {ctx.layout.claims_md}",
            details={
                "counts": counts(results),
                "failed": failed,
                "findings": len(found),
            },
            exit_code=1 if failed else 0,
        )


STAGE = CheckStage()
