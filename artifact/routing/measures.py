"""Imbalance measures of expert loads, vectorized over rows.

Every function takes `loads` of shape (..., E) (tokens routed to each of E experts; any
non-negative numbers) and returns one value per row. A row with no load at all has no
imbalance to measure: every measure is NaN there.

- cv: population standard deviation / mean of the E loads (0 = even).
- max_mean: max / mean, what the busiest expert costs relative to an even split (1 = even).
- max_min: max / min, NaN when some expert got nothing (the ratio is unbounded there; the
  count of idle experts is reported next to it instead).
- entropy: Shannon entropy of loads/sum divided by log E (1 = even, 0 = one expert).
- gini: 2*sum(i*f_i)/(E*sum f) - (E+1)/E over the ascending loads f (0 = even); the
  predictor's token-stream feature of the same name uses it too.
- rank_max_mean: under an expert placement (expert -> EP rank), max / mean of the per-rank
  loads: the factor by which the slowest rank's MoE work exceeds an even split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from artifact.core.errors import ArtifactError

METRICS = ("cv", "max_mean", "max_min", "entropy", "gini", "rank_max_mean")


def _rows(loads) -> np.ndarray:
    return np.asarray(loads, dtype=np.float64)


def _guard(value: np.ndarray, total: np.ndarray) -> np.ndarray:
    return np.where(total > 0, value, np.nan)


def cv(loads) -> np.ndarray:
    x = _rows(loads)
    total = x.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _guard(x.std(axis=-1) / x.mean(axis=-1), total)


def max_mean(loads) -> np.ndarray:
    x = _rows(loads)
    total = x.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _guard(x.max(axis=-1) * x.shape[-1] / total, total)


def max_min(loads) -> np.ndarray:
    x = _rows(loads)
    low = x.min(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(low > 0, x.max(axis=-1) / low, np.nan)


def idle_experts(loads) -> np.ndarray:
    return (_rows(loads) == 0).sum(axis=-1)


def entropy(loads) -> np.ndarray:
    """Normalized Shannon entropy; computed as log(S) - sum(x log x)/S to avoid forming x/S."""
    from scipy.special import xlogy

    x = _rows(loads)
    total = x.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.log(total) - xlogy(x, x).sum(axis=-1) / total
        return _guard(h / np.log(x.shape[-1]), total)


def gini(loads) -> np.ndarray:
    x = np.sort(_rows(loads), axis=-1)
    n = x.shape[-1]
    total = x.sum(axis=-1)
    i = np.arange(1, n + 1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _guard(2.0 * (x @ i) / (n * total) - (n + 1) / n, total)


@dataclass(frozen=True)
class ExpertPlacement:
    """Which expert-parallel rank holds each expert: `rank_of_expert[e]` for e in 0..E-1."""

    rank_of_expert: tuple[int, ...]
    num_ranks: int

    def __post_init__(self) -> None:
        if self.num_ranks < 1:
            raise ArtifactError(f"expert placement needs at least one rank, got {self.num_ranks}")
        bad = [r for r in self.rank_of_expert if not 0 <= r < self.num_ranks]
        if bad:
            raise ArtifactError(
                f"expert placement names rank {bad[0]}, outside 0..{self.num_ranks - 1}"
            )

    @classmethod
    def contiguous(cls, num_experts: int, num_ranks: int) -> ExpertPlacement:
        """vLLM's linear placement: contiguous blocks, the first E % R ranks one expert more.

        With E divisible by R, rank r holds experts r*E/R .. (r+1)*E/R - 1.
        """
        if num_ranks < 1:
            raise ArtifactError(f"expert placement needs at least one rank, got {num_ranks}")
        base, extra = divmod(num_experts, num_ranks)
        ranks: list[int] = []
        for r in range(num_ranks):
            ranks += [r] * (base + (1 if r < extra else 0))
        return cls(tuple(ranks), num_ranks)

    @classmethod
    def parse(cls, text: str, num_experts: int) -> ExpertPlacement:
        """`R` (contiguous over R ranks) or a comma list of E ranks, one per expert."""
        text = text.strip()
        if re.fullmatch(r"\d+", text):
            return cls.contiguous(num_experts, int(text))
        try:
            ranks = tuple(int(part) for part in text.split(","))
        except ValueError:
            raise ArtifactError(
                f"expert placement {text!r}: expected a rank count or {num_experts} "
                "comma-separated rank numbers"
            ) from None
        if len(ranks) != num_experts:
            raise ArtifactError(
                f"expert placement {text!r} names {len(ranks)} experts, the loads have "
                f"{num_experts}"
            )
        return cls(ranks, max(ranks) + 1)

    @property
    def num_experts(self) -> int:
        return len(self.rank_of_expert)

    @cached_property
    def matrix(self) -> np.ndarray:
        """(E, R) one-hot: loads @ matrix gives per-rank loads."""
        m = np.zeros((self.num_experts, self.num_ranks))
        m[np.arange(self.num_experts), self.rank_of_expert] = 1.0
        return m

    def describe(self) -> str:
        return ",".join(map(str, self.rank_of_expert))


def rank_loads(loads, placement: ExpertPlacement) -> np.ndarray:
    x = _rows(loads)
    if x.shape[-1] != placement.num_experts:
        raise ArtifactError(
            f"expert placement covers {placement.num_experts} experts, the loads have {x.shape[-1]}"
        )
    return x @ placement.matrix


def rank_max_mean(loads, placement: ExpertPlacement) -> np.ndarray:
    return max_mean(rank_loads(loads, placement))


def load_metrics(loads, placement: ExpertPlacement) -> dict[str, np.ndarray]:
    """Every measure in METRICS for each row of `loads`, plus idle_experts."""
    x = _rows(loads)
    return {
        "cv": cv(x),
        "max_mean": max_mean(x),
        "max_min": max_min(x),
        "idle_experts": idle_experts(x),
        "entropy": entropy(x),
        "gini": gini(x),
        "rank_max_mean": rank_max_mean(x, placement),
    }


def uniform_cv_floor(num_tokens, num_experts: int, top_k: int) -> np.ndarray:
    """Root-mean-square CV of the loads of `num_tokens` tokens routed uniformly at random.

    Each token picks top_k distinct experts, so one expert's load is a sum of Bernoulli(k/E)
    and E[var_pop] / mean^2 = (E - k) / (k * n): a per-step CV near this value says nothing
    about the router. For one token and top-2 of 8 experts every routing gives sqrt(3).
    """
    n = np.asarray(num_tokens, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, np.sqrt((num_experts - top_k) / (top_k * n)), np.nan)
