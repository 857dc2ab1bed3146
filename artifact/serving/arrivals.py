"""The arrival schedule: gamma-distributed gaps at `request_rate` requests/s (shape
`burstiness`; 1 is Poisson), or all at once for 'inf', and the per-request sampling seeds.
Both come from the config's `seed`, so a repetition replays the same schedule."""

from __future__ import annotations

import math

import numpy as np


def arrival_offsets(n: int, request_rate: float, burstiness: float, seed: int) -> np.ndarray:
    """Start offsets (s) of n requests: 0 for 'inf', else cumulative gamma gaps (mean 1/rate)."""
    if math.isinf(request_rate) or n == 0:
        return np.zeros(n)
    rng = np.random.default_rng([seed, 0])
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


def request_seeds(n: int, seed: int) -> list[int]:
    """Per-request sampling seeds (sent only when temperature > 0)."""
    return [int(s) for s in np.random.default_rng([seed, 1]).integers(0, 2**31 - 1, size=n)]
