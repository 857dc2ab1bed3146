"""The tolerance-banded checker: claims (expected_results/<profile>.yaml) judged on a run.

Modules: `tables` (the run directory's tidy tables), `query` (a claim's quantity over
them), `rules` (how each kind of claim is judged), `evaluate` (verdicts PASS / FAIL / SKIP /
XFAIL), `output` (terminal, Markdown, and `check/claims.json` with its reader). The claims
file's schema is artifact.config.claims; provenance findings are artifact.study.audit.
"""

from __future__ import annotations

from pathlib import Path

from artifact.checker.evaluate import VERDICTS, ClaimResult, counts, evaluate
from artifact.checker.output import (
    CLAIMS_COLUMNS,
    Verdicts,
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
) -> tuple[list[ClaimResult], ClaimsFile, RunTables]:
    """Load the claims and judge them on the run directory's tables."""
    claims_file = load_claims(claims_path(profile, claims))
    tables = RunTables(run_dir)
    return evaluate(claims_file, tables, profile, hardware=hardware), claims_file, tables


__all__ = [
    "CLAIMS_COLUMNS",
    "VERDICTS",
    "ClaimResult",
    "ClaimsFile",
    "RunTables",
    "Verdicts",
    "check_run",
    "claims_markdown",
    "claims_path",
    "claims_rows",
    "counts",
    "evaluate",
    "hardware_id",
    "load_claims",
    "payload",
    "read_verdicts",
    "rich_table",
    "summary_line",
]
