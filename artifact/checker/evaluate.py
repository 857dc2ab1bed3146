"""Judge every claim of a claims file against a run directory: PASS, FAIL, SKIP or XFAIL.

- SKIP: the claim's experiment is disabled in the profile (with the profile's reason), every
  mode it reads had its server die during start-up (quoting the server's own error), the
  claim has no reference for the hardware at hand, or a premise (`depends_on`) is SKIP.
- FAIL: the relation or band does not hold, the data it needs is missing or unreadable
  (the reason says which), or a premise FAILed.
- XFAIL: a FAIL the claims file marks as known (`xfail: reason`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any

from artifact.checker.query import run_query
from artifact.checker.rules import (
    Judgement,
    judge_correlation,
    judge_trend,
    judge_two_sample,
    judge_value,
)
from artifact.checker.tables import RunTables
from artifact.config.claims import Claim, ClaimsFile, Reference
from artifact.config.profiles import Profile
from artifact.core.errors import ArtifactError
from artifact.core.records import startup_failure

VERDICTS = ("PASS", "FAIL", "SKIP", "XFAIL")


@dataclass
class ClaimResult:
    id: str
    statement: str
    source: str
    verdict: str
    expected: str = ""
    observed: str = ""
    reason: str = ""
    experiment: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def _skip_for_experiment(claim: Claim, profile: Profile) -> str | None:
    if claim.experiment is None:
        return None
    exp = getattr(profile.experiments, claim.experiment)
    if exp is None:
        return f"the profile '{profile.name}' has no {claim.experiment} experiment"
    if not exp.enabled:
        reason = getattr(exp, "skip_reason", None) or "disabled in the profile"
        return f"{claim.experiment} is disabled in profile '{profile.name}': {reason.strip()}"
    return None


def _skip_for_refused_modes(claim: Claim, tables: RunTables) -> str | None:
    queries = [claim.quantity] + ([claim.relation.other] if claim.relation else [])
    modes = [q.where.get("mode") for q in queries if q is not None]
    names = [m for value in modes for m in ([value] if isinstance(value, str) else value or [])]
    errors = {name: startup_failure(tables.layout, name) for name in dict.fromkeys(names)}
    if not errors or not all(errors.values()):
        return None
    return "; ".join(f"mode {m}: the server died during start-up: {e}" for m, e in errors.items())


def pick_reference(claim: Claim, hardware: str) -> tuple[Reference | None, str]:
    if claim.expect is not None:
        return claim.expect, ""
    assert claim.hardware is not None
    for pattern, ref in claim.hardware.items():
        if fnmatch.fnmatch(hardware.lower(), pattern.lower()):
            return ref, pattern
    return None, (
        f"no reference for hardware '{hardware}' (references for: {', '.join(claim.hardware)})"
    )


def judge(claim: Claim, tables: RunTables, profile_raw: dict, hardware: str) -> Judgement | str:
    """The judgement, or a SKIP reason."""
    ref = None
    if claim.relation is None:
        ref, why = pick_reference(claim, hardware)
        if ref is None:
            return why
    query = claim.quantity
    rel = claim.relation
    if rel is not None and rel.kind in ("correlated", "uncorrelated") and query.iqr_filter:
        # The correlation applies the IQR rule itself, to both variables.
        samples = run_query(query.model_copy(update={"iqr_filter": False}), tables, profile_raw)
        samples.query = query
    else:
        samples = run_query(query, tables, profile_raw)
    if rel is None:
        assert ref is not None
        return judge_value(samples, ref, claim.per_row)
    if rel.kind in ("increasing", "decreasing"):
        return judge_trend(rel, samples, claim.unit)
    if rel.kind in ("correlated", "uncorrelated"):
        return judge_correlation(rel, samples)
    assert rel.other is not None
    other = run_query(rel.other, tables, profile_raw)
    return judge_two_sample(rel, samples, other, claim.unit)


def evaluate(
    claims: ClaimsFile,
    tables: RunTables,
    profile: Profile,
    *,
    hardware: str | None = None,
) -> list[ClaimResult]:
    hardware = hardware or tables.hardware()
    profile_raw = profile._raw if profile._raw is not None else profile.model_dump(mode="json")
    by_id = {c.id: c for c in claims.claims}
    done: dict[str, ClaimResult] = {}

    def run(claim: Claim, stack: tuple[str, ...] = ()) -> ClaimResult:
        if claim.id in done:
            return done[claim.id]
        if claim.id in stack:
            raise ArtifactError(
                f"claims depend on each other in a cycle: {' -> '.join((*stack, claim.id))}",
                path=claims.path,
            )
        base: dict[str, Any] = {
            "id": claim.id,
            "statement": claim.statement,
            "source": claim.source,
            "experiment": claim.experiment,
        }
        skip = _skip_for_experiment(claim, profile) or _skip_for_refused_modes(claim, tables)
        premises = [run(by_id[d], (*stack, claim.id)) for d in claim.depends_on]
        if skip is None:
            skipped = [p for p in premises if p.verdict == "SKIP"]
            if skipped:
                skip = f"premise {skipped[0].id} is SKIP: {skipped[0].reason}"
        if skip is not None:
            result = ClaimResult(**base, verdict="SKIP", reason=skip)
            done[claim.id] = result
            return result
        try:
            judgement = judge(claim, tables, profile_raw, hardware)
        except ArtifactError as exc:
            judgement = Judgement(False, _expected_text(claim), "no data", str(exc))
        if isinstance(judgement, str):
            result = ClaimResult(**base, verdict="SKIP", reason=judgement)
        else:
            verdict = "PASS" if judgement.passed else "FAIL"
            reason = judgement.reason
            failed = [p for p in premises if p.verdict in ("FAIL", "XFAIL")]
            if failed:
                premise = (
                    f"premise {failed[0].id} FAILs ({failed[0].statement.rstrip('.')}: "
                    f"observed {failed[0].observed})"
                )
                reason = premise if verdict == "PASS" else f"{reason}; {premise}"
                verdict = "FAIL"
            if verdict == "FAIL" and claim.xfail:
                verdict = "XFAIL"
                reason = f"known: {claim.xfail.strip()} ({reason})"
            elif verdict == "PASS" and claim.xfail:
                reason = f"marked xfail ({claim.xfail.strip()}) but holds"
            details = dict(judgement.details)
            details["hardware"] = hardware
            result = ClaimResult(
                **base,
                verdict=verdict,
                expected=judgement.expected,
                observed=judgement.observed,
                reason=reason,
                details=_jsonable(details),
            )
        done[claim.id] = result
        return result

    return [run(c) for c in claims.claims]


def _expected_text(claim: Claim) -> str:
    if claim.relation is not None:
        return claim.relation.kind
    if claim.expect is not None:
        from artifact.checker.rules import describe_band

        return describe_band(claim.expect)
    return "hardware-keyed reference"


def _jsonable(value: Any) -> Any:
    """Numbers and containers only (numpy scalars become Python numbers, NaN None)."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def counts(results: list[ClaimResult]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in results) for v in VERDICTS}
