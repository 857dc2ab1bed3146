"""Correlation: coefficients match scipy, bootstrap intervals, the IQR rule reports removals."""

import numpy as np
import pytest
from scipy import stats

from artifact.core.errors import ArtifactError
from artifact.routing.correlation import correlation, correlation_table, iqr_filter


def test_coefficients_and_intervals():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = 0.6 * x + rng.normal(scale=0.8, size=40)
    for method, reference in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        c = correlation(x, y, method=method, n_boot=500)
        r, p = reference(x, y)
        assert c.r == pytest.approx(r) and c.p_value == pytest.approx(p)
        assert c.ci_low < c.r < c.ci_high and c.n == 40 and c.removed == ()
    # Same seed, same interval; perfect monotone data gives r = 1 with a degenerate interval.
    assert correlation(x, y, n_boot=300) == correlation(x, y, n_boot=300)
    c = correlation([1, 2, 3, 4, 5], [1, 4, 9, 16, 25], method="spearman", n_boot=300)
    assert c.r == pytest.approx(1.0) and c.ci_low == pytest.approx(1.0)


def test_missing_constant_and_small_inputs():
    c = correlation([1, 2, None, 4, float("nan")], [2, 4, 5, 8, 1], n_boot=100)
    assert c.n == 3
    assert correlation([1, 1, 1, 1], [1, 2, 3, 4]).note == "constant input"
    c = correlation([1, 2], [3, 4])
    assert c.r is None and c.note == "fewer than 3 points"
    with pytest.raises(ArtifactError, match="paired samples"):
        correlation([1, 2, 3], [1, 2])
    with pytest.raises(ArtifactError, match="unknown correlation method"):
        correlation([1, 2, 3], [1, 2, 3], method="kendall")


def test_iqr_rule_removes_and_reports():
    x = np.arange(12, dtype=float)
    y = x * 2
    y[5] = 500.0  # an outlier in y only
    kept_x, kept_y, removed = iqr_filter(x, y, labels=[f"run{i}" for i in range(12)])
    assert len(kept_x) == 11 and 500.0 not in kept_y
    assert removed == [{"label": "run5", "variable": "y", "x": 5.0, "y": 500.0}]
    c = correlation(x, y, iqr=True, labels=[f"run{i}" for i in range(12)], n_boot=200)
    assert c.r == pytest.approx(1.0) and c.n == 11 and c.removed[0]["label"] == "run5"
    assert correlation(x, y, n_boot=200).r < 0.5


def test_table_groups_pairs_and_methods():
    rng = np.random.default_rng(2)
    rows = [
        {
            "mode": mode,
            "run": f"{mode}{i}",
            "score": s,
            "cv": s * k + rng.normal(0, 0.01),
            "ttft": rng.normal(),
        }
        for mode, k in (("baseline", 1.0), ("all2all", -1.0))
        for i, s in enumerate(rng.uniform(0.4, 0.6, 10))
    ]
    table = correlation_table(rows, ["score"], ["cv", "ttft"], n_boot=200)
    assert len(table) == 2 * 2 * 2
    by_key = {(t["group"], t["y"], t["method"]): t for t in table}
    assert by_key[("baseline", "cv", "pearson")]["r"] > 0.9
    assert by_key[("all2all", "cv", "spearman")]["r"] < -0.9
    assert all(t["n"] == 10 and t["n_removed"] == 0 for t in table)
