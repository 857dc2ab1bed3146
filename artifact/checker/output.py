"""The claims table: on the terminal (rich), as Markdown (report, claims.md) and as JSON
(`check/claims.json`, written by the check stage and read back by the report).

Completeness claims (the run is whole) and result claims (what the experiments found) are
shown apart; READING says how to read a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from artifact.checker.evaluate import VERDICTS, ClaimResult, counts, failing
from artifact.core.errors import ArtifactError
from artifact.core.io import read_json
from artifact.core.tables import markdown_table

STYLE = {
    "PASS": "green",
    "FAIL": "bold red",
    "SKIP": "yellow",
    "XFAIL": "magenta",
    "XPASS": "bold red",
}
KINDS = {
    "completeness": "Completeness: the run is whole (counts, totals, provenance; fixed by "
    "construction, not findings)",
    "result": "Results: what the experiments found (values that could have come out otherwise)",
}
READING = (
    "In a relation, **a** is the claim's measured quantity and **b** the one it is compared "
    "with (`a < b`: a is lower than b); `~` is equivalence within the margin. p is the "
    "one-sided test's p-value supporting the claim, Holm-adjusted within the experiment's "
    "claims. XFAIL: a known failure, documented in the claims file; XPASS: a known failure "
    "that now holds, a failure (the documented findings changed); SKIP: not judged, with the "
    "reason."
)


def by_kind(results: list[ClaimResult]) -> list[tuple[str, list[ClaimResult]]]:
    """(title, results) for each kind that has claims, completeness first."""
    return [
        (title, [r for r in results if r.kind == kind])
        for kind, title in KINDS.items()
        if any(r.kind == kind for r in results)
    ]


def summary_line(results: list[ClaimResult]) -> str:
    c = counts(results)
    return ", ".join(f"{c[v]} {v}" for v in VERDICTS if c[v]) or "no claims"


def rich_table(results: list[ClaimResult], title: str = "claims") -> Group:
    tables = []
    for heading, part in by_kind(results):
        table = Table(title=f"{title}: {heading}: {summary_line(part)}", show_lines=True)
        table.add_column("claim", overflow="fold", max_width=40)
        table.add_column("expected", overflow="fold", max_width=30)
        table.add_column("observed", overflow="fold", max_width=46)
        table.add_column("verdict")
        table.add_column("reason", overflow="fold", max_width=50)
        for r in part:
            table.add_row(
                r.id, r.expected, r.observed, f"[{STYLE[r.verdict]}]{r.verdict}[/]", r.reason
            )
        tables.append(table)
    return Group(*tables)


CLAIMS_COLUMNS = ("claim", "statement", "source", "expected", "observed", "verdict", "reason")


def claims_rows(results: list[ClaimResult]) -> list[tuple[str, ...]]:
    """The cells of the claims table (Markdown markup: `code`, **bold**), in CLAIMS_COLUMNS."""
    return [
        (f"`{r.id}`", r.statement, r.source, r.expected, r.observed, f"**{r.verdict}**", r.reason)
        for r in results
    ]


def claims_markdown(results: list[ClaimResult]) -> str:
    """The two tables, under a heading each, after how to read them."""
    parts = [READING]
    for heading, part in by_kind(results):
        parts.append(f"### {heading}\n\n{summary_line(part)}\n\n")
        parts.append(markdown_table(claims_rows(part), CLAIMS_COLUMNS))
    return "\n\n".join(p.rstrip("\n") for p in parts) + "\n"


def payload(results: list[ClaimResult], **meta: Any) -> dict:
    return {
        **meta,
        "counts": counts(results),
        "passed": not failing(results),
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
