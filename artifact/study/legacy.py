"""The original study's two imbalance methods, reproduced exactly and labelled legacy.

- `legacy-per-step`: the CV of each logged step's E loads, averaged over every step of every
  layer of a run (the study's `*_real_imbalance.json`).
- `legacy-aggregated`: the loads of every layer and every step with num_tokens <= 1000
  summed into one E-vector, and the CV of that vector (the study's `new_*_results.json`).

The study's CV is the *population* standard deviation over (mean + 1e-10). Its summaries
give this away: the all2all runs' per-step value is 1.7320508068760567, not
sqrt(3) = 1.7320508075688772; the relative deficit 4.0e-10 is 1e-10 / 0.25, the mean load
of one top-2 token over 8 experts; the aggregated 0.37499999999953126 is 0.375 less
1.25e-12 = 1e-10 / 80 (80 = 32 layers * 10 steps * 2 / 8). The sample std (ddof=1) would be
off by sqrt(8/7), 6.9%. Both methods are reproduced to 1e-16 on every run of the study.

Why neither is the default:

- `legacy-aggregated` adds expert i of layer 0 to expert i of layer 31. They are different
  experts (their own weights, their own tokens), so a hot expert in one layer and a cold
  one at the same index in another cancel: the measure understates imbalance and says
  nothing about any layer the hardware actually runs.
- `legacy-per-step` is the mean of CVs of single small steps. A step of n tokens routed
  perfectly at random has an RMS CV of sqrt((E-k)/(k n)) (`uniform_cv_floor`): 0.316 for the
  study's 30-token decode steps, and exactly sqrt(3) for its 1-token all2all steps, whatever
  the router does. On these logs it measures the batch size, not the routing.

The default instead sums each layer's loads over its steps and reports that layer's
measures (`layer_total`), then aggregates across layers both ways (mean of the per-layer
values, ratio of sums), next to the per-step views and the noise floor of each.
`compare_default_vs_legacy` tabulates the difference per run. On the study's own gate logs
(30 runs per mode, 32 layers, the last 10 logged steps of each layer; median and range):

- baseline (TP4, 30-token steps): legacy-per-step 0.358 (0.321-0.962), only 1.13x its
  uniform-routing floor 0.316; legacy-aggregated 0.047 (0.025-0.198); default per-layer CV
  0.218 (0.188-0.804), 4.6x (3.1-7.9x) the aggregated value, floor 0.100; per-layer
  max/mean 1.36 (1.29-2.47); busiest of 4 EP ranks over the mean 1.17 (1.14-1.68).
- all2all (EP4, 1-token steps): legacy-per-step sqrt(3) in every run, which is its floor;
  legacy-aggregated 0.312 (0.165-0.424); default per-layer CV sqrt(3) in every layer of
  every run, 5.5x (4.1-10.5x) the aggregated value: each layer sent the one logged token to
  the same 2 experts in all 10 steps (max/mean 4 = E/k, the most top-2 allows); busiest EP
  rank 2.25 (2.06-2.50) x the mean.

Even the default measures rest on 300 (baseline) or 10 (all2all) tokens per layer here,
floors 0.10 and 0.55: these logs cannot characterize a workload's routing; the artifact's
own routing logs record every step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from artifact.routing.aggregate import RunImbalance

LEGACY_METHODS = ("legacy-per-step", "legacy-aggregated")
LEGACY_EPS = 1e-10
# The aggregated method kept steps with at most this many tokens (decode-sized steps).
LEGACY_MAX_TOKENS = 1000


def legacy_cv(loads) -> np.ndarray:
    """The study's CV: population std / (mean + 1e-10); 0, not NaN, for an all-zero row."""
    x = np.asarray(loads, dtype=np.float64)
    return x.std(axis=-1) / (x.mean(axis=-1) + LEGACY_EPS)


def legacy_table(results: Iterable[RunImbalance]) -> list[dict]:
    """Tidy rows (run, method, value)."""
    return [
        {"run": r.run, "method": method, "value": r.legacy[method]}
        for r in results
        for method in LEGACY_METHODS
    ]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compare_default_vs_legacy(results: Iterable[RunImbalance]) -> list[dict]:
    """Per run: the legacy numbers next to the default per-layer measures and noise floors.

    Columns: run; legacy_per_step and per_step_cv (the default per-step view: the same
    quantity without the epsilon, averaged per layer first) with per_step_cv_floor (the
    uniform-routing RMS CV of the steps' token counts); legacy_aggregated and layer_cv (mean
    over layers of each layer's CV of its summed loads) with layer_cv_floor;
    layer_cv_over_legacy_aggregated and per_step_cv_over_floor (how far each is from what
    it is compared with); layer_max_mean, max_mean_ratio_of_sums and
    rank_max_mean_ratio_of_sums (the busiest expert's and EP rank's load over an even split).
    """
    rows = []
    for r in results:
        per_step_floor = r.value("cv_noise_floor", view="per_step")
        rows.append(
            {
                "run": r.run,
                "legacy_per_step": r.legacy["legacy-per-step"],
                "per_step_cv": r.value("cv", view="per_step"),
                "per_step_cv_floor": per_step_floor,
                "per_step_cv_over_floor": _ratio(r.value("cv", view="per_step"), per_step_floor),
                "legacy_aggregated": r.legacy["legacy-aggregated"],
                "layer_cv": r.value("cv"),
                "layer_cv_floor": r.value("cv_noise_floor"),
                "layer_cv_over_legacy_aggregated": _ratio(
                    r.value("cv"), r.legacy["legacy-aggregated"]
                ),
                "layer_max_mean": r.value("max_mean"),
                "max_mean_ratio_of_sums": r.value("max_mean", aggregation="ratio_of_sums"),
                "rank_max_mean_ratio_of_sums": r.value(
                    "rank_max_mean", aggregation="ratio_of_sums"
                ),
            }
        )
    return rows
