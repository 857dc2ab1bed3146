"""Tables, cost model, figure and summary of the parallel benchmark (rank 0; numpy only).

Per configuration (T, routing, mode, placement) the ranks' phase timings reduce to
(`config_rows`):

- per call: layer time = the largest total over the ranks (the call ends when the last
  rank has its output); `compute_ms` = the slowest rank's compute (the most compute time
  of any rank: what the imbalance drives) and `comm_ms` = layer - compute_ms, the rest of
  the critical path: the transfers and the waiting for the slowest rank; `comm_min_ms` =
  the least communication time of any rank, the transfers with the least waiting;
- medians over every timed call (all sets); p10/p90 of the layer time;
- bytes sent per rank (artifact.gpu.parallel.layer), the per-rank assignment loads and their
  max/mean (`rank_max_mean`; tp: every rank computes every assignment on its slice, 1).

The cost model (`fit_rows`): per mode and T, over every timed input set (all routings and
placements), layer_ms = a + b * x by least squares, x = the set's rank max/mean for the EP
modes (the slowest rank's share of the work over an even split) and the expert max/mean
for tp (whose per-rank work does not depend on it). a + b is the layer at an even split,
b / (a + b) the share of it that grows with the slowest rank's load. Where EP beats TP
(`crossover_rows`): EP is faster than TP's median at that T while x < (tp_ms - a) / b.
What rebalancing recovers (`eplb_rows`): per routing, linear vs each eplb placement;
recovered = (linear - eplb) / (linear - (a + b)), the part of linear's imbalance cost that
the placement wins back (None where linear is within 2% of the even split: nothing to win).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from artifact.core.io import atomic_open, atomic_write_json, atomic_write_text
from artifact.core.tables import csv_text, markdown_table
from artifact.gpu.parallel.options import COMM_PHASES
from artifact.routing.measures import max_mean

RESULT_COLUMNS = (
    "card",
    "ranks",
    "tokens",
    "global_tokens",
    "routing",
    "mode",
    "placement",
    "status",
    "rel_err",
    "single_gpu_err",
    "layer_ms",
    "layer_p10_ms",
    "layer_p90_ms",
    "compute_ms",
    "comm_ms",
    "comm_min_ms",
    "vs_tp",
    "bytes_rank_max",
    "bytes_total",
    "expert_max_mean",
    "rank_max_mean",
    "rank_assignments_max",
    "rank_assignments_mean",
    "sets",
    "calls",
)
SET_COLUMNS = (
    "tokens",
    "routing",
    "mode",
    "placement",
    "set",
    "layer_ms",
    "compute_ms",
    "comm_ms",
    "expert_max_mean",
    "rank_max_mean",
    "slots",
)
PHASE_COLUMNS = ("tokens", "routing", "mode", "placement", "rank", "phase", "kind", "ms", "bytes")
FIT_COLUMNS = (
    "mode",
    "tokens",
    "x",
    "points",
    "x_min",
    "x_max",
    "intercept_ms",
    "slope_ms",
    "r2",
    "balanced_ms",
    "imbalance_share",
)
CROSSOVER_COLUMNS = (
    "tokens",
    "mode",
    "tp_ms",
    "balanced_ms",
    "balanced_vs_tp",
    "ep_wins_below",
    "verdict",
)
EPLB_COLUMNS = (
    "tokens",
    "routing",
    "mode",
    "placement",
    "linear_ms",
    "eplb_ms",
    "speedup",
    "linear_rank_max_mean",
    "eplb_rank_max_mean",
    "balanced_ms",
    "recovered",
    "eplb_vs_tp",
)


def _round(value, digits: int = 6):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return float(f"{float(value):.{digits}g}")


def config_rows(meta: dict, records: list[dict]) -> tuple[dict, list[dict], list[dict]]:
    """(result row, per-set rows, per-rank-phase rows) of one configuration.

    meta: tokens, routing, mode, placement, ranks, global_tokens, top_k, rel_err,
    single_gpu_err, status. records[r] (rank r): `phases` (names), `sets`: per set `ms`
    (reps, phases), `bytes` (phase -> bytes sent), `assignments` (R,), `loads` (E,), `slots`.
    """
    row = {k: meta[k] for k in ("ranks", "tokens", "global_tokens", "routing", "mode")}
    row.update(placement=meta["placement"], status=meta["status"])
    row.update(rel_err=_round(meta["rel_err"]), single_gpu_err=_round(meta["single_gpu_err"]))
    if not records[0]["sets"]:
        return row, [], []
    phases = records[0]["phases"]
    ms = np.stack([np.stack([s["ms"] for s in rec["sets"]]) for rec in records])  # R,S,reps,P
    comm = np.array([p in COMM_PHASES for p in phases])
    total = ms.sum(-1)
    compute = ms[..., ~comm].sum(-1)
    layer = total.max(0)
    compute_slow = compute.max(0)
    comm_slow = layer - compute_slow
    sets = records[0]["sets"]
    assignments = np.stack([s["assignments"] for s in sets]).astype(np.float64)  # S,R
    loads = np.stack([s["loads"] for s in sets])
    sent = np.array([[sum(s["bytes"].values()) for s in rec["sets"]] for rec in records])
    row.update(
        layer_ms=_round(np.median(layer)),
        layer_p10_ms=_round(np.percentile(layer, 10)),
        layer_p90_ms=_round(np.percentile(layer, 90)),
        compute_ms=_round(np.median(compute_slow)),
        comm_ms=_round(np.median(comm_slow)),
        comm_min_ms=_round(np.median((total - compute).min(0))),
        bytes_rank_max=int(sent.mean(1).max()),
        bytes_total=int(sent.mean(1).sum()),
        expert_max_mean=_round(np.mean(max_mean(loads))),
        rank_max_mean=_round(np.mean(max_mean(assignments))),
        rank_assignments_max=_round(assignments.max(1).mean()),
        rank_assignments_mean=_round(assignments.mean()),
        sets=len(sets),
        calls=int(layer.size),
    )
    key = {k: meta[k] for k in ("tokens", "routing", "mode", "placement")}
    set_rows = [
        {
            **key,
            "set": i,
            "layer_ms": _round(np.median(layer[i])),
            "compute_ms": _round(np.median(compute_slow[i])),
            "comm_ms": _round(np.median(comm_slow[i])),
            "expert_max_mean": _round(max_mean(loads[i])),
            "rank_max_mean": _round(max_mean(assignments[i])),
            "slots": s["slots"],
        }
        for i, s in enumerate(sets)
    ]
    phase_rows = [
        {
            **key,
            "rank": r,
            "phase": phase,
            "kind": "comm" if comm[p] else "compute",
            "ms": _round(np.median(ms[r, ..., p])),
            "bytes": int(np.mean([s["bytes"].get(phase, 0) for s in rec["sets"]])),
        }
        for r, rec in enumerate(records)
        for p, phase in enumerate(phases)
    ]
    return row, set_rows, phase_rows


def add_vs_tp(results: list[dict]) -> None:
    """vs_tp: layer time over tp's at the same T and routing."""
    tp = {(r["tokens"], r["routing"]): r["layer_ms"] for r in results if r["mode"] == "tp"}
    for r in results:
        base = tp.get((r["tokens"], r["routing"]))
        if r.get("layer_ms") and base:
            r["vs_tp"] = _round(r["layer_ms"] / base)


def fit_rows(set_rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in set_rows:
        groups[(r["mode"], r["tokens"])].append(r)
    out = []
    for (mode, tokens), members in sorted(groups.items()):
        x_key = "expert_max_mean" if mode == "tp" else "rank_max_mean"
        x = np.array([m[x_key] for m in members], dtype=np.float64)
        y = np.array([m["layer_ms"] for m in members], dtype=np.float64)
        row = {
            "mode": mode,
            "tokens": tokens,
            "x": x_key,
            "points": len(members),
            "x_min": _round(x.min()),
            "x_max": _round(x.max()),
        }
        if len(x) >= 3 and np.ptp(x) > 1e-3:
            slope, intercept = np.polyfit(x, y, 1)
            residual = y - (intercept + slope * x)
            spread = ((y - y.mean()) ** 2).sum()
            balanced = intercept + slope
            row.update(
                intercept_ms=_round(intercept),
                slope_ms=_round(slope),
                r2=_round(1 - (residual**2).sum() / spread) if spread > 0 else None,
                balanced_ms=_round(balanced),
                imbalance_share=_round(slope / balanced) if balanced > 0 else None,
            )
        out.append(row)
    return out


def _tp_ms(results: list[dict], tokens: int) -> float | None:
    values = [r["layer_ms"] for r in results if r["mode"] == "tp" and r["tokens"] == tokens]
    values = [v for v in values if v]
    return float(np.median(values)) if values else None


def crossover_rows(results: list[dict], fits: list[dict]) -> list[dict]:
    out = []
    for fit in fits:
        if fit["mode"] == "tp" or fit.get("slope_ms") is None:
            continue
        tp_ms = _tp_ms(results, fit["tokens"])
        if tp_ms is None:
            continue
        a, b = fit["intercept_ms"], fit["slope_ms"]
        balanced = fit["balanced_ms"]
        row = {
            "tokens": fit["tokens"],
            "mode": fit["mode"],
            "tp_ms": _round(tp_ms),
            "balanced_ms": balanced,
            "balanced_vs_tp": _round(balanced / tp_ms),
        }
        if b > 0:
            threshold = (tp_ms - a) / b
            row["ep_wins_below"] = _round(threshold)
            row["verdict"] = (
                "EP loses even at an even split"
                if threshold <= 1
                else f"EP wins while rank max/mean < {threshold:.3g}"
            )
        else:
            row["verdict"] = (
                "EP wins at every observed imbalance"
                if balanced < tp_ms
                else "EP loses at every observed imbalance"
            )
        out.append(row)
    return out


def eplb_rows(results: list[dict], fits: list[dict]) -> list[dict]:
    timed = {
        (r["tokens"], r["routing"], r["mode"], r["placement"]): r
        for r in results
        if r.get("layer_ms")
    }
    balanced = {(f["mode"], f["tokens"]): f.get("balanced_ms") for f in fits}
    out = []
    for (tokens, routing, mode, placement), r in sorted(timed.items()):
        if not placement.startswith("eplb"):
            continue
        lin = timed.get((tokens, routing, mode, "linear"))
        if lin is None:
            continue
        even = balanced.get((mode, tokens))
        recovered = None
        if even is not None and lin["layer_ms"] > 1.02 * even:
            recovered = (lin["layer_ms"] - r["layer_ms"]) / (lin["layer_ms"] - even)
        out.append(
            {
                "tokens": tokens,
                "routing": routing,
                "mode": mode,
                "placement": placement,
                "linear_ms": lin["layer_ms"],
                "eplb_ms": r["layer_ms"],
                "speedup": _round(lin["layer_ms"] / r["layer_ms"]),
                "linear_rank_max_mean": lin["rank_max_mean"],
                "eplb_rank_max_mean": r["rank_max_mean"],
                "balanced_ms": even,
                "recovered": _round(recovered),
                "eplb_vs_tp": r.get("vs_tp"),
            }
        )
    return out


def summary_markdown(info: dict, results, fits, crossover, eplb) -> str:
    bad = [r for r in results if r["status"] != "ok"]
    worst = max((r["rel_err"] for r in results if r.get("rel_err") is not None), default=None)
    parts = [
        f"# MoE layer over {info['ranks']} ranks: TP vs EP ({info['card']})\n\n",
        f"{info['ranks']} ranks on {info['nodes']} node(s), backend {info['backend']}"
        f" (NCCL {info.get('nccl') or '-'}), torch {info['torch']}; shape H,I,E,k = "
        f"{info['shape']}, {info['dtype']}, per-rank compute `{info['impl']}`; "
        f"{info['sets']} input sets x {info['reps']} calls per configuration; T = tokens "
        f"per rank (the global batch is R*T in every mode).\n\n",
        f"Correctness: {len(results) - len(bad)}/{len(results)} configurations within "
        f"relative error {info['tolerance']:g} of the float64 single-GPU reference"
        + (f" (largest {worst:.2e})" if worst is not None else "")
        + (f"; failing: {', '.join(_label(r) for r in bad)}" if bad else "")
        + ".\n",
        "\n## Layer time (median ms over the calls; the last rank to finish), split into the "
        "slowest rank's compute and the rest (communication and waiting)\n\n",
        markdown_table(
            results,
            (
                "tokens",
                "routing",
                "mode",
                "placement",
                "layer_ms",
                "compute_ms",
                "comm_ms",
                "comm_min_ms",
                "vs_tp",
                "rank_max_mean",
                "expert_max_mean",
                "bytes_rank_max",
                "rel_err",
            ),
        ),
        "\n## Imbalance cost model: layer_ms = a + b * max/mean (per mode and T, over every "
        "timed input set)\n\n",
        markdown_table(fits, FIT_COLUMNS),
        "\n## Where EP beats TP\n\n",
        markdown_table(crossover, CROSSOVER_COLUMNS),
    ]
    if eplb:
        parts += [
            "\n## What the rebalanced (EPLB-style, oracle) placement recovers\n\n",
            markdown_table(eplb, EPLB_COLUMNS),
        ]
    return "".join(parts)


def _label(r: dict) -> str:
    return f"T={r['tokens']} {r['routing']} {r['mode']} {r['placement']}"


def plot(results: list[dict], set_rows: list[dict], fits: list[dict], path: Path) -> None:
    """parallel.png: (a) layer time under uniform routing, (b) EP / TP per routing, (c) the
    cost model's points and lines, (d) compute and communication relative to TP, (e) what
    the eplb placements win over linear, (f) bytes sent per rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in results if r.get("layer_ms")]
    routings = sorted({r["routing"] for r in timed})
    colors = {name: f"C{i}" for i, name in enumerate(routings)}
    styles = {"tp": "-", "ep-agrs": "--", "ep-a2a": ":"}
    base = [r for r in timed if r["mode"] == "tp" or r["placement"] == "linear"]
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))

    ax = axes[0, 0]
    for key, group in _groups([r for r in base if r["routing"] == "uniform"], ("mode",)).items():
        ax.plot(*_xy(group, "layer_ms"), styles[key[0]], marker="o", label=key[0])
    ax.set(xscale="log", yscale="log", xlabel="tokens per rank T", ylabel="ms")
    ax.set_title("(a) layer time, uniform routing (EP: linear placement)")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    for (mode, routing), group in _groups(base, ("mode", "routing")).items():
        if mode != "tp":
            ax.plot(
                *_xy(group, "vs_tp"),
                styles[mode],
                marker="o",
                color=colors[routing],
                label=f"{mode} {routing}",
            )
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="tokens per rank T", ylabel="EP / TP layer time")
    ax.set_title("(b) EP vs TP, linear placement (below 1: EP faster)")
    ax.legend(fontsize=7)

    ax = axes[0, 2]
    fit_of = {(f["mode"], f["tokens"]): f for f in fits}
    for i, ((mode, tokens), group) in enumerate(_groups(set_rows, ("mode", "tokens")).items()):
        fit = fit_of.get((mode, tokens))
        if mode == "tp" or not fit or not fit.get("balanced_ms"):
            continue
        x = np.array([r["rank_max_mean"] for r in group])
        y = np.array([r["layer_ms"] for r in group]) / fit["balanced_ms"]
        color, marker = f"C{i % 10}", "o" if mode == "ep-a2a" else "s"
        ax.plot(x, y, marker, ms=3, color=color, label=f"{mode} T={tokens}")
        grid = np.linspace(1.0, max(x.max(), 1.0), 10)
        line = (fit["intercept_ms"] + fit["slope_ms"] * grid) / fit["balanced_ms"]
        ax.plot(grid, line, styles[mode], color=color, lw=0.8)
    ax.set(xlabel="rank max/mean load of the set", ylabel="layer ms / fitted even-split ms")
    ax.set_title("(c) imbalance cost model, per timed input set")
    ax.legend(fontsize=6, ncol=2)

    ax = axes[1, 0]
    uniform = [r for r in base if r["routing"] == "uniform" and r.get("vs_tp")]
    tokens = sorted({r["tokens"] for r in uniform})
    modes = [m for m in styles if any(r["mode"] == m for r in uniform)]
    width = 0.8 / max(len(modes), 1)
    for j, mode in enumerate(modes):
        rows = {r["tokens"]: r for r in uniform if r["mode"] == mode}
        pos = np.arange(len(tokens)) + j * width
        scale = [rows[t]["vs_tp"] / rows[t]["layer_ms"] if t in rows else 0 for t in tokens]
        compute = [
            rows[t]["compute_ms"] * k if t in rows else 0
            for t, k in zip(tokens, scale, strict=True)
        ]
        comm = [
            rows[t]["comm_ms"] * k if t in rows else 0 for t, k in zip(tokens, scale, strict=True)
        ]
        ax.bar(pos, compute, width, color=f"C{j}", label=f"{mode} compute")
        ax.bar(
            pos,
            comm,
            width,
            bottom=compute,
            color=f"C{j}",
            alpha=0.45,
            label=f"{mode} communication",
        )
    ax.set_xticks(np.arange(len(tokens)) + width * (len(modes) - 1) / 2, [str(t) for t in tokens])
    ax.set(xlabel="tokens per rank T", ylabel="time / TP layer time")
    ax.set_title("(d) compute and communication, uniform routing, linear placement")
    ax.legend(fontsize=6)

    ax = axes[1, 1]
    by_key = {(r["tokens"], r["routing"], r["mode"], r["placement"]): r for r in timed}
    for (tokens, routing, mode, placement), r in by_key.items():
        lin = by_key.get((tokens, routing, mode, "linear"))
        if placement.startswith("eplb") and lin:
            ax.plot(
                lin["rank_max_mean"],
                lin["layer_ms"] / r["layer_ms"],
                "o" if placement == "eplb:0" else "^",
                color=colors[routing],
                ms=4,
            )
    for routing in routings:
        ax.plot([], [], "o", color=colors[routing], label=routing)
    ax.plot([], [], "ko", label="eplb:0 (moves)")
    ax.plot([], [], "k^", label="eplb:N (replicates)")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set(xlabel="rank max/mean under linear placement", ylabel="linear ms / eplb ms")
    ax.set_title("(e) what the rebalanced placement wins (every T and EP mode)")
    ax.legend(fontsize=6)

    ax = axes[1, 2]
    for key, group in _groups([r for r in base if r["routing"] == "uniform"], ("mode",)).items():
        ax.plot(*_xy(group, "bytes_rank_max"), styles[key[0]], marker="o", label=key[0])
    ax.set(xscale="log", yscale="log", xlabel="tokens per rank T", ylabel="bytes")
    ax.set_title("(f) bytes sent by the busiest rank, uniform routing")
    ax.legend(fontsize=7)

    fig.suptitle(f"MoE layer over {timed[0]['ranks'] if timed else '?'} ranks: TP vs EP")
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _xy(rows: list[dict], key: str) -> tuple[list, list]:
    pts = sorted((r["tokens"], r[key]) for r in rows if r.get(key))
    return [p[0] for p in pts], [p[1] for p in pts]


def _groups(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return dict(sorted(out.items(), key=lambda item: tuple(map(str, item[0]))))


def write_outputs(out_dir: Path, info: dict, results, set_rows, phase_rows) -> dict:
    """Every table, the figure and summary.md; returns the derived tables."""
    for r in results:
        r["card"] = info["card"]
    add_vs_tp(results)
    fits = fit_rows(set_rows)
    crossover = crossover_rows(results, fits)
    eplb = eplb_rows(results, fits)
    tables = {
        "results": (results, RESULT_COLUMNS),
        "sets": (set_rows, SET_COLUMNS),
        "phases": (phase_rows, PHASE_COLUMNS),
        "fit": (fits, FIT_COLUMNS),
        "crossover": (crossover, CROSSOVER_COLUMNS),
        "eplb": (eplb, EPLB_COLUMNS),
    }
    for name, (rows, columns) in tables.items():
        atomic_write_text(out_dir / f"{name}.csv", csv_text(rows, columns))
    atomic_write_json(out_dir / "run.json", info)
    atomic_write_text(
        out_dir / "summary.md", summary_markdown(info, results, fits, crossover, eplb)
    )
    plot(results, set_rows, fits, out_dir / "parallel.png")
    return {"fit": fits, "crossover": crossover, "eplb": eplb}
