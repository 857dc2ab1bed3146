"""Streaming aggregation of routing blocks into tidy per-layer and cross-layer tables.

Aggregation rules (each one explicit in the tables' `view`, `phase` and `aggregation`):

- Loads are summed over steps *within* a layer, never across layers: expert i of layer 0
  and expert i of layer 31 are different experts.
- Per layer, three views: `layer_total` (measures of the layer's loads summed over its
  steps: every token counts once), `per_step` (the mean over steps of each step's measure:
  every step counts once) and `per_step_token_weighted` (the same mean weighted by the
  step's tokens). A "step" is one record: one (pass, layer, rank, phase).
- Phases `prefill`, `decode`, `unknown` (the study's gate logs) separately, and `all`.
- Across layers, `mean_of_layers` (the mean of the per-layer values, SGLang's convention)
  and, for the max/mean measures, `ratio_of_sums` (sum over layers of the max over sum over
  layers of the mean, the way vLLM's EPLB sums over layers before dividing; its
  balancedness is the reciprocal). Layers and steps run one after another, so the
  `per_step` ratio of sums is the factor by which waiting for the busiest expert or rank
  stretches MoE time (`rank_max_mean`: what the slowest EP rank pays). In `layer_total`
  the two agree whenever every layer saw the same tokens (a complete log); they differ for
  incomplete logs and in `per_step`, where the ratio of sums weighs steps by their tokens.
  `max_over_layers` is the worst layer. Layers whose value is undefined (NaN) are left
  out, and `layers` says how many counted.

Memory is bounded by one block: per-record measures go to an optional `per_step` sink and
everything else is a running sum over (layer, phase).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from artifact.core.console import track
from artifact.core.errors import ArtifactError
from artifact.routing.format import DEFAULT_CHUNK_RECORDS, PHASES, RoutingLog, odd_header
from artifact.routing.measures import (
    METRICS,
    ExpertPlacement,
    load_metrics,
    rank_loads,
    uniform_cv_floor,
)
from artifact.routing.readers import Skipped, routing_blocks
from artifact.study.gate_logs import find_gate_log_runs, read_gate_log_run
from artifact.study.legacy import LEGACY_MAX_TOKENS, legacy_cv

VIEWS = ("layer_total", "per_step", "per_step_token_weighted")
PHASE_ALL = "all"
# Measures averaged over steps (max/min is NaN on most small steps: its mean would describe
# only the steps where no expert idled, so per-step views leave it out).
STEP_METRICS = ("cv", "max_mean", "entropy", "gini", "rank_max_mean", "cv_noise_floor")
# Expert parallelism of the original study (4 GPUs); the default rank count for EP measures.
DEFAULT_EP_RANKS = 4

PerStepSink = Callable[[str, np.ndarray, dict[str, np.ndarray]], None]


def _clean(value) -> float | int | None:
    """A JSON- and CSV-friendly number: NaN becomes None."""
    if isinstance(value, np.integer | int):
        return int(value)
    value = float(value)
    return None if np.isnan(value) else value


@dataclass
class RunImbalance:
    """Every table of one run (one routing log, or one study gate-log folder)."""

    run: str
    source: str
    num_experts: int
    num_layers: int
    top_k: int
    placement: ExpertPlacement
    records: int
    events: int
    num_tokens: int
    per_layer: list[dict]
    expert_loads: list[dict]
    summary: list[dict]
    legacy: dict[str, float | None]
    skipped: list[Skipped] = field(default_factory=list)
    # Records whose loads do not add up to top_k * num_tokens (reported, not fatal).
    inconsistent_records: int = 0

    def value(
        self,
        metric: str,
        *,
        view: str = "layer_total",
        aggregation: str = "mean_of_layers",
        phase: str = PHASE_ALL,
    ) -> float | None:
        for row in self.summary:
            if (row["metric"], row["view"], row["aggregation"], row["phase"]) == (
                metric,
                view,
                aggregation,
                phase,
            ):
                return row["value"]
        return None

    def headline(self) -> dict[str, float | None]:
        """One number per measure (all phases): the columns to correlate with performance."""
        out = {m: self.value(m) for m in METRICS}
        out["max_mean_ratio_of_sums"] = self.value("max_mean", aggregation="ratio_of_sums")
        out["rank_max_mean_ratio_of_sums"] = self.value(
            "rank_max_mean", aggregation="ratio_of_sums"
        )
        out["per_step_cv"] = self.value("cv", view="per_step")
        out["per_step_rank_max_mean_ratio_of_sums"] = self.value(
            "rank_max_mean", view="per_step", aggregation="ratio_of_sums"
        )
        out.update(self.legacy)
        return out

    def to_json(self, *, tables: bool = False) -> dict:
        out = {
            "run": self.run,
            "source": self.source,
            "num_experts": self.num_experts,
            "num_layers": self.num_layers,
            "top_k": self.top_k,
            "placement": list(self.placement.rank_of_expert),
            "records": self.records,
            "events": self.events,
            "num_tokens": self.num_tokens,
            "inconsistent_records": self.inconsistent_records,
            "headline": self.headline(),
            "legacy": self.legacy,
            "summary": self.summary,
            "skipped": [s.to_json() for s in self.skipped],
        }
        if tables:
            out["per_layer"] = self.per_layer
            out["expert_loads"] = self.expert_loads
        return out


class ImbalanceAccumulator:
    """Running sums over (layer, phase); `add` one block at a time, then `result`."""

    def __init__(
        self,
        *,
        num_experts: int,
        num_layers: int,
        top_k: int,
        placement: ExpertPlacement,
        run: str = "",
        per_step: PerStepSink | None = None,
    ):
        if placement.num_experts != num_experts:
            raise ArtifactError(
                f"expert placement covers {placement.num_experts} experts, the model has "
                f"{num_experts}"
            )
        self.num_experts, self.num_layers, self.top_k = num_experts, num_layers, top_k
        self.placement, self.run, self.per_step = placement, run, per_step
        groups = num_layers * len(PHASES)
        self.loads = np.zeros((groups, num_experts))
        self.records = np.zeros(groups, dtype=np.int64)
        self.tokens = np.zeros(groups)
        # Per-step sums over rows with load: count, tokens, measures, token-weighted measures.
        self.valid = np.zeros(groups)
        self.valid_tokens = np.zeros(groups)
        self.step_sum = {m: np.zeros(groups) for m in STEP_METRICS}
        self.step_wsum = {m: np.zeros(groups) for m in STEP_METRICS}
        # Per-step ratio of sums: sum of the row max and of the row mean, experts and ranks.
        self.step_max = {k: np.zeros(groups) for k in ("expert", "rank")}
        self.step_mean = {k: np.zeros(groups) for k in ("expert", "rank")}
        self.legacy_step_sum = 0.0
        self.legacy_steps = 0
        self.legacy_loads = np.zeros(num_experts)
        self.inconsistent = 0

    def add(self, block: np.ndarray) -> None:
        if len(block) == 0:
            return
        counts = block["counts"].astype(np.float64)
        tokens = block["num_tokens"].astype(np.float64)
        group = block["layer"].astype(np.intp) * len(PHASES) + block["phase"].astype(np.intp)
        size = len(self.records)
        total = counts.sum(axis=1)
        measures = load_metrics(counts, self.placement)
        # The floor of the assignments seen (= num_tokens in a consistent log).
        measures["cv_noise_floor"] = uniform_cv_floor(
            total / self.top_k, self.num_experts, self.top_k
        )
        if self.per_step is not None:
            self.per_step(self.run, block, measures)

        def by_group(weights: np.ndarray) -> np.ndarray:
            return np.bincount(group, weights=weights, minlength=size)

        e = self.num_experts
        flat = (group[:, None] * e + np.arange(e)).ravel()
        self.loads += np.bincount(flat, weights=counts.ravel(), minlength=size * e).reshape(size, e)
        self.records += np.bincount(group, minlength=size)
        self.tokens += by_group(tokens)
        valid = total > 0
        self.valid += by_group(valid.astype(np.float64))
        self.valid_tokens += by_group(np.where(valid, tokens, 0.0))
        for m in STEP_METRICS:
            value = np.where(valid, measures[m], 0.0)
            self.step_sum[m] += by_group(value)
            self.step_wsum[m] += by_group(value * tokens)
        for kind, rows in (("expert", counts), ("rank", rank_loads(counts, self.placement))):
            self.step_max[kind] += by_group(rows.max(axis=1))
            self.step_mean[kind] += by_group(rows.mean(axis=1))
        self.legacy_step_sum += float(legacy_cv(counts).sum())
        self.legacy_steps += len(block)
        self.legacy_loads += counts[block["num_tokens"] <= LEGACY_MAX_TOKENS].sum(axis=0)
        self.inconsistent += int((total != self.top_k * tokens).sum())

    def _with_all(self, a: np.ndarray) -> np.ndarray:
        """(layer*phase, ...) -> (layer, phase + all, ...)."""
        a = a.reshape(self.num_layers, len(PHASES), *a.shape[1:])
        return np.concatenate([a, a.sum(axis=1, keepdims=True)], axis=1)

    def result(self, *, source: str = "", skipped: Sequence[Skipped] = ()) -> RunImbalance:
        loads = self._with_all(self.loads)  # (layer, phase + all, expert)
        views = self._views(loads)
        legacy_loads = self.legacy_loads
        return RunImbalance(
            run=self.run,
            source=source,
            num_experts=self.num_experts,
            num_layers=self.num_layers,
            top_k=self.top_k,
            placement=self.placement,
            records=int(self.records.sum()),
            events=int(self.loads.sum()),
            num_tokens=int(self.tokens.sum()),
            per_layer=self._per_layer_rows(loads, views),
            expert_loads=self._expert_load_rows(loads),
            summary=self._summary_rows(loads, views),
            legacy={
                "legacy-per-step": (
                    self.legacy_step_sum / self.legacy_steps if self.legacy_steps else None
                ),
                "legacy-aggregated": (
                    _clean(legacy_cv(legacy_loads)) if legacy_loads.any() else None
                ),
            },
            skipped=list(skipped),
            inconsistent_records=self.inconsistent,
        )

    def _present(self) -> list[tuple[int, int, str]]:
        """(layer, phase index, phase name) of every (layer, phase) with records."""
        records = self._with_all(self.records)
        return [
            (layer, p, phase)
            for layer in range(self.num_layers)
            for p, phase in enumerate((*PHASES, PHASE_ALL))
            if records[layer, p]
        ]

    def _views(self, loads: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """view -> measure -> (layer, phase + all) values."""
        with np.errstate(invalid="ignore", divide="ignore"):
            total = load_metrics(loads, self.placement)
            total["cv_noise_floor"] = uniform_cv_floor(
                loads.sum(axis=2) / self.top_k, self.num_experts, self.top_k
            )
            valid, valid_tokens = self._with_all(self.valid), self._with_all(self.valid_tokens)
            return {
                "layer_total": total,
                "per_step": {m: self._with_all(self.step_sum[m]) / valid for m in STEP_METRICS},
                "per_step_token_weighted": {
                    m: self._with_all(self.step_wsum[m]) / valid_tokens for m in STEP_METRICS
                },
            }

    def _per_layer_rows(self, loads: np.ndarray, views: dict) -> list[dict]:
        records, tokens = self._with_all(self.records), self._with_all(self.tokens)
        events = loads.sum(axis=2)
        rows = []
        for layer, p, phase in self._present():
            for view in VIEWS:
                values = views[view]
                row = {
                    "run": self.run,
                    "layer": layer,
                    "phase": phase,
                    "view": view,
                    "records": int(records[layer, p]),
                    "num_tokens": int(tokens[layer, p]),
                    "events": int(events[layer, p]),
                }
                for m in (*METRICS, "idle_experts", "cv_noise_floor"):
                    row[m] = _clean(values[m][layer, p]) if m in values else None
                rows.append(row)
        return rows

    def _expert_load_rows(self, loads: np.ndarray) -> list[dict]:
        return [
            {
                "run": self.run,
                "layer": layer,
                "phase": phase,
                "expert": expert,
                "rank": self.placement.rank_of_expert[expert],
                "load": _clean(load),
            }
            for layer, p, phase in self._present()
            for expert, load in enumerate(loads[layer, p])
        ]

    def _summary_rows(self, loads: np.ndarray, views: dict) -> list[dict]:
        ranks = rank_loads(loads, self.placement)
        # (view, measure) -> (max, mean) of each (layer, phase), for the ratio of sums.
        sums = {
            ("layer_total", "max_mean"): (loads.max(axis=2), loads.mean(axis=2)),
            ("layer_total", "rank_max_mean"): (ranks.max(axis=2), ranks.mean(axis=2)),
            **{
                ("per_step", m): (
                    self._with_all(self.step_max[kind]),
                    self._with_all(self.step_mean[kind]),
                )
                for m, kind in (("max_mean", "expert"), ("rank_max_mean", "rank"))
            },
        }
        present = self._with_all(self.records) > 0
        rows = []
        for p, phase in enumerate((*PHASES, PHASE_ALL)):
            layers = present[:, p]
            if not layers.any():
                continue
            for view in VIEWS:
                for m, values in views[view].items():
                    if m == "idle_experts":
                        continue
                    column = values[layers, p]
                    defined = column[~np.isnan(column)]
                    aggregates = {
                        "mean_of_layers": defined.mean() if defined.size else np.nan,
                        "max_over_layers": defined.max() if defined.size else np.nan,
                    }
                    if (view, m) in sums:
                        top, mean = (a[layers, p].sum() for a in sums[(view, m)])
                        aggregates["ratio_of_sums"] = top / mean if mean > 0 else np.nan
                    rows += [
                        {
                            "run": self.run,
                            "phase": phase,
                            "view": view,
                            "metric": m,
                            "aggregation": aggregation,
                            "value": _clean(value),
                            "layers": int(defined.size),
                        }
                        for aggregation, value in aggregates.items()
                    ]
        return rows


Placement = ExpertPlacement | str | None


def _placement(placement: Placement, num_experts: int, num_ranks: int) -> ExpertPlacement:
    """An explicit placement, its text form (see ExpertPlacement.parse), or contiguous."""
    if isinstance(placement, str):
        return ExpertPlacement.parse(placement, num_experts)
    return placement or ExpertPlacement.contiguous(num_experts, num_ranks)


def analyze_routing_log(
    paths: str | Path | Sequence[str | Path],
    *,
    run: str | None = None,
    placement: Placement = None,
    num_ranks: int | None = None,
    per_step: PerStepSink | None = None,
    chunk_records: int = DEFAULT_CHUNK_RECORDS,
) -> RunImbalance:
    """Tables of one run from its `moe-routing` log(s) (one file per rank; headers must agree).

    The EP rank count defaults to the header's world_size when above 1, else
    DEFAULT_EP_RANKS. A record cut by a crash is dropped and listed in `skipped`.
    """
    files = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    logs = [RoutingLog(p) for p in files]
    first = logs[0].header
    if odd := odd_header(logs, ("num_experts", "num_layers", "top_k")):
        h = odd.header
        raise ArtifactError(
            f"header (experts {h.num_experts}, layers {h.num_layers}, top_k {h.top_k}) "
            f"differs from {logs[0].path}'s ({first.num_experts}, {first.num_layers}, "
            f"{first.top_k}); one run's logs must come from one model",
            path=odd.path,
        )
    ranks = num_ranks or (first.world_size if first.world_size > 1 else DEFAULT_EP_RANKS)
    acc = ImbalanceAccumulator(
        num_experts=first.num_experts,
        num_layers=first.num_layers,
        top_k=first.top_k,
        placement=_placement(placement, first.num_experts, ranks),
        run=run if run is not None else files[0].stem,
        per_step=per_step,
    )
    skipped = []
    for log in logs:
        chunks = -(-log.num_records // chunk_records)
        for block in track(routing_blocks(log, chunk_records), f"{log.path.name}", chunks):
            acc.add(block)
        if log.truncated:
            skipped.append(
                Skipped(
                    str(log.path),
                    f"last record cut by a crash ({log.trailing_bytes} bytes), dropped",
                )
            )
    return acc.result(source=",".join(map(str, files)), skipped=skipped)


def analyze_gate_log_run(
    run_dir: str | Path,
    *,
    run: str | None = None,
    placement: Placement = None,
    num_ranks: int | None = None,
    num_layers: int | None = None,
    top_k: int = 2,
    skip_bad: bool = False,
    per_step: PerStepSink | None = None,
) -> RunImbalance:
    """Tables of one study run from its folder `gates_logs_NN/` (Mixtral: top-2 of 8)."""
    logs = read_gate_log_run(run_dir, num_layers=num_layers, skip_bad=skip_bad)
    acc = ImbalanceAccumulator(
        num_experts=logs.num_experts,
        num_layers=logs.num_layers,
        top_k=top_k,
        placement=_placement(placement, logs.num_experts, num_ranks or DEFAULT_EP_RANKS),
        run=run if run is not None else logs.path.name,
        per_step=per_step,
    )
    for block in logs.blocks:
        acc.add(block)
    return acc.result(source=str(logs.path), skipped=logs.skipped)


def analyze_path(
    path: str | Path,
    *,
    placement: Placement = None,
    num_ranks: int | None = None,
    num_layers: int | None = None,
    top_k: int = 2,
    skip_bad: bool = False,
    per_step: PerStepSink | None = None,
    chunk_records: int = DEFAULT_CHUNK_RECORDS,
) -> tuple[list[RunImbalance], list[Skipped]]:
    """(runs, runs left out) of a routing log file, a gate-log run folder, or a folder of
    gate-log runs (those runs are named `<folder>/<run>`).

    num_layers and top_k apply to gate logs only (routing logs carry them in the header);
    with skip_bad a gate-log run with no readable file is left out whole.
    """
    path = Path(path)
    if path.is_file():
        run = analyze_routing_log(
            path,
            placement=placement,
            num_ranks=num_ranks,
            per_step=per_step,
            chunk_records=chunk_records,
        )
        return [run], []
    if not path.exists():
        raise ArtifactError("no such file or folder", path=path)
    runs = find_gate_log_runs(path)
    results, left_out = [], []
    for run_dir in track(runs, f"{path.name}: gate-log runs"):
        try:
            results.append(
                analyze_gate_log_run(
                    run_dir,
                    run=run_dir.name if run_dir == path else f"{path.name}/{run_dir.name}",
                    placement=placement,
                    num_ranks=num_ranks,
                    num_layers=num_layers,
                    top_k=top_k,
                    skip_bad=skip_bad,
                    per_step=per_step,
                )
            )
        except ArtifactError as exc:
            if not skip_bad:
                raise
            left_out.append(Skipped.from_error(exc, run_dir))
    return results, left_out
