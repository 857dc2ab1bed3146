"""Verdict rules: how each kind of claim is judged, with the repetitions when there are any.

Value claims (`expect` / `hardware`): the observed value is the query's `reduce` (the mean
of the matching rows when none is given) and PASSes when it lies inside the band
[value - lower allowance, value + upper allowance] (or [min, max]), bounds included; with
`per_row` every matching row must lie inside. The number of rows and their spread are
reported.

Two-sample relations (`quantity` is a, `other` is b; both reduced to one number each, or one
side with a single row, mean a point comparison, reported as such):

- `less` / `greater`: a < b (a > b). With repetitions (>= 2 values on a side), `test: welch`
  PASSes when the one-sided (1 - alpha) Welch interval of mean(a) - mean(b) excludes zero in
  the claimed direction (with `paired_by`: the paired-t interval of the per-pair
  differences); `test: mann_whitney` when the one-sided Mann-Whitney U test (paired:
  Wilcoxon signed-rank) rejects at alpha.
- `not_greater` / `not_less` (non-inferiority, "a is not slower than b"): the one-sided
  (1 - alpha) bound of mean(a) - mean(b) stays below +margin (above -margin); margin is
  `margin_abs`, or `margin_rel` x |mean(b)|, the larger when both are given.
- `equivalent` (TOST): the two-sided (1 - 2 alpha) interval of the difference lies inside
  (-margin, +margin).
- `not_different`: the two-sided (1 - alpha) interval of the difference contains zero
  (Mann-Whitney: the two-sided test does not reject). Weak with few repetitions; prefer
  `equivalent` with a margin where one can be argued. Needs repetitions.

Trends (`increasing` / `decreasing`, groups from the query's `by`): Spearman's rho of the
group key against the group means must be >= min_rho (<= -min_rho); with repetitions and
`ends: true`, the last group must also differ from the first in the claimed direction: by
the one-sided Welch rule at alpha, or with `test: mann_whitney` by the one-sided
Mann-Whitney U test (p <= alpha), which a single outlying repetition cannot defeat.

Correlations (`correlated` / `uncorrelated`), from the `correlations` table's rows (each row
must hold) or computed by artifact.routing.correlation from the rows' `x` and `column`
(bootstrap 95% interval; the query's `iqr_filter` applies the study's 1.5 x IQR rule to both
variables and reports what it removed): `correlated` PASSes when the interval excludes zero
on the claimed `sign` side and |r| >= min_abs_r; `uncorrelated` when the interval contains
zero (and |r| <= max_abs_r when given). A row whose r is undefined (a constant variable,
fewer than 3 points) cannot support either and FAILs with that reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from artifact.checker.query import QueryError, Samples, reduce_values, row_labels
from artifact.config.claims import Reference, Relation
from artifact.routing.correlation import correlation


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
    assert value is not None
    observed = fmt(value, ref.unit)
    if how != "count" and samples.n > 1 and samples.query.reduce is None:
        sd = float(np.std(samples.values, ddof=1))
        observed += f" (mean of {samples.n}, sd {fmt(sd)})"
    elif samples.query.reduce not in (None, "first") and samples.n > 1 and how != "count":
        observed += f" ({how} of {samples.n})"
    if samples.removed:
        observed += f"; IQR filter removed {len(samples.removed)}"
    passed = low <= value <= high
    reason = "" if passed else f"outside the band [{fmt(low)}, {fmt(high)}]"
    return Judgement(passed, expected, observed, reason, {"value": value, "low": low, "high": high})


# --- two-sample relations ---------------------------------------------------------------------


@dataclass
class Difference:
    """mean(a) - mean(b) and how to bound it."""

    estimate: float
    se: float
    df: float
    paired: bool
    n_a: int
    n_b: int

    def bound(self, confidence: float, side: str) -> float:
        """One-sided bound ('upper' or 'lower') at `confidence`."""
        if self.se == 0:
            return self.estimate
        t = stats.t.ppf(confidence, self.df)
        return self.estimate + t * self.se if side == "upper" else self.estimate - t * self.se

    def interval(self, confidence: float) -> tuple[float, float]:
        tail = (1 + confidence) / 2
        return self.bound(tail, "lower"), self.bound(tail, "upper")


def _pairs(a: Samples, b: Samples, key: str | list[str]) -> tuple[np.ndarray, np.ndarray, list]:
    """Mean of each side per value of the `key` columns, for the values both sides have (in
    the order a first has them)."""
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
    return left[keys].to_numpy(), right[keys].to_numpy(), keys.tolist()


def difference(a: Samples, b: Samples, paired_by: str | list[str] | None) -> Difference:
    if paired_by:
        x, y, _ = _pairs(a, b, paired_by)
        d = x - y
        n = d.size
        se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        return Difference(float(d.mean()), se, max(n - 1, 1), True, n, n)
    va = np.asarray(a.values, dtype=np.float64)
    vb = np.asarray(b.values, dtype=np.float64)
    parts = [(v.var(ddof=1) / v.size, v.size) for v in (va, vb) if v.size > 1]
    se2 = sum(p for p, _ in parts)
    df = se2**2 / sum(p**2 / (n - 1) for p, n in parts) if se2 > 0 else 1.0
    return Difference(float(va.mean() - vb.mean()), math.sqrt(se2), df, False, va.size, vb.size)


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


def _mann_whitney(rel: Relation, a: Samples, b: Samples, shift: float) -> float:
    """p-value of the rank test for the relation (a shifted by -shift)."""
    alternative = {
        "less": "less",
        "not_greater": "less",
        "greater": "greater",
        "not_less": "greater",
        "not_different": "two-sided",
    }[rel.kind]
    if rel.paired_by:
        x, y, _ = _pairs(a, b, rel.paired_by)
        d = x - shift - y
        if np.all(d == 0):
            return 1.0
        return float(stats.wilcoxon(d, alternative=alternative).pvalue)
    x = np.asarray(a.values) - shift
    return float(stats.mannwhitneyu(x, b.values, alternative=alternative).pvalue)


def judge_two_sample(rel: Relation, a: Samples, b: Samples, unit: str = "") -> Judgement:
    sym = SYMBOL[rel.kind]
    point = (a.scalar is not None or a.n == 1) and (b.scalar is not None or b.n == 1)
    if point:
        va = a.scalar if a.scalar is not None else a.values[0]
        vb = b.scalar if b.scalar is not None else b.values[0]
        margin = _margin(rel, vb)
        expected = f"a {sym} b" + (f" (margin {fmt(margin)})" if margin else "")
        observed = f"a {fmt(va, unit)} vs b {fmt(vb, unit)} (point values, no repetitions)"
        checks = {
            "less": va < vb,
            "greater": va > vb,
            "not_greater": va <= vb + margin,
            "not_less": va >= vb - margin,
            "equivalent": abs(va - vb) <= margin,
        }
        if rel.kind == "not_different":
            return Judgement(
                False,
                expected,
                observed,
                "'not different' needs repetitions on at least one side (or use 'equivalent' "
                "with a margin)",
            )
        passed = checks[rel.kind]
        return Judgement(
            passed,
            expected,
            observed,
            "" if passed else "the point values do not satisfy the relation",
            {"a": va, "b": vb, "margin": margin},
        )
    if a.scalar is not None or b.scalar is not None:
        raise QueryError("compare either two reduced values or two sets of samples, not a mix")
    diff = difference(a, b, rel.paired_by)
    b_mean = float(np.mean(b.values))
    margin = _margin(rel, b_mean)
    by = rel.paired_by if isinstance(rel.paired_by, str) else "+".join(rel.paired_by or [])
    paired = f", paired by {by} (n={diff.n_a})" if diff.paired else ""
    observed = (
        f"a {fmt(float(np.mean(a.values)), unit)} (n={a.n}) vs b {fmt(b_mean, unit)} "
        f"(n={b.n}){paired}: diff {fmt(diff.estimate)}"
    )
    expected = f"a {sym} b" + (f" (margin {fmt(margin)})" if margin else "")
    alpha = rel.alpha
    details: dict[str, Any] = {"difference": diff.estimate, "se": diff.se, "margin": margin}
    if rel.test == "mann_whitney" and rel.kind != "equivalent":
        shift = {"not_greater": margin, "not_less": -margin}.get(rel.kind, 0.0)
        p = _mann_whitney(rel, a, b, shift)
        details["p_value"] = p
        name = "Wilcoxon" if rel.paired_by else "Mann-Whitney"
        observed += f", {name} p={p:.3g}"
        passed = p > alpha if rel.kind == "not_different" else p <= alpha
        reason = "" if passed else f"{name} test at alpha={alpha} does not support the relation"
        return Judgement(passed, expected, observed, reason, details)
    if rel.kind in ("less", "not_greater"):
        bound = diff.bound(1 - alpha, "upper")
        limit = 0.0 if rel.kind == "less" else margin
        passed = bound < limit if rel.kind == "less" else bound <= limit
        observed += f", {100 * (1 - alpha):.0f}% upper bound {fmt(bound)}"
        reason = "" if passed else f"the upper bound {fmt(bound)} is not below {fmt(limit)}"
    elif rel.kind in ("greater", "not_less"):
        bound = diff.bound(1 - alpha, "lower")
        limit = 0.0 if rel.kind == "greater" else -margin
        passed = bound > limit if rel.kind == "greater" else bound >= limit
        observed += f", {100 * (1 - alpha):.0f}% lower bound {fmt(bound)}"
        reason = "" if passed else f"the lower bound {fmt(bound)} is not above {fmt(limit)}"
    elif rel.kind == "equivalent":
        low, high = diff.interval(1 - 2 * alpha)
        passed = -margin < low and high < margin
        observed += f", {100 * (1 - 2 * alpha):.0f}% CI [{fmt(low)}, {fmt(high)}]"
        reason = "" if passed else f"the interval is not inside (-{fmt(margin)}, {fmt(margin)})"
    else:  # not_different
        low, high = diff.interval(1 - alpha)
        passed = low <= 0 <= high
        observed += f", {100 * (1 - alpha):.0f}% CI [{fmt(low)}, {fmt(high)}]"
        reason = "" if passed else "the interval of the difference excludes zero"
    details["bound_or_interval"] = observed.rsplit(", ", 1)[-1]
    return Judgement(passed, expected, observed, reason, details)


# --- trends -----------------------------------------------------------------------------------


def judge_trend(rel: Relation, samples: Samples, unit: str = "") -> Judgement:
    groups = samples.groups()
    keys = [k for k in groups if k is not None]
    if len(keys) < 2:
        raise QueryError(f"a trend needs at least 2 values of '{samples.query.by}', got {keys}")
    means = [float(np.mean(groups[k])) for k in keys]
    rho = float(stats.spearmanr(keys, means).statistic) if len(set(means)) > 1 else 0.0
    increasing = rel.kind == "increasing"
    expected = f"{rel.kind} in {samples.query.by}: Spearman rho {'>=' if increasing else '<='} " + (
        f"{rel.min_rho:g}" if increasing else f"{-rel.min_rho:g}"
    )

    series = ", ".join(f"{k}: {fmt(m)}" for k, m in zip(keys, means, strict=True))
    reps = min(len(groups[k]) for k in keys)
    if rel.ends and reps > 1:
        test = "Mann-Whitney" if rel.test == "mann_whitney" else "Welch"
        expected += f"; last vs first apart (one-sided {test}, alpha {rel.alpha:g})"
    observed = f"rho={rho:.2f} over {len(keys)} settings ({series}{f' {unit}' if unit else ''})"
    if reps > 1:
        observed += f", {reps}+ repetitions each"
    passed = rho >= rel.min_rho if increasing else rho <= -rel.min_rho
    reason = "" if passed else f"rho={rho:.2f} does not reach {rel.min_rho:g} in that direction"
    details: dict[str, Any] = {"rho": rho, "keys": keys, "means": means}
    first, last = groups[keys[0]], groups[keys[-1]]
    if rel.ends and len(first) > 1 and len(last) > 1 and rel.test == "mann_whitney":
        side = "greater" if increasing else "less"
        p = float(stats.mannwhitneyu(last, first, alternative=side).pvalue)
        details["ends_p_value"] = p
        observed += f"; last vs first: Mann-Whitney p={p:.3g}"
        if passed and p > rel.alpha:
            passed = False
            reason = (
                f"the last setting does not differ from the first beyond the noise "
                f"(one-sided Mann-Whitney p={p:.3g} > {rel.alpha:g})"
            )
    elif rel.ends and len(first) > 1 and len(last) > 1:
        va, vb = np.asarray(last, dtype=float), np.asarray(first, dtype=float)
        se2 = va.var(ddof=1) / va.size + vb.var(ddof=1) / vb.size
        est = float(va.mean() - vb.mean())
        if se2 > 0:
            df = se2**2 / (
                (va.var(ddof=1) / va.size) ** 2 / (va.size - 1)
                + (vb.var(ddof=1) / vb.size) ** 2 / (vb.size - 1)
            )
            t = stats.t.ppf(1 - rel.alpha, df)
            bound = est - t * math.sqrt(se2) if increasing else est + t * math.sqrt(se2)
        else:
            bound = est
        ends_ok = bound > 0 if increasing else bound < 0
        details["ends_bound"] = bound
        observed += f"; last - first {fmt(est)}, one-sided bound {fmt(bound)}"
        if passed and not ends_ok:
            passed = False
            reason = (
                f"the last setting does not differ from the first beyond the noise "
                f"(one-sided {100 * (1 - rel.alpha):.0f}% bound {fmt(bound)})"
            )
    return Judgement(passed, expected, observed, reason, details)


# --- correlations -----------------------------------------------------------------------------


def _corr_row_ok(rel: Relation, r, low, high) -> tuple[bool, str]:
    if r is None or low is None or high is None:
        return False, "undefined"
    if rel.kind == "correlated":
        if rel.sign == "positive":
            return low > 0 and r >= rel.min_abs_r, ""
        return high < 0 and r <= -rel.min_abs_r, ""
    ok = low <= 0 <= high and (rel.max_abs_r is None or abs(r) <= rel.max_abs_r)
    return ok, ""


def correlation_rows(rel: Relation, samples: Samples) -> list[dict]:
    """Correlation rows to judge: the table's own rows, or one computed from x and column."""
    if samples.query.table == "correlations":
        # Every matching row: an undefined r (constant input) is a row that cannot hold.
        return [
            {
                "label": f"{r.get('group')}: {r.get('x')} vs {r.get('y')} ({r.get('method')})",
                "r": r.get("r"),
                "ci_low": r.get("ci_low"),
                "ci_high": r.get("ci_high"),
                "n": r.get("n"),
                "note": r.get("note"),
                "n_removed": r.get("n_removed") or 0,
            }
            for r in samples.matched_rows.to_dict("records")
        ]
    if not rel.x:
        raise QueryError("a correlation over table rows needs relation.x (the x column)")
    xs = samples.rows[rel.x].tolist() if rel.x in samples.rows else [None] * samples.n
    labels = [i if label is None else label for i, label in enumerate(row_labels(samples.rows))]
    c = correlation(
        xs,
        samples.values,
        method=rel.method,
        iqr=samples.query.iqr_filter,
        labels=labels,
    )
    return [
        {
            "label": f"{rel.x} vs {samples.query.column} ({rel.method})",
            "r": c.r,
            "ci_low": c.ci_low,
            "ci_high": c.ci_high,
            "n": c.n,
            "note": c.note,
            "n_removed": len(c.removed),
        }
    ]


def judge_correlation(rel: Relation, samples: Samples) -> Judgement:
    rows = correlation_rows(rel, samples)
    if rel.kind == "correlated":
        expected = (
            f"{rel.sign} correlation: 95% CI excludes 0"
            + (f", |r| >= {rel.min_abs_r:g}" if rel.min_abs_r else "")
            + (f" (each of {len(rows)})" if len(rows) > 1 else "")
        )
    else:
        expected = (
            "no significant correlation: 95% CI contains 0"
            + (f", |r| <= {rel.max_abs_r:g}" if rel.max_abs_r is not None else "")
            + (f" (each of {len(rows)})" if len(rows) > 1 else "")
        )
    failed, undefined = [], []
    for row in rows:
        ok, why = _corr_row_ok(rel, row["r"], row["ci_low"], row["ci_high"])
        if why == "undefined":
            undefined.append(row)
        elif not ok:
            failed.append(row)

    def one(row: dict) -> str:
        if row["r"] is None:
            return f"{row['label']}: undefined ({row['note'] or 'no value'})"
        removed = f", {row['n_removed']} IQR-removed" if row["n_removed"] else ""
        return (
            f"{row['label']}: r={row['r']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}], "
            f"n={row['n']}{removed}"
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
    return Judgement(
        not failed and not undefined,
        expected,
        observed,
        " | ".join(reasons),
        {"rows": rows},
    )
