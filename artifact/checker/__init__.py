"""The tolerance-banded checker: claims (expected_results/<profile>.yaml) judged on a run.

Modules: `tables` (the run directory's tidy tables), `query` (a claim's quantity over
them), `rules` (how each kind of claim is judged), `stats` (the tests), `evaluate`
(verdicts PASS / FAIL / SKIP / XFAIL / XPASS), `output` (terminal, Markdown, and
`check/claims.json` with its reader). The claims file's schema is artifact.config.claims;
provenance findings are artifact.study.audit.
"""

from __future__ import annotations

from pathlib import Path

from artifact.checker.evaluate import VERDICTS, ClaimResult, counts, evaluate, failing
from artifact.checker.output import (
    CLAIMS_COLUMNS,
    READING,
    Verdicts,
    by_kind,
    claims_markdown,
    claims_rows,
    payload,
    read_verdicts,
    rich_table,
    summary_line,
)
from artifact.checker.tables import RunTables, hardware_id
from artifact.config.claims import ClaimsFile, claims_path, load_claims
from artifact.config.profiles import Profile


def check_run(
    run_dir: str | Path,
    profile: Profile,
    claims: str | Path | None = None,
    *,
    hardware: str | None = None,
    study: bool = False,
) -> tuple[list[ClaimResult], ClaimsFile, RunTables]:
    """Load the claims (the study audit's with `study`) and judge them on the run
    directory's tables."""
    claims_file = load_claims(claims_path(profile, claims, study=study))
    tables = RunTables(run_dir)
    return evaluate(claims_file, tables, profile, hardware=hardware), claims_file, tables


__all__ = [
    "CLAIMS_COLUMNS",
    "READING",
    "VERDICTS",
    "ClaimResult",
    "ClaimsFile",
    "RunTables",
    "Verdicts",
    "by_kind",
    "check_run",
    "claims_markdown",
    "claims_path",
    "claims_rows",
    "counts",
    "evaluate",
    "failing",
    "hardware_id",
    "load_claims",
    "payload",
    "read_verdicts",
    "rich_table",
    "summary_line",
]
