"""The statistics of the verdict rules: one test per defect of the rules as reviewed in
issue 19 (each failed on the rules before it), and the p-values against scipy and brute
force on known cases (ties, n=2, zero variance)."""

import itertools
import math

import numpy as np
import pytest
import yaml
from scipy import stats
from test_checker_rules import claim, judge

from artifact.checker.stats import (
    correlation_p,
    fisher_interval,
    holm,
    jonckheere,
    jonckheere_p,
    rank_sum_p,
    signed_rank_p,
    smallest_p,
)
from artifact.config.claims import load_claims
from artifact.core.errors import ArtifactError


def rows_of(**modes: list) -> list[dict]:
    """Runs of modes, one row a value, keyed by dataset d0, d1, ..."""
    return [
        {"run": f"{m}/{i}", "mode": m, "dataset": f"d{i}", "v": v}
        for m, values in modes.items()
        for i, v in enumerate(values)
    ]


def two(kind: str, ident: str = "c", experiment: str | None = None, **rel) -> dict:
    fields = {"experiment": experiment} if experiment else {}
    return claim(
        ident,
        quantity={"table": "runs", "where": {"mode": "a"}, "column": "v"},
        relation={
            "kind": kind,
            "other": {"table": "runs", "where": {"mode": "b"}, "column": "v"},
            **rel,
        },
        **fields,
    )


# --- a rule refuses what it cannot judge -------------------------------------------------------


def test_a_side_with_one_value_is_not_a_one_sample_test(tmp_path):
    r = judge(tmp_path, [two("greater")], runs=rows_of(a=[10, 10.5, 9.5], b=[9]))["c"]
    assert r.verdict == "SKIP"
    assert "b has 1 value: one value has no spread" in r.reason


def test_zero_spread_is_not_certainty(tmp_path):
    r = judge(tmp_path, [two("greater")], runs=rows_of(a=[5, 5, 5], b=[3, 3, 3]))["c"]
    assert r.verdict == "SKIP" and "both sides have zero spread" in r.reason
    # Paired differences all equal: no spread either.
    paired = judge(
        tmp_path, [two("greater", paired_by="dataset")], runs=rows_of(a=[5, 6, 7], b=[3, 4, 5])
    )["c"]
    assert paired.verdict == "SKIP" and "paired differences are all equal" in paired.reason


def test_one_pair_is_not_a_paired_test(tmp_path):
    rows = [*rows_of(a=[10, 11], b=[5]), {"run": "b/x", "mode": "b", "dataset": "x", "v": 4}]
    r = judge(tmp_path, [two("greater", paired_by="dataset")], runs=rows)["c"]
    assert r.verdict == "SKIP" and "1 pair(s): a paired test needs at least 2" in r.reason


def test_unmatched_keys_and_dropped_rows_are_reported(tmp_path):
    rows = rows_of(a=[10, 12, 11, 13, None], b=[5, 6, 4])
    r = judge(tmp_path, [two("greater", paired_by="dataset")], runs=rows)["c"]
    assert r.verdict == "PASS"
    assert r.details["unmatched"] == {"a": ["d3"], "b": []}  # d4 has no value: dropped
    assert r.details["dropped"] == {"a": 1, "b": 0}
    assert "1 row(s) of a without a value left out" in r.observed
    assert "1 key(s) only in a left unpaired (d3)" in r.observed


def test_dropped_rows_of_value_claims_and_trends_are_reported(tmp_path):
    rows = [{"run": str(i), "x": i % 4, "v": None if i == 5 else float(i)} for i in range(12)]
    results = judge(
        tmp_path,
        [
            claim("value", quantity={"table": "runs", "column": "v"}, expect={"min": 0}),
            claim(
                "trend",
                quantity={"table": "runs", "column": "v", "by": "x"},
                relation={"kind": "increasing"},
            ),
        ],
        runs=rows,
    )
    for r in results.values():
        assert "1 row(s) without a value left out" in r.observed
        assert r.details["dropped"] == 1


def test_an_alpha_the_test_cannot_reach_is_refused(tmp_path):
    rows = rows_of(a=[1, 2, 3], b=[4, 5, 6])
    r = judge(tmp_path, [two("less", test="mann_whitney", alpha=0.01)], runs=rows)["c"]
    assert r.verdict == "SKIP"
    assert "Mann-Whitney test on 3 vs 3 values cannot reach alpha=0.01" in r.reason
    assert "smallest p is 0.05" in r.reason
    assert smallest_p("rank_sum", [3, 3]) == pytest.approx(1 / 20)
    assert smallest_p("signed_rank", [4]) == 1 / 16
    assert smallest_p("jonckheere", [1, 1, 1]) == pytest.approx(1 / 6)
    assert smallest_p("welch", [2, 2]) == 0.0


def test_ties_use_the_exact_permutation_p_not_the_normal_approximation(tmp_path):
    rows = rows_of(a=[5, 5, 5], b=[1, 1, 1])
    r = judge(tmp_path, [two("greater", test="mann_whitney")], runs=rows)["c"]
    # scipy's normal approximation gives 0.023 here, below the exact minimum 1/20.
    approx = stats.mannwhitneyu([5, 5, 5], [1, 1, 1], alternative="greater").pvalue
    assert approx == pytest.approx(0.0232, abs=1e-3)
    assert r.details["p_value"] == pytest.approx(0.05)
    assert "(permutation (ties))" in r.observed


def test_equivalence_with_a_rank_test_is_a_rank_tost(tmp_path):
    a, b = [10.0, 10.4, 9.7, 10.1], [10.2, 9.9, 10.3, 10.0]
    r = judge(
        tmp_path,
        [two("equivalent", test="mann_whitney", margin_abs=1.0)],
        runs=rows_of(a=a, b=b),
    )["c"]
    assert r.details["test"] == "Mann-Whitney"
    lower = stats.mannwhitneyu(np.array(a) - 1.0, b, alternative="less", method="exact").pvalue
    upper = stats.mannwhitneyu(np.array(a) + 1.0, b, alternative="greater", method="exact").pvalue
    assert r.details["p_value"] == pytest.approx(max(lower, upper))
    assert r.verdict == "PASS"  # p = 1/70 on both sides


def test_the_spread_of_one_value_is_undefined_not_zero(tmp_path):
    r = judge(
        tmp_path,
        [
            claim(
                quantity={"table": "runs", "column": "v", "reduce": "cv"},
                expect={"max": 0.1},
            )
        ],
        runs=rows_of(a=[7.0]),
    )["c"]
    assert r.verdict == "SKIP" and "the cv of 1 value(s) is undefined" in r.reason


def test_three_settings_of_one_run_cannot_show_a_trend(tmp_path):
    rows = [{"run": str(x), "x": x, "v": v} for x, v in ((2, 10), (4, 30), (8, 20))]
    trend = claim(
        quantity={"table": "runs", "column": "v", "by": "x"}, relation={"kind": "increasing"}
    )
    r = judge(tmp_path, [trend], runs=rows)["c"]
    assert r.verdict == "SKIP" and "3 settings with 1/1/1 values" in r.reason


def test_uncorrelated_is_an_equivalence_test_on_rho(tmp_path):
    # The study's exp3.no_link_baseline row: r = 0.403 over 28 points, a bootstrap interval
    # that touched 0; "the interval contains 0" passed it.
    row = {"group": "g", "x": "m", "y": "t", "method": "spearman", "r": 0.403, "n": 28}
    row.update(ci_low=-0.01, ci_high=0.7)
    r = judge(
        tmp_path,
        [
            claim(
                quantity={"table": "correlations", "column": "r"},
                relation={"kind": "uncorrelated", "max_abs_r": 0.5},
            )
        ],
        correlations=[row],
    )["c"]
    assert r.verdict == "FAIL"
    low, high = fisher_interval(0.403, 28, "spearman", 0.90)
    assert (low, high) == pytest.approx((0.088, 0.645), abs=1e-3)
    assert f"[{low:.2f}, {high:.2f}]" in r.reason


def test_an_uncorrelated_claim_needs_its_margin(tmp_path):
    path = tmp_path / "c.yaml"
    bad = claim(
        quantity={"table": "correlations", "column": "r"}, relation={"kind": "uncorrelated"}
    )
    path.write_text(yaml.safe_dump({"profile": "local", "claims": [bad]}))
    with pytest.raises(ArtifactError, match="needs max_abs_r"):
        load_claims(path)


@pytest.mark.parametrize(
    "quantity",
    [
        {"table": "runs", "column": "v", "by": "x", "iqr_filter": True},
        {"table": "correlations", "where": {"iqr_filter": True}, "column": "r"},
    ],
)
def test_no_iqr_filter_before_a_relation(tmp_path, quantity):
    path = tmp_path / "c.yaml"
    relation = {"kind": "uncorrelated", "max_abs_r": 0.5}
    if "by" in quantity:
        relation = {"kind": "increasing"}
    path.write_text(
        yaml.safe_dump(
            {"profile": "local", "claims": [claim(quantity=quantity, relation=relation)]}
        )
    )
    with pytest.raises(ArtifactError, match="drop the 1.5 x IQR filter"):
        load_claims(path)


def test_holm_within_each_experiment(tmp_path):
    # Four settings of one run in order: p = 1/24 each, significant alone, not as a pair.
    rows = [
        {"run": f"{m}{x}", "mode": m, "x": x, "v": float(x)} for m in "pq" for x in (1, 2, 3, 4)
    ]

    def trend(mode: str, experiment: str) -> dict:
        return claim(
            f"{mode}-{experiment}",
            experiment=experiment,
            quantity={"table": "runs", "where": {"mode": mode}, "column": "v", "by": "x"},
            relation={"kind": "increasing"},
        )

    both = judge(tmp_path, [trend("p", "imbalance"), trend("q", "imbalance")], runs=rows)
    assert [r.verdict for r in both.values()] == ["FAIL", "FAIL"]
    assert both["p-imbalance"].details["p_holm"] == pytest.approx(2 / 24)
    assert "not after Holm's adjustment over the 2 tested claims of imbalance" in (
        both["p-imbalance"].reason
    )
    apart = judge(tmp_path, [trend("p", "imbalance"), trend("q", "config_sweep")], runs=rows)
    assert [r.verdict for r in apart.values()] == ["PASS", "PASS"]


# --- the p-values against scipy and brute force -----------------------------------------------


def test_holm_against_a_worked_example():
    # Holm (1979) style: sorted 0.01, 0.02, 0.03, 0.04 -> 0.04, 0.06, 0.06, 0.06.
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


@pytest.mark.parametrize(
    ("x", "y"),
    [([1.2, 3.4], [0.5, 2.2, 4.1]), ([10.0, 11.0], [9.0, 8.5]), ([3.1, 2.2, 5.6], [0.1, 7.7])],
)
def test_welch_and_paired_t_p_values_equal_scipy_at_n_2(tmp_path, x, y):
    r = judge(tmp_path, [two("greater")], runs=rows_of(a=x, b=y))["c"]
    expected = stats.ttest_ind(x, y, equal_var=False, alternative="greater").pvalue
    assert r.details["p_value"] == pytest.approx(expected, rel=1e-9)
    n = min(len(x), len(y))
    paired = judge(
        tmp_path,
        [two("less", paired_by="dataset")],
        runs=rows_of(a=x[:n], b=y[:n]),
    )["c"]
    expected = stats.ttest_rel(x[:n], y[:n], alternative="less").pvalue
    assert paired.details["p_value"] == pytest.approx(expected, rel=1e-9)


def test_rank_tests_equal_scipy_exact_without_ties_and_brute_force_with_them():
    x, y = [1.1, 2.5, 3.9, 0.2], [4.4, 5.1, 2.8]
    for alternative in ("less", "greater", "two-sided"):
        p, how = rank_sum_p(x, y, alternative)
        exact = stats.mannwhitneyu(x, y, alternative=alternative, method="exact").pvalue
        assert how == "exact" and p == pytest.approx(exact)
    d = [0.5, -1.2, 2.3, 3.1, 1.7]
    p, _ = signed_rank_p(d, "greater")
    assert p == pytest.approx(stats.wilcoxon(d, alternative="greater", method="exact").pvalue)
    # Ties: every split of the pooled values into the two sample sizes, counted by hand.
    x, y = [2, 2, 3], [1, 2, 2, 1]
    pooled = x + y
    ranks = stats.rankdata(pooled)
    observed = ranks[:3].sum()
    splits = list(itertools.combinations(range(7), 3))
    hits = sum(ranks[list(s)].sum() >= observed - 1e-9 for s in splits)
    p, how = rank_sum_p(x, y, "greater")
    assert how == "permutation (ties)" and p == pytest.approx(hits / len(splits))
    # Zero differences and tied magnitudes: all 2^n sign patterns by hand.
    d = np.array([1.0, 1.0, -2.0, 0.0, 3.0])
    signed = (np.sign(d) * stats.rankdata(np.abs(d))).sum()
    flips = [np.array(s) for s in itertools.product((1, -1), repeat=5)]
    hits = sum((np.sign(s * d) * stats.rankdata(np.abs(d))).sum() >= signed - 1e-9 for s in flips)
    assert signed_rank_p(d, "greater")[0] == pytest.approx(hits / 32)


def test_jonckheere_against_brute_force_and_kendall():
    groups = [[1.0, 2.5], [2.0, 2.5, 4.0], [3.5, 5.0]]
    statistic, p = jonckheere_p(groups, "greater")
    # The statistic: pairs across groups in order, ties a half (by hand: 4.5 + 4 + 5 of 16).
    assert statistic == 13.5
    # Every assignment of the 7 values (by position: equal values stay distinct) to groups
    # of 2, 3 and 2 is equally likely under no trend.
    pooled = np.array([v for g in groups for v in g])
    seen, hits = set(), 0
    for perm in itertools.permutations(range(7)):
        key = (frozenset(perm[:2]), frozenset(perm[2:5]))
        if key in seen:
            continue
        seen.add(key)
        cut = (pooled[list(perm[:2])], pooled[list(perm[2:5])], pooled[list(perm[5:])])
        hits += float(jonckheere(*cut)) >= statistic - 1e-9
    assert len(seen) == math.factorial(7) // (2 * 6 * 2) == 210
    assert p == pytest.approx(hits / len(seen))
    # One value a group: JT counts the concordant pairs, Kendall's exact test is the same.
    values = [3.0, 1.0, 4.0, 6.0, 5.0]
    _, p = jonckheere_p([[v] for v in values], "greater")
    tau = stats.kendalltau(range(5), values, alternative="greater", method="exact")
    assert p == pytest.approx(tau.pvalue)


def test_fisher_z_p_values_and_interval_agree():
    low, high = fisher_interval(0.3, 50, "pearson", 0.90)
    z, se = math.atanh(0.3), 1 / math.sqrt(47)
    assert (low, high) == pytest.approx(
        (math.tanh(z - 1.6448536 * se), math.tanh(z + 1.6448536 * se))
    )
    # The equivalence p is <= 0.05 exactly when the 90% interval is inside the margin.
    for margin in (0.45, high, 0.6):
        p = correlation_p(0.3, 50, "pearson", "within", margin)
        assert (p <= 0.05 + 1e-12) == (-margin < low and high <= margin + 1e-12)
    assert correlation_p(0.3, 50, "pearson", "positive", 0.0) == pytest.approx(
        stats.norm.sf(z / se)
    )
