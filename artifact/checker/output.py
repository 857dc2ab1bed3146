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


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(results: list[ClaimResult]) -> str:
    lines = [
        "| claim | statement | source | expected | observed | verdict | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in (
                    f"`{r.id}`",
                    r.statement,
                    r.source,
                    r.expected,
                    r.observed,
                    f"**{r.verdict}**",
                    r.reason,
                )
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


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
