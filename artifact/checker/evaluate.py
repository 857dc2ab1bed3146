"""Judge every claim of a claims file against a run directory: PASS, FAIL, SKIP, XFAIL or
XPASS.

- SKIP: the claim's experiment is disabled in the profile (with the profile's reason), every
  mode it reads had its server die during start-up (quoting the server's own error), the
  claim has no reference for the hardware at hand, a premise (`depends_on`) is SKIP, or the
  rule cannot judge the data (artifact.checker.rules.Refused: too few values, no spread, an
  alpha the test cannot reach).
- FAIL: the relation or band does not hold, the data it needs is missing or unreadable
  (the reason says which), or a premise FAILed.
- XFAIL: a FAIL the claims file marks as known (`xfail: reason`).
- XPASS: a claim marked xfail that holds: a failure, the documented findings changed.

Multiple comparisons: the relation claims judged by a test form one family per experiment
(claims without one form their own family); their p-values are Holm-adjusted within it, and
a claim PASSes only when its adjusted p is <= its alpha (`details.p_holm`, `details.family`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any

from artifact.checker.query import per_launch, run_query
from artifact.checker.rules import (
    Judgement,
    Refused,
    judge_correlation,
    judge_trend,
    judge_two_sample,
    judge_value,
)
from artifact.checker.stats import holm
from artifact.checker.tables import RunTables
from artifact.config.claims import Claim, ClaimsFile, Query, Reference
from artifact.config.profiles import Profile
from artifact.core.errors import ArtifactError
from artifact.core.records import startup_failure

VERDICTS = ("PASS", "FAIL", "SKIP", "XFAIL", "XPASS")
FAILING = ("FAIL", "XPASS")


@dataclass
class ClaimResult:
    id: str
    statement: str
    source: str
    verdict: str
    kind: str = "result"
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
    if rel.kind in ("correlated", "uncorrelated"):
        return judge_correlation(rel, samples)
    # Comparisons test over server launches, not over runs on one server.
    if rel.kind in ("increasing", "decreasing"):
        return judge_trend(rel, per_launch(samples), claim.unit)
    assert rel.other is not None
    other = run_query(rel.other, tables, profile_raw)
    judged = judge_two_sample(rel, per_launch(samples), per_launch(other), claim.unit)
    judged.expected += f" ({name_sides(query, rel.other)})"
    return judged


def name_sides(a: Query, b: Query) -> str:
    """What sides a and b of a comparison are: the conditions and columns that differ."""

    def side(q: Query, o: Query) -> str:
        parts = [f"{k}={v}" for k, v in q.where.items() if o.where.get(k) != v]
        if q.column != o.column or q.table != o.table:
            parts.append(f"{q.table}.{q.column}")
        return ", ".join(parts) or "the same rows"

    return f"a: {side(a, b)}; b: {side(b, a)}"


def evaluate(
    claims: ClaimsFile,
    tables: RunTables,
    profile: Profile,
    *,
    hardware: str | None = None,
) -> list[ClaimResult]:
    hardware = hardware or tables.hardware()
    profile_raw = profile.raw
    by_id = {c.id: c for c in claims.claims}
    # First every claim's skip reason or judgement, then the Holm adjustment over the tested
    # relations of each family, then the verdicts (premises first).
    outcome: dict[str, Judgement | str] = {}

    def attempt(claim: Claim, stack: tuple[str, ...] = ()) -> Judgement | str:
        if claim.id in outcome:
            return outcome[claim.id]
        if claim.id in stack:
            raise ArtifactError(
                f"claims depend on each other in a cycle: {' -> '.join((*stack, claim.id))}",
                path=claims.path,
            )
        skip = _skip_for_experiment(claim, profile) or _skip_for_refused_modes(claim, tables)
        premises = [attempt(by_id[d], (*stack, claim.id)) for d in claim.depends_on]
        if skip is None:
            skipped = [
                (d, p)
                for d, p in zip(claim.depends_on, premises, strict=True)
                if isinstance(p, str)
            ]
            if skipped:
                skip = f"premise {skipped[0][0]} is SKIP: {skipped[0][1]}"
        if skip is None:
            try:
                skip_or_judged = judge(claim, tables, profile_raw, hardware)
            except ArtifactError as exc:
                skip_or_judged = Judgement(False, _expected_text(claim), "no data", str(exc))
            except Refused as exc:
                skip_or_judged = f"cannot be judged: {exc}"
        else:
            skip_or_judged = skip
        outcome[claim.id] = skip_or_judged
        return skip_or_judged

    for claim in claims.claims:
        attempt(claim)
    families: dict[str, dict[str, float]] = {}
    for claim in claims.claims:
        judged = outcome[claim.id]
        tested = isinstance(judged, Judgement) and "p_value" in judged.details
        if tested and claim.relation is not None and claim.relation.kind != "not_different":
            assert isinstance(judged, Judgement)
            families.setdefault(family_of(claim), {})[claim.id] = judged.details["p_value"]
    for family, members in families.items():
        for ident, adjusted in zip(members, holm(list(members.values())), strict=True):
            judged = outcome[ident]
            assert isinstance(judged, Judgement)
            adjust(judged, adjusted, len(members), family)

    done: dict[str, ClaimResult] = {}

    def verdict_of(claim: Claim) -> ClaimResult:
        if claim.id in done:
            return done[claim.id]
        base: dict[str, Any] = {
            "id": claim.id,
            "statement": claim.statement,
            "source": claim.source,
            "kind": claim.kind,
            "experiment": claim.experiment,
        }
        judgement = outcome[claim.id]
        if isinstance(judgement, str):
            result = ClaimResult(**base, verdict="SKIP", reason=judgement)
            done[claim.id] = result
            return result
        premises = [verdict_of(by_id[d]) for d in claim.depends_on]
        verdict = "PASS" if judgement.passed else "FAIL"
        reason = judgement.reason
        failed = [p for p in premises if p.verdict in ("FAIL", "XFAIL", "XPASS")]
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
            verdict = "XPASS"
            reason = f"the findings changed: marked xfail ({claim.xfail.strip()}) but holds"
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

    return [verdict_of(c) for c in claims.claims]


def family_of(claim: Claim) -> str:
    return claim.experiment or "(no experiment)"


def adjust(judgement: Judgement, adjusted: float, size: int, family: str) -> None:
    """Judge a tested relation by its Holm-adjusted p within its family."""
    judgement.details.update(p_holm=adjusted, family=family, family_size=size)
    if size > 1:
        judgement.observed += f", Holm p={adjusted:.3g} ({size} tests in {family})"
    if judgement.passed and adjusted > judgement.details["alpha"]:
        judgement.passed = False
        judgement.reason = (
            f"holds alone (p={judgement.details['p_value']:.3g}) but not after Holm's "
            f"adjustment over the {size} tested claims of {family} (p={adjusted:.3g} > "
            f"{judgement.details['alpha']:g})"
        )


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


def failing(results: list[ClaimResult]) -> list[str]:
    """The ids of the claims that make `check` exit 1: FAIL and XPASS."""
    return [r.id for r in results if r.verdict in FAILING]


def counts(results: list[ClaimResult]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in results) for v in VERDICTS}
