"""The claims table: on the terminal (rich), as Markdown (report, claims.md) and as JSON
(`check/claims.json`, written by the check stage and read back by the report)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from artifact.checker.evaluate import VERDICTS, ClaimResult, counts
from artifact.core.errors import ArtifactError
from artifact.core.io import read_json
from artifact.core.tables import markdown_table

STYLE = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow", "XFAIL": "magenta"}


def summary_line(results: list[ClaimResult]) -> str:
    c = counts(results)
    return ", ".join(f"{c[v]} {v}" for v in VERDICTS if c[v]) or "no claims"


def rich_table(results: list[ClaimResult], title: str = "claims") -> Table:
    table = Table(title=f"{title}: {summary_line(results)}", show_lines=True)
    table.add_column("claim", overflow="fold", max_width=40)
    table.add_column("expected", overflow="fold", max_width=30)
    table.add_column("observed", overflow="fold", max_width=46)
    table.add_column("verdict")
    table.add_column("reason", overflow="fold", max_width=50)
    for r in results:
        table.add_row(
            r.id,
            r.expected,
            r.observed,
            f"[{STYLE[r.verdict]}]{r.verdict}[/]",
            r.reason,
        )
    return table


CLAIMS_COLUMNS = ("claim", "statement", "source", "expected", "observed", "verdict", "reason")


def claims_rows(results: list[ClaimResult]) -> list[tuple[str, ...]]:
    """The cells of the claims table (Markdown markup: `code`, **bold**), in CLAIMS_COLUMNS."""
    return [
        (f"`{r.id}`", r.statement, r.source, r.expected, r.observed, f"**{r.verdict}**", r.reason)
        for r in results
    ]


def claims_markdown(results: list[ClaimResult]) -> str:
    return markdown_table(claims_rows(results), CLAIMS_COLUMNS)


def payload(results: list[ClaimResult], **meta: Any) -> dict:
    return {
        **meta,
        "counts": counts(results),
        "passed": not any(r.verdict == "FAIL" for r in results),
        "claims": [r.to_json() for r in results],
    }


@dataclass
class Verdicts:
    """What the report needs of `check/claims.json`."""

    claims: list[ClaimResult]
    findings: list[dict[str, Any]]
    hardware: str


def read_verdicts(path: Path) -> Verdicts:
    data = read_json(path)
    field = "claims"
    try:
        claims = [ClaimResult(**c) for c in data["claims"]]
        field = "findings"
        findings = list(data["findings"])
        field = "hardware"
        return Verdicts(claims, findings, str(data["hardware"]))
    except (KeyError, TypeError) as exc:
        raise ArtifactError(
            f"not a claims file of the check stage: field '{field}' ({exc}); rerun "
            "`moe-artifact check`",
            path=path,
        ) from None
