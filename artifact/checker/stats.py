"""The tests the verdict rules use, exact where small samples or ties make an approximation
wrong, and what they can and cannot show.

- Rank tests: Mann-Whitney U (two samples) and Wilcoxon signed-rank (paired differences),
  scipy's exact distribution when the data have no ties (nor zero differences), else a
  permutation test of the same statistic (exact enumeration up to EXACT_LIMIT arrangements,
  beyond it EXACT_LIMIT seeded random ones, p = (hits + 1) / (EXACT_LIMIT + 1)).
- Jonckheere-Terpstra: the trend test for ordered groups (the sum over group pairs i < j of
  the pairs x_i < x_j, ties counting one half), with a permutation p-value as above.
- `smallest_p`: the smallest p-value a design can give (no ties); a claim asking for a
  smaller alpha cannot be met whatever the data (3 vs 3 Mann-Whitney: 1/20).
- Fisher's z for a correlation coefficient (Spearman: the Fieller-Hartley-Pearson standard
  error sqrt(1.06 / (n - 3))): intervals and one-sided p-values.
- Holm's step-down adjustment of a family of p-values.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

EXACT_LIMIT = 50_000
SEED = 0


def _has_ties(values: np.ndarray) -> bool:
    return bool(np.unique(values).size < values.size)


def _assignments(sizes: Sequence[int]) -> np.ndarray:
    """Every distinct assignment of range(sum(sizes)) to groups of these sizes, as rows of
    indices (group 1's, then group 2's, ...)."""
    rows: list[list[int]] = []

    def fill(prefix: list[int], left: list[int], rest: Sequence[int]) -> None:
        if not rest:
            rows.append(prefix)
            return
        for chosen in itertools.combinations(left, rest[0]):
            remaining = [i for i in left if i not in chosen]
            fill(prefix + list(chosen), remaining, rest[1:])

    fill([], list(range(sum(sizes))), list(sizes))
    return np.asarray(rows, dtype=np.intp)


def _p_from_null(null: np.ndarray, observed: float, alternative: str, exact: bool) -> float:
    if alternative == "two-sided":
        tails = [_p_from_null(null, observed, side, exact) for side in ("less", "greater")]
        return min(1.0, 2 * min(tails))
    tol = 1e-9 * max(1.0, abs(observed))  # equal statistics computed in another order
    extreme = null >= observed - tol if alternative == "greater" else null <= observed + tol
    hits = int(np.sum(extreme))
    # Sampled: the observed arrangement counts once among the null's (Phipson & Smyth).
    return hits / null.size if exact else (hits + 1) / (null.size + 1)


def group_permutation_p(groups: Sequence[np.ndarray], statistic: Any, alternative: str) -> float:
    """p of `statistic(*groups)` (vectorised over the last axis) when the pooled values are
    exchangeable between the groups: exact over every distinct assignment, or over
    EXACT_LIMIT seeded random permutations when there are more."""
    sizes = [len(g) for g in groups]
    pooled = np.concatenate([np.asarray(g, dtype=np.float64) for g in groups])
    exact = arrangements(sizes) <= EXACT_LIMIT
    if exact:
        order = _assignments(sizes)
    else:
        rng = np.random.default_rng(SEED)
        order = np.argsort(rng.random((EXACT_LIMIT, pooled.size)), axis=1)
    shuffled = pooled[order]
    cuts = np.cumsum(sizes)[:-1]
    null = np.asarray(statistic(*np.split(shuffled, cuts, axis=1)))
    observed = float(statistic(*[np.asarray(g, dtype=np.float64)[None, :] for g in groups])[0])
    return _p_from_null(null, observed, alternative, exact)


def sign_flip_p(d: np.ndarray, statistic: Any, alternative: str) -> float:
    """p of `statistic(d)` when each difference's sign is exchangeable (exact over the 2^n
    sign patterns, or EXACT_LIMIT seeded random ones)."""
    exact = 2**d.size <= EXACT_LIMIT
    if exact:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    else:
        signs = np.random.default_rng(SEED).choice((1.0, -1.0), size=(EXACT_LIMIT, d.size))
    null = np.asarray(statistic(signs * d))
    return _p_from_null(null, float(statistic(d[None, :])[0]), alternative, exact)


def _rank_sum(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    ranks = stats.rankdata(np.concatenate([x, y], axis=-1), axis=-1)
    return ranks[..., : x.shape[-1]].sum(axis=-1)


def rank_sum_p(x: ArrayLike, y: ArrayLike, alternative: str) -> tuple[float, str]:
    """(p-value, method) of Mann-Whitney U for x against y."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not _has_ties(np.concatenate([a, b])):
        p = stats.mannwhitneyu(a, b, alternative=alternative, method="exact").pvalue
        return float(p), "exact"
    return group_permutation_p((a, b), _rank_sum, alternative), "permutation (ties)"


def _signed_rank(d: np.ndarray) -> np.ndarray:
    return (np.sign(d) * stats.rankdata(np.abs(d), axis=-1)).sum(axis=-1)


def signed_rank_p(d: ArrayLike, alternative: str) -> tuple[float, str]:
    """(p-value, method) of the Wilcoxon signed-rank test of the differences d (zeros
    count as neither sign)."""
    v = np.asarray(d, dtype=np.float64)
    if not np.any(v == 0) and not _has_ties(np.abs(v)):
        return float(stats.wilcoxon(v, alternative=alternative, method="exact").pvalue), "exact"
    return sign_flip_p(v, _signed_rank, alternative), "permutation (ties)"


def jonckheere(*groups: np.ndarray) -> np.ndarray:
    """The Jonckheere-Terpstra statistic of groups in their order (vectorised over the
    leading axes; the values along the last)."""
    total: Any = 0.0
    arrays = [np.asarray(g, dtype=np.float64) for g in groups]
    for i, lo in enumerate(arrays):
        for hi in arrays[i + 1 :]:
            a, b = lo[..., :, None], hi[..., None, :]
            total = total + (a < b).sum(axis=(-2, -1)) + 0.5 * (a == b).sum(axis=(-2, -1))
    return np.asarray(total)


def jonckheere_p(groups: Sequence[Sequence[float]], alternative: str) -> tuple[float, float]:
    """(statistic, p-value) of the trend test; 'greater': values rise along the groups."""
    arrays = [np.asarray(g, dtype=np.float64) for g in groups]
    return float(jonckheere(*arrays)), group_permutation_p(arrays, jonckheere, alternative)


def arrangements(sizes: Sequence[int]) -> int:
    """Distinct assignments of sum(sizes) values to groups of these sizes."""
    total = math.factorial(sum(sizes))
    for n in sizes:
        total //= math.factorial(n)
    return total


def smallest_p(test: str, sizes: Sequence[int], two_sided: bool = False) -> float:
    """The smallest p-value the test can give on samples of these sizes (without ties).

    test: 'rank_sum' (sizes: the two samples), 'signed_rank' (sizes: [pairs]),
    'jonckheere' (sizes: the groups); t tests reach any alpha and give 0.
    """
    if test == "signed_rank":
        count = 2 ** sizes[0]
    elif test in ("rank_sum", "jonckheere"):
        count = arrangements(sizes)
    else:
        return 0.0
    return min(1.0, (2 if two_sided else 1) / count)


def fisher_se(n: int, method: str) -> float:
    return math.sqrt((1.06 if method == "spearman" else 1.0) / (n - 3))


def fisher_z(r: float) -> float:
    return math.atanh(max(-1 + 1e-12, min(1 - 1e-12, r)))


def fisher_interval(r: float, n: int, method: str, confidence: float) -> tuple[float, float]:
    half = stats.norm.ppf((1 + confidence) / 2) * fisher_se(n, method)
    z = fisher_z(r)
    return math.tanh(z - half), math.tanh(z + half)


def correlation_p(r: float, n: int, method: str, claim: str, bound: float) -> float:
    """One-sided p of the claim about rho: 'positive' (rho > bound), 'negative' (rho <
    -bound), or 'within' (|rho| < bound: two one-sided tests, the larger p)."""
    se, z, zb = fisher_se(n, method), fisher_z(r), fisher_z(bound)
    if claim == "positive":
        return float(stats.norm.sf((z - zb) / se))
    if claim == "negative":
        return float(stats.norm.cdf((z + zb) / se))
    return max(float(stats.norm.cdf((z - zb) / se)), float(stats.norm.sf((z + zb) / se)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's adjusted p-values, in the order given."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
