"""Verdict rules: how each kind of claim is judged. A rule that cannot judge its data
raises Refused (the claim is SKIP with the reason) rather than guess: a side with one value,
zero spread, fewer than 2 pairs, fewer than 4 points for a correlation, an undefined reduced
value (the CV of one value), or an alpha the test cannot reach on these sample sizes.

Value claims (`expect` / `hardware`): the observed value is the query's `reduce` (the mean
of the matching rows when none is given) and PASSes when it lies inside the band
[value - lower allowance, value + upper allowance] (or [min, max]), bounds included; with
`per_row` every matching row must lie inside. The number of rows and their spread are
reported.

Two-sample relations (`quantity` is a, `other` is b), on the repetitions of each side
(`paired_by`: on the per-key means, keys only one side has reported and left out; rows
without a value are reported too). `test: welch` is Welch's t (paired: the paired t);
`test: mann_whitney` is Mann-Whitney U (paired: Wilcoxon signed-rank), exact, or a
permutation test when there are ties (artifact.checker.stats). The claim PASSes when the
one-sided test(s) supporting it reject at alpha:

- `less` / `greater`: H0 a - b >= 0 (<= 0);
- `not_greater` / `not_less` (non-inferiority): H0 a - b >= +margin (<= -margin); margin is
  `margin_abs`, or `margin_rel` x |mean(b)|, the larger when both are given;
- `equivalent` (TOST): both one-sided tests at +-margin, the larger p;
- `not_different`: PASSes when the two-sided test does not reject (weak with few
  repetitions; prefer `equivalent` with a margin).

Two reduced values (`reduce:` on both sides, e.g. each side's CV) are compared as numbers,
without a test, and said so.

Trends (`increasing` / `decreasing`, groups from the query's `by`, in order): the one-sided
Jonckheere-Terpstra test with an exact (or seeded sampled) permutation p-value, p <= alpha.
Four settings of one value each reach p = 1/24; three cannot reach 0.05 and are refused.

Correlations (`correlated` / `uncorrelated`), from the `correlations` table's rows (each row
must hold) or computed by artifact.routing.correlation from the rows' `x` and `column`:
`correlated` when the one-sided Fisher-z test puts rho beyond 0 on the claimed `sign` (and
|r| >= min_abs_r); `uncorrelated` is an equivalence test, the (1 - 2 alpha) Fisher-z interval
inside (-max_abs_r, +max_abs_r). A row whose r is undefined (a constant variable) cannot
support either and FAILs with that reason.

Comparisons and trends test over server launches: where a unit's rows come from several
launches, evaluate hands the rules one value per launch, the median of its runs
(artifact.checker.query.per_launch), and the observed text says so.

Every relation judged by a test reports its p-value (`details.p_value`); evaluate adjusts
them by Holm within each family (the claims of one experiment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from artifact.checker.query import QueryError, Samples, reduce_values, row_labels
from artifact.checker.stats import (
    correlation_p,
    fisher_interval,
    jonckheere_p,
    rank_sum_p,
    signed_rank_p,
    smallest_p,
)
from artifact.config.claims import Reference, Relation
from artifact.routing.correlation import correlation


class Refused(Exception):
    """The rule cannot judge these data (too few values, no spread, an alpha the test
    cannot reach): the claim is SKIP with this reason."""


@dataclass
class Judgement:
    passed: bool
    expected: str
    observed: str
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    a = abs(value)
    if a == 0 or (1e-3 <= a < 1e6):
        text = f"{value:,.4g}" if a < 1000 else f"{value:,.0f}"
    else:
        text = f"{value:.3e}"
    return f"{text} {unit}".strip()


def dropped(**sides: Samples) -> list[str]:
    """A note per side with matching rows that have no value (missing, NaN), which the
    rule leaves out, and per side whose runs were pooled into per-launch medians."""
    notes = []
    for name, s in sides.items():
        of = f" of {name}" if len(sides) > 1 else ""
        if s.missing:
            notes.append(f"{s.missing} row(s){of} without a value left out")
        if s.pooled_runs:
            notes.append(f"{s.pooled_runs} runs{of} as {s.n} per-launch medians")
    return notes


# --- value claims -----------------------------------------------------------------------------


def describe_band(ref: Reference) -> str:
    low, high = ref.band()
    if ref.value is None:
        if ref.min is not None and ref.max is not None:
            return f"in [{fmt(ref.min)}, {fmt(ref.max)}] {ref.unit}".strip()
        if ref.min is not None:
            return f">= {fmt(ref.min, ref.unit)}"
        return f"<= {fmt(ref.max, ref.unit)}"
    if low == high:
        return f"{fmt(ref.value, ref.unit)} (exact)"
    return f"{fmt(ref.value, ref.unit)} [{fmt(low)}, {fmt(high)}]"


def judge_value(samples: Samples, ref: Reference, per_row: bool) -> Judgement:
    low, high = ref.band()
    expected = describe_band(ref)
    if per_row:
        values = np.asarray(samples.values, dtype=np.float64)
        inside = (low <= values) & (values <= high)
        labels = row_labels(samples.rows, ("run", "name", "path"))
        outside = [
            (label, v) for label, v, ok in zip(labels, values, inside, strict=True) if not ok
        ]
        lo, hi = float(values.min()), float(values.max())
        observed = (
            f"{fmt(lo, ref.unit)} in all {samples.n} rows"
            if lo == hi
            else f"{fmt(lo)} to {fmt(hi, ref.unit)} over {samples.n} rows"
        )
        reason = ""
        if outside:
            shown = "; ".join(f"{label or '?'}: {fmt(float(v))}" for label, v in outside[:3])
            reason = f"{len(outside)} of {samples.n} rows outside the band ({shown})"
        return Judgement(not outside, expected, observed, reason, {"low": low, "high": high})
    how = samples.query.reduce or "mean"
    value = reduce_values(samples.values, how)
    if value is None or math.isnan(value):
        raise Refused(f"the {how} of {samples.n} value(s) is undefined")
    observed = fmt(value, ref.unit)
    if how != "count" and samples.n > 1 and samples.query.reduce is None:
        sd = float(np.std(samples.values, ddof=1))
        observed += f" (mean of {samples.n}, sd {fmt(sd)})"
    elif samples.query.reduce not in (None, "first") and samples.n > 1 and how != "count":
        observed += f" ({how} of {samples.n})"
    if samples.removed:
        observed += f"; IQR filter removed {len(samples.removed)}"
    observed += "".join(f"; {note}" for note in dropped(value=samples))
    passed = low <= value <= high
    reason = "" if passed else f"outside the band [{fmt(low)}, {fmt(high)}]"
    details = {"value": value, "low": low, "high": high, "dropped": samples.missing}
    return Judgement(passed, expected, observed, reason, details)


# --- two-sample relations ---------------------------------------------------------------------


@dataclass
class Pairing:
    """The per-key means both sides have, and the keys only one side has."""

    a: np.ndarray
    b: np.ndarray
    only_a: list
    only_b: list


def pairs(a: Samples, b: Samples, key: str | list[str]) -> Pairing:
    """Mean of each side per value of the `key` columns (in the order a first has them)."""
    import pandas as pd

    columns = [key] if isinstance(key, str) else list(key)

    def means(s: Samples) -> pd.Series:
        values = pd.Series(s.values, index=s.rows.index, dtype=np.float64)
        keys = [s.rows[c] if c in s.rows else pd.Series(None, index=s.rows.index) for c in columns]
        return values.groupby(keys, sort=False, dropna=False).mean()

    left, right = means(a), means(b)
    keys = left.index.intersection(right.index, sort=False)
    if keys.empty:
        raise QueryError(f"no common values of {columns} to pair the two quantities on")
    return Pairing(
        left[keys].to_numpy(),
        right[keys].to_numpy(),
        left.index.difference(right.index, sort=False).tolist(),
        right.index.difference(left.index, sort=False).tolist(),
    )


@dataclass
class Difference:
    """mean(a) - mean(b), its standard error and degrees of freedom (Welch, or the paired t
    of the per-pair differences)."""

    estimate: float
    se: float
    df: float

    def p_below(self, limit: float) -> float:
        """p of 'the difference is below limit' (H0: difference >= limit)."""
        return float(stats.t.cdf((self.estimate - limit) / self.se, self.df))

    def p_above(self, limit: float) -> float:
        return float(stats.t.sf((self.estimate - limit) / self.se, self.df))

    def interval(self, confidence: float) -> tuple[float, float]:
        half = float(stats.t.ppf((1 + confidence) / 2, self.df)) * self.se
        return self.estimate - half, self.estimate + half


def welch(x: np.ndarray, y: np.ndarray) -> Difference:
    """The Welch difference of two samples of at least 2 values each, not both constant."""
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se2 = va + vb
    df = se2**2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    return Difference(float(x.mean() - y.mean()), math.sqrt(se2), float(df))


def _margin(rel: Relation, b_mean: float) -> float:
    margins = []
    if rel.margin_abs is not None:
        margins.append(rel.margin_abs)
    if rel.margin_rel is not None:
        margins.append(rel.margin_rel * abs(b_mean))
    return max(margins) if margins else 0.0


SYMBOL = {
    "less": "<",
    "greater": ">",
    "not_greater": "<=",
    "not_less": ">=",
    "equivalent": "~",
    "not_different": "~",
}
# The one-sided tests whose rejection supports the claim: (alternative, the sign of the
# margin that a - b is tested against).
ONE_SIDED = {
    "less": [("less", 0)],
    "not_greater": [("less", 1)],
    "greater": [("greater", 0)],
    "not_less": [("greater", -1)],
    "equivalent": [("less", 1), ("greater", -1)],
}


def _point(rel: Relation, a: Samples, b: Samples, unit: str) -> Judgement:
    """Two reduced values (e.g. each side's CV): compared as numbers, without a test."""
    va, vb = a.scalar, b.scalar
    if va is None or vb is None or math.isnan(va) or math.isnan(vb):
        raise Refused(f"a reduced side is undefined (a {fmt(va)}, b {fmt(vb)})")
    margin = _margin(rel, vb)
    expected = f"a {SYMBOL[rel.kind]} b" + (f" (margin {fmt(margin)})" if margin else "")
    observed = f"a {fmt(va, unit)} vs b {fmt(vb, unit)} (two reduced values: no test)"
    observed += "".join(f"; {note}" for note in dropped(a=a, b=b))
    if rel.kind == "not_different":
        raise Refused("'not different' needs repetitions on both sides, not reduced values")
    passed = {
        "less": va < vb,
        "greater": va > vb,
        "not_greater": va <= vb + margin,
        "not_less": va >= vb - margin,
        "equivalent": abs(va - vb) <= margin,
    }[rel.kind]
    reason = "" if passed else "the reduced values do not satisfy the relation"
    return Judgement(passed, expected, observed, reason, {"a": va, "b": vb, "margin": margin})


def _require(test: str, sizes: list[int], rel: Relation, two_sided: bool = False) -> None:
    floor = smallest_p(test, sizes, two_sided)
    if floor > rel.alpha:
        raise Refused(
            f"the {TEST_NAME[test]} test on {' vs '.join(map(str, sizes))} values cannot reach "
            f"alpha={rel.alpha:g} (its smallest p is {floor:.3g}): add repetitions or raise alpha"
        )


TEST_NAME = {"rank_sum": "Mann-Whitney", "signed_rank": "Wilcoxon signed-rank"}


def judge_two_sample(rel: Relation, a: Samples, b: Samples, unit: str = "") -> Judgement:
    if a.scalar is not None and b.scalar is not None:
        return _point(rel, a, b, unit)
    if a.scalar is not None or b.scalar is not None:
        raise QueryError("compare either two reduced values or two sets of samples, not a mix")
    x = np.asarray(a.values, dtype=np.float64)
    y = np.asarray(b.values, dtype=np.float64)
    details: dict[str, Any] = {"dropped": {"a": a.missing, "b": b.missing}}
    notes = dropped(a=a, b=b)
    if rel.paired_by:
        paired = pairs(a, b, rel.paired_by)
        details["unmatched"] = {"a": paired.only_a, "b": paired.only_b}
        for side, keys in (("a", paired.only_a), ("b", paired.only_b)):
            if keys:
                shown = ", ".join(map(str, keys[:3])) + (", ..." if len(keys) > 3 else "")
                notes.append(f"{len(keys)} key(s) only in {side} left unpaired ({shown})")
        x, y = paired.a, paired.b
        if x.size < 2:
            raise Refused(f"{x.size} pair(s): a paired test needs at least 2")
    else:
        small = [f"{side} has {v.size} value" for side, v in (("a", x), ("b", y)) if v.size < 2]
        if small:
            raise Refused(
                f"{' and '.join(small)}: one value has no spread to test a difference against "
                "(add repetitions, or compare reduced values)"
            )
    b_mean = float(y.mean())
    margin = _margin(rel, b_mean)
    by = rel.paired_by if isinstance(rel.paired_by, str) else "+".join(rel.paired_by or [])
    n_text = f"{x.size} pairs by {by}" if rel.paired_by else f"n={x.size} vs n={y.size}"
    observed = (
        f"a {fmt(float(x.mean()), unit)} vs b {fmt(b_mean, unit)} ({n_text}): "
        f"diff {fmt(float(x.mean()) - b_mean)}"
    )
    expected = f"a {SYMBOL[rel.kind]} b" + (f" (margin {fmt(margin)})" if margin else "")
    details.update(margin=margin, alpha=rel.alpha)
    two_sided = rel.kind == "not_different"
    if rel.test == "mann_whitney":
        test = "signed_rank" if rel.paired_by else "rank_sum"
        _require(test, [x.size] if rel.paired_by else [x.size, y.size], rel, two_sided)
        name = TEST_NAME[test]

        def p_of(alternative: str, shift: float) -> float:
            if rel.paired_by:
                p, how = signed_rank_p(x - shift - y, alternative)
            else:
                p, how = rank_sum_p(x - shift, y, alternative)
            details["method"] = how
            return p

        if two_sided:
            p = p_of("two-sided", 0.0)
        else:
            p = max(p_of(alt, sign * margin) for alt, sign in ONE_SIDED[rel.kind])
        observed += f", {name} p={p:.3g} ({details['method']})"
    else:
        if rel.paired_by:
            d = x - y
            if np.ptp(d) == 0:
                raise Refused("the paired differences are all equal: zero spread, no t test")
            diff = Difference(float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size)), d.size - 1)
            name = "paired t"
        else:
            if np.ptp(x) == 0 and np.ptp(y) == 0:
                raise Refused("both sides have zero spread: no t test")
            diff = welch(x, y)
            name = "Welch t"
        details.update(difference=diff.estimate, se=diff.se)
        if two_sided:
            p = 2 * min(diff.p_below(0.0), diff.p_above(0.0))
        else:
            p = max(
                diff.p_below(sign * margin) if alt == "less" else diff.p_above(sign * margin)
                for alt, sign in ONE_SIDED[rel.kind]
            )
        level = 1 - rel.alpha * (1 if two_sided else 2)
        low, high = diff.interval(level)
        observed += f", {name} p={p:.3g}, {100 * level:.0f}% CI [{fmt(low)}, {fmt(high)}]"
    details["p_value"] = p
    details["test"] = name
    if notes:
        observed += "; " + "; ".join(notes)
    if two_sided:
        passed = p > rel.alpha
        reason = (
            "" if passed else f"the {name} test finds a difference (p={p:.3g} <= {rel.alpha:g})"
        )
    else:
        passed = p <= rel.alpha
        reason = "" if passed else f"the {name} test at alpha={rel.alpha:g} does not support it"
    return Judgement(passed, expected, observed, reason, details)


# --- trends -----------------------------------------------------------------------------------


def judge_trend(rel: Relation, samples: Samples, unit: str = "") -> Judgement:
    groups = samples.groups()
    keys = [k for k in groups if k is not None]
    if len(keys) < 2:
        raise QueryError(f"a trend needs at least 2 values of '{samples.query.by}', got {keys}")
    sizes = [len(groups[k]) for k in keys]
    floor = smallest_p("jonckheere", sizes)
    if floor > rel.alpha:
        raise Refused(
            f"{len(keys)} settings with {'/'.join(map(str, sizes))} values cannot show a trend "
            f"at alpha={rel.alpha:g} (the Jonckheere-Terpstra test's smallest p is "
            f"{floor:.3g}): add settings or repetitions"
        )
    increasing = rel.kind == "increasing"
    statistic, p = jonckheere_p([groups[k] for k in keys], "greater" if increasing else "less")
    means = [float(np.mean(groups[k])) for k in keys]
    series = ", ".join(f"{k}: {fmt(m)}" for k, m in zip(keys, means, strict=True))
    expected = f"{rel.kind} in {samples.query.by}: one-sided Jonckheere-Terpstra p <= {rel.alpha:g}"
    observed = (
        f"means {series}{f' {unit}' if unit else ''} ({min(sizes)}+ values each); "
        f"JT={statistic:g}, p={p:.3g}"
    )
    observed += "".join(f"; {note}" for note in dropped(values=samples))
    passed = p <= rel.alpha
    reason = "" if passed else f"no {rel.kind} trend at alpha={rel.alpha:g} (p={p:.3g})"
    details = {
        "p_value": p,
        "statistic": statistic,
        "keys": keys,
        "means": means,
        "alpha": rel.alpha,
        "dropped": samples.missing,
    }
    return Judgement(passed, expected, observed, reason, details)


# --- correlations -----------------------------------------------------------------------------


def correlation_rows(rel: Relation, samples: Samples) -> list[dict]:
    """Correlation rows to judge: the table's own rows, or one computed from x and column."""
    if samples.query.table == "correlations":
        return [
            {
                "label": f"{r.get('group')}: {r.get('x')} vs {r.get('y')} ({r.get('method')})",
                "r": r.get("r"),
                "n": r.get("n"),
                "method": r.get("method") or rel.method,
                "note": r.get("note"),
            }
            for r in samples.matched_rows.to_dict("records")
        ]
    if not rel.x:
        raise QueryError("a correlation over table rows needs relation.x (the x column)")
    xs = samples.rows[rel.x].tolist() if rel.x in samples.rows else [None] * samples.n
    c = correlation(xs, samples.values, method=rel.method)
    return [
        {
            "label": f"{rel.x} vs {samples.query.column} ({rel.method})",
            "r": c.r,
            "n": c.n,
            "method": rel.method,
            "note": c.note,
        }
    ]


def judge_correlation(rel: Relation, samples: Samples) -> Judgement:
    """`correlated`: rho beyond 0 on the claimed side (one-sided Fisher-z test) and |r| >=
    min_abs_r; `uncorrelated`: an equivalence test, the (1 - 2 alpha) Fisher-z interval of
    rho inside (-max_abs_r, +max_abs_r). Every row must hold; the claim's p is the largest."""
    rows = correlation_rows(rel, samples)
    level = 1 - 2 * rel.alpha
    each = f" (each of {len(rows)})" if len(rows) > 1 else ""
    if rel.kind == "correlated":
        expected = f"{rel.sign} rho: Fisher-z p <= {rel.alpha:g}" + (
            f", |r| >= {rel.min_abs_r:g}" if rel.min_abs_r else ""
        )
    else:
        expected = f"|rho| < {rel.max_abs_r:g}: {100 * level:.0f}% Fisher-z CI inside"
    expected += each
    failed, undefined, pvalues = [], [], []
    for row in rows:
        if row["r"] is None:
            undefined.append(row)
            continue
        if row["n"] is None or row["n"] < 4:
            raise Refused(f"{row['label']}: n={row['n']}, the Fisher-z interval needs 4 points")
        row["ci_low"], row["ci_high"] = fisher_interval(row["r"], row["n"], row["method"], level)
        if rel.kind == "correlated":
            p = correlation_p(row["r"], row["n"], row["method"], rel.sign, 0.0)
            ok = p <= rel.alpha and abs(row["r"]) >= rel.min_abs_r
        else:
            assert rel.max_abs_r is not None
            p = correlation_p(row["r"], row["n"], row["method"], "within", rel.max_abs_r)
            ok = p <= rel.alpha
        row["p"] = p
        pvalues.append(p)
        if not ok:
            failed.append(row)

    def one(row: dict) -> str:
        if row["r"] is None:
            return f"{row['label']}: undefined ({row['note'] or 'no value'})"
        return (
            f"{row['label']}: r={row['r']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}], "
            f"n={row['n']}, p={row['p']:.3g}"
        )

    if len(rows) == 1:
        observed = one(rows[0])
    else:
        defined = [r for r in rows if r["r"] is not None]
        biggest = max((abs(r["r"]) for r in defined), default=float("nan"))
        observed = (
            f"{len(rows) - len(failed) - len(undefined)} of {len(rows)} hold; "
            f"max |r| {biggest:.2f}" + (f"; {len(undefined)} undefined" if undefined else "")
        )
    reasons = []
    if failed:
        reasons.append("does not hold for " + "; ".join(one(r) for r in failed[:3]))
    if undefined:
        reasons.append("cannot be judged for " + "; ".join(one(r) for r in undefined[:3]))
    details: dict[str, Any] = {"rows": rows, "alpha": rel.alpha}
    if pvalues and not undefined:
        details["p_value"] = max(pvalues)
    return Judgement(not failed and not undefined, expected, observed, " | ".join(reasons), details)
