"""Every figure of the study, from a run directory's tidy tables (ours or the study's).

Each function draws one figure, saves it as PNG and returns a `Figure` (number, title,
caption, file). The numbering follows the study's report:

- Fig. 1 / Fig. 2 (Experiment 1): TTFT, TPOT and output throughput vs max-num-seqs at the
  fixed max-num-batched-tokens, and vs max-num-batched-tokens at the fixed max-num-seqs;
- Table 1 / Fig. 3 (Experiment 2): the EPLB off vs on kernel comparison (nsys);
- Fig. 4 / Fig. 5 (Experiment 3): performance vs predicted score, and vs observed imbalance;

and, new in this artifact, Fig. 6 (predicted vs observed imbalance), Fig. 7 (per-layer expert
load heatmaps per mode and dataset) and Fig. 8 (per-rank load under expert parallelism).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure as MplFigure

from artifact.checker.query import launch_groups
from artifact.core.io import atomic_write_bytes
from artifact.core.tables import markdown_table
from artifact.routing.correlation import correlation

if TYPE_CHECKING:
    import pandas as pd

PERF = (
    ("mean_ttft_ms", "TTFT (mean, ms)"),
    ("mean_tpot_ms", "TPOT (mean, ms)"),
    ("output_throughput", "output throughput (tok/s)"),
)
MEASURE_LABELS = {
    "imb_cv": "per-layer CV of expert loads\n(mean over layers)",
    "imb_rank_max_mean": "busiest EP rank / mean\n(mean over layers)",
    "imb_max_mean": "busiest expert / mean\n(mean over layers)",
    "imb_legacy-per-step": "study's per-step CV\n(legacy-per-step)",
    "imb_legacy-aggregated": "study's aggregated CV\n(legacy-aggregated)",
}
KNOB_LABELS = {"max_num_seqs": "max-num-seqs", "max_num_batched_tokens": "max-num-batched-tokens"}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
MARKERS = ("o", "s", "^", "D", "v", "P")
DPI = 110

plt.rcParams.update(
    {
        "font.size": 11,
        "axes.titlesize": 12,
        "axes.labelsize": 11,
        "legend.fontsize": 9,
        "axes.grid": True,
        "grid.alpha": 0.3,
    }
)


@dataclass
class Figure:
    number: str  # "1", "3", "7a", ...
    slug: str
    title: str
    caption: str
    path: Path
    section: str


def mode_colors(modes: Sequence[str]) -> dict[str, str]:
    return {m: COLORS[i % len(COLORS)] for i, m in enumerate(modes)}


def mode_style(modes: Sequence[str], mode: str) -> dict:
    """Scatter style: filled circles for the first mode, hollow squares, triangles... after,
    so that modes with identical values stay visible."""
    i = list(modes).index(mode)
    color = COLORS[i % len(COLORS)]
    if i == 0:
        return {"marker": "o", "color": color, "s": 24}
    return {"marker": MARKERS[i % len(MARKERS)], "facecolor": "none", "edgecolor": color, "s": 48}


LINESTYLES = ("-", "--", ":", "-.")
LINESTYLE_NAMES = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dotted"}


def with_columns(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The table with each of `columns` it lacks added as all None (a row without the key)."""
    return table.assign(**{c: None for c in columns if c not in table})


def save(fig: MplFigure, path: Path, *, tight: bool = True) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def median_ci(
    values: Sequence[float], confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(median, low, high): the percentile bootstrap interval of the median, which stays
    inside the values' own range (no interval below zero for a positive quantity)."""
    v = np.asarray(values, dtype=np.float64)
    boot = np.median(v[np.random.default_rng(seed).integers(0, v.size, (n_boot, v.size))], axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(boot, [tail, 100 - tail])
    return float(np.median(v)), float(low), float(high)


def launch_values(rows: pd.DataFrame, column: str) -> list[float]:
    """The rows' values of `column`, one per server launch (the median of its runs) where
    they come from several launches, else one per run."""
    values = rows[column].astype(float).tolist()
    if "run" not in rows or "launch" not in rows:
        return values
    groups = launch_groups(rows["run"].tolist(), rows["launch"].tolist())
    return values if groups is None else [float(np.median([values[i] for i in g])) for g in groups]


def total_concurrency(rows: pd.DataFrame) -> pd.Series | None:
    """max-num-seqs x data-parallel ranks (each rank admits max-num-seqs sequences), where
    some mode runs more than one rank; None where every mode runs one."""
    if "data_parallel_size" not in rows:
        return None
    ranks = rows["data_parallel_size"].astype(float).fillna(1)
    return None if (ranks <= 1).all() else rows["max_num_seqs"] * ranks


def _log_scale_if_wide(ax, values: Sequence[float]) -> None:
    v = [x for x in values if x and x > 0]
    if v and max(v) / min(v) > 20:
        ax.set_yscale("log")


# --- Experiment 1 -----------------------------------------------------------------------------


def sweep_figure(
    runs: pd.DataFrame,
    *,
    knob: str,
    fixed_knob: str,
    fixed_value: int,
    modes: Sequence[str],
    out: Path,
    number: str,
) -> Figure | None:
    metrics = [metric for metric, _ in PERF]
    table = with_columns(runs, ["experiment", "mode", "engine_version", knob, fixed_knob, *metrics])
    rows = table[
        (table["experiment"] == "config_sweep")
        & (table[fixed_knob] == fixed_value)
        & table["mode"].isin(list(modes))
    ]
    if rows.empty:
        return None
    x_label = KNOB_LABELS[knob]
    total = total_concurrency(rows) if knob == "max_num_seqs" else None
    if total is not None:  # modes with DP ranks admit max-num-seqs per rank
        rows = rows.assign(max_num_seqs=total)
        x_label = "total concurrency (max-num-seqs x DP ranks)"
    launches = "launch" in rows and rows["launch"].nunique() > 1
    colors = mode_colors(modes)
    version = rows["engine_version"].map(lambda v: str(v or "unknown"))
    versions = sorted(set(version))
    mark_versions = len(versions) > 1
    version_marker = {v: MARKERS[i % len(MARKERS)] for i, v in enumerate(versions)}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    max_reps = 1
    for ax, (metric, label) in zip(axes, PERF, strict=True):
        all_values = []
        for mode in modes:
            done = rows[(rows["mode"] == mode) & rows[metric].notna()]
            # the runs at each setting of the knob, in ascending order
            groups: dict[Any, Any] = {
                x: group[metric] for x, group in done.groupby(knob, sort=True)
            }
            if not groups:
                continue
            xs = list(groups)
            dodge = 1 + 0.025 * (list(modes).index(mode) - (len(modes) - 1) / 2)
            points = {x: launch_values(done.loc[groups[x].index], metric) for x in xs}
            stats_ = [median_ci(points[x]) for x in xs]
            medians = [m for m, _, _ in stats_]
            below = [m - low for m, low, _ in stats_]
            above = [high - m for m, _, high in stats_]
            max_reps = max(max_reps, *(len(p) for p in points.values()))
            all_values += [v for x in xs for v in groups[x]]
            ax.errorbar(
                [x * dodge for x in xs],
                medians,
                yerr=[below, above] if any(below) or any(above) else None,
                color=colors[mode],
                marker="o" if not mark_versions else None,
                capsize=4,
                lw=2,
                label=mode,
            )
            for x in xs:
                if len(points[x]) > 1:
                    ax.scatter(
                        [x * dodge] * len(points[x]),
                        points[x],
                        color=colors[mode],
                        s=12,
                        alpha=0.35,
                    )
            if mark_versions:
                for x in xs:
                    for v, value in zip(version[groups[x].index], groups[x], strict=True):
                        ax.scatter(
                            x * dodge,
                            value,
                            marker=version_marker[v],
                            s=60,
                            facecolor=colors[mode],
                            edgecolor="black",
                            zorder=3,
                        )
        ax.set_xscale("log", base=2)
        ticks = sorted(set(rows[knob]))
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(x_label)
        ax.set_ylabel(label)
        _log_scale_if_wide(ax, all_values)
        ax.set_title(label.split(" (")[0])
    handles, labels = axes[0].get_legend_handles_labels()
    if mark_versions:
        from matplotlib.lines import Line2D

        for v in versions:
            handles.append(
                Line2D(
                    [],
                    [],
                    marker=version_marker[v],
                    ls="",
                    color="gray",
                    markeredgecolor="black",
                    markersize=8,
                )
            )
            labels.append(f"engine {v}")
    fixed_label = KNOB_LABELS[fixed_knob]
    fig.suptitle(
        f"Experiment 1: performance vs {KNOB_LABELS[knob]} ({fixed_label} fixed at {fixed_value})",
        y=1.12,
    )
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 1.06))
    fig.text(
        0.995,
        -0.02,
        f"fixed: {fixed_label} = {fixed_value}",
        ha="right",
        fontsize=10,
        style="italic",
    )
    fig.tight_layout()
    path = save(fig, out / f"fig{number}_sweep_{knob}.png")
    unit = "server launches (each the median of its runs)" if launches else "repetitions"
    reps_text = (
        f"lines join the medians of {max_reps} {unit}, error bars are 95% percentile-bootstrap "
        f"intervals of the median (inside the {unit.split(' (')[0]}' range, never below zero) "
        "and dots the single values"
        if max_reps > 1
        else "one run per point (no repetitions, so no error bars)"
    )
    if total is not None:
        reps_text += (
            "; the x axis is the total concurrency: max-num-seqs applies per data-parallel "
            "rank, so a mode with DP ranks admits max-num-seqs x ranks sequences"
        )
    version_text = (
        f"; marker shapes tell the engine builds apart ({', '.join(versions)}): points on "
        "different builds are not comparable"
        if mark_versions
        else ""
    )
    return Figure(
        number=number,
        slug=f"sweep_{knob}",
        title=f"Experiment 1: performance vs {KNOB_LABELS[knob]}",
        caption=f"TTFT, TPOT and output throughput vs {x_label} at "
        f"{fixed_label} = {fixed_value}, one line per mode ({', '.join(modes)}); "
        f"{reps_text}{version_text}. Axes with a range over 20x are logarithmic.",
        path=path,
        section="Experiment 1",
    )


# --- Experiment 2 -----------------------------------------------------------------------------

EPLB_ROWS = (
    ("fused_moe.total_ms", "fused_moe total (ms)"),
    ("fused_moe.avg_us", "fused_moe mean (us)"),
    ("fused_moe.max_us", "fused_moe max (us)"),
    ("fused_moe.cv", "fused_moe CV"),
    ("moe.total_ms", "MoE kernels total (ms)"),
    ("nccl.total_ms", "NCCL total (ms)"),
    ("nccl.by_collective.AllReduce.total_ms", "NCCL AllReduce (ms)"),
    ("total_kernel_time_ms", "all kernels (ms)"),
)


def eplb_rows(comparison: pd.DataFrame) -> pd.DataFrame:
    """The comparison's rows of EPLB_ROWS' metrics, in that order, with their labels."""
    by_metric = comparison.drop_duplicates("metric", keep="last").set_index("metric", drop=False)
    keys = [k for k, _ in EPLB_ROWS if k in by_metric.index]
    return by_metric.loc[keys].assign(label=[dict(EPLB_ROWS)[k] for k in keys])


def _interval(row: dict) -> tuple[float, float] | None:
    """The change's bootstrap interval (several profiled passes a side), else None."""
    low, high = row.get("change_low"), row.get("change_high")
    return None if low is None or high is None or math.isnan(low) else (low, high)


def eplb_markdown(comparison: pd.DataFrame, labels: tuple[str, str]) -> str:
    records = eplb_rows(comparison).to_dict("records")
    intervals = [_interval(r) for r in records]
    rows = [
        (
            r["label"],
            f"{r['a']:,.2f}",
            f"{r['b']:,.2f}",
            "n/a" if r["change_pct"] is None else f"{r['change_pct']:+.1f}%",
        )
        + ((f"[{ci[0]:+.1f}, {ci[1]:+.1f}]%" if ci else "n/a",) if any(intervals) else ())
        for r, ci in zip(records, intervals, strict=True)
    ]
    header: tuple[str, ...] = ("kernel metric", *labels, "change")
    if any(intervals):  # medians of the passes, the change's bootstrap interval
        header = ("kernel metric", *(f"{label}, median" for label in labels), "change", "95% CI")
    return markdown_table(rows, header, align="lrrr" + "r" * any(intervals))


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def eplb_figure(
    comparison: pd.DataFrame, labels: tuple[str, str], out: Path, note: str = ""
) -> Figure | None:
    table = eplb_rows(comparison)
    rows = table[table["change_pct"].notna()].to_dict("records")
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.6))
    y = np.arange(len(rows))[::-1]
    changes = [r["change_pct"] for r in rows]
    colors = ["#d62728" if c > 0 else "#2ca02c" for c in changes]
    intervals = [_interval(r) for r in rows]
    bounds = [ci for ci in intervals if ci]
    xerr = None
    if len(bounds) == len(rows):
        xerr = np.array([[c - lo, hi - c] for c, (lo, hi) in zip(changes, bounds, strict=True)])
    ax.barh(y, changes, color=colors, alpha=0.8, xerr=None if xerr is None else xerr.T)
    ax.set_yticks(y)
    ax.set_yticklabels([r["label"] for r in rows])
    ax.axvline(0, color="black", lw=1)
    span = max(abs(v) for v in [*changes, *(b for ci in bounds for b in ci)])
    for yi, r, ci in zip(y, rows, intervals, strict=True):
        text = f"{_num(r['a'])} -> {_num(r['b'])} ({r['change_pct']:+.1f}%)"
        up = r["change_pct"] >= 0
        end = (max if up else min)([r["change_pct"], *(ci or ())])  # past the error bar
        ax.text(
            end + (0.02 * span if up else -0.02 * span),
            yi,
            text,
            va="center",
            ha="left" if up else "right",
            fontsize=9,
        )
    ax.set_xlim(-1.9 * span, 1.9 * span)
    ax.set_xlabel(f"change of {labels[1]} relative to {labels[0]} (%)")
    ax.set_title(f"Experiment 2: kernel time, {labels[0]} vs {labels[1]} (nsys)")
    fig.tight_layout()
    path = save(fig, out / "fig3_eplb_kernels.png")
    return Figure(
        number="3",
        slug="eplb_kernels",
        title="Experiment 2: EPLB off vs on, kernel summary",
        caption=f"Change of each kernel-time measure from {labels[0]} to {labels[1]} "
        "(nsys CUDA kernel summaries; red: more time, green: less), with both values. "
        + (
            f"Medians of {rows[0]['n_a']} and {rows[0]['n_b']} profiled passes (one per server "
            "launch, the arms taking turns); error bars: 95% percentile-bootstrap intervals "
            "of the change."
            if xerr is not None
            else "One profiled run per side: no interval separates the change from "
            "run-to-run noise."
        )
        + (f" {note}" if note else ""),
        path=path,
        section="Experiment 2",
    )


# --- Experiment 3 -----------------------------------------------------------------------------


def _corr_label(corr: dict | None) -> str:
    if not corr or corr.get("r") is None:
        note = (corr or {}).get("note") or "n/a"
        return f"rho undefined ({note})"
    removed = f", {corr['n_removed']} IQR-removed" if corr.get("n_removed") else ""
    return (
        f"rho={corr['r']:+.2f} [{corr['ci_low']:+.2f}, {corr['ci_high']:+.2f}], "
        f"n={corr['n']}{removed}"
    )


def _find_corr(
    correlations: pd.DataFrame, mode: str, x: str, y: str, iqr: bool, pts: pd.DataFrame
) -> dict | None:
    """The correlations table's Spearman row, or the same computed here when it has none."""
    table = with_columns(correlations, ["group", "x", "y", "method", "iqr_filter"])
    found = table[
        (table["group"] == mode)
        & (table["x"] == x)
        & (table["y"] == y)
        & (table["method"] == "spearman")
        & (table["iqr_filter"].map(bool) == iqr)
    ]
    if not found.empty:
        return found.iloc[0].to_dict()
    computed = correlation(
        pts[x].tolist(),
        pts[y].tolist(),
        method="spearman",
        iqr=iqr,
        labels=pts["run"].tolist(),
    )
    row = computed.to_json()
    row["removed"] = [f"{i['label']} ({i['variable']})" for i in computed.removed]
    return row


def _scatter_fit(
    ax,
    rows: pd.DataFrame,
    x: str,
    y: str,
    modes: Sequence[str],
    colors: dict[str, str],
    correlations: pd.DataFrame,
    iqr: bool,
) -> int:
    """Scatter per mode, least-squares trend over the kept points, rho in the legend."""
    plotted = 0
    for mode in modes:
        pts = rows[(rows["mode"] == mode) & rows[x].notna() & rows[y].notna()]
        if pts.empty:
            continue
        corr = _find_corr(correlations, mode, x, y, iqr, pts)
        removed = set()
        if iqr and corr:
            removed = {item.split(" (")[0] for item in corr.get("removed") or []}
        dropped = pts["run"].isin(removed)
        kept, out = pts[~dropped], pts[dropped]
        xs = kept[x].to_numpy(dtype=float)
        ys = kept[y].to_numpy(dtype=float)
        label = f"{mode}: {_corr_label(corr)}"
        ax.scatter(xs, ys, alpha=0.85, label=label, **mode_style(modes, mode))
        if not out.empty:
            ax.scatter(
                out[x].tolist(),
                out[y].tolist(),
                color=colors[mode],
                marker="x",
                s=40,
                alpha=0.9,
            )
        if xs.size >= 2 and np.ptp(xs) > 0:
            slope, intercept = np.polyfit(xs, ys, 1)
            grid = np.linspace(xs.min(), xs.max(), 20)
            style = LINESTYLES[list(modes).index(mode) % len(LINESTYLES)]
            ax.plot(grid, slope * grid + intercept, color=colors[mode], lw=1.5, ls=style)
        plotted += 1
    return plotted


def trend_styles(modes: Sequence[str]) -> str:
    """The trend line style of each mode as _scatter_fit draws it, in words."""
    return ", ".join(
        f"{mode} {LINESTYLE_NAMES[LINESTYLES[i % len(LINESTYLES)]]}" for i, mode in enumerate(modes)
    )


def imbalance_figure(
    runs: pd.DataFrame,
    correlations: pd.DataFrame,
    *,
    xs: Sequence[str],
    ys: Sequence[tuple[str, str]],
    modes: Sequence[str],
    out: Path,
    number: str,
    slug: str,
    title: str,
    caption: str,
    iqr: bool,
) -> Figure | None:
    runs = with_columns(runs, ["experiment", "mode", "run", *xs, *(y for y, _ in ys)])
    rows = runs[(runs["experiment"] == "imbalance") & runs["mode"].isin(list(modes))]
    xs = [x for x in xs if rows[x].notna().any()]
    if rows.empty or not xs:
        return None
    colors = mode_colors(modes)
    fig, axes = plt.subplots(
        len(xs), len(ys), figsize=(5.4 * len(ys), 4.3 * len(xs)), squeeze=False
    )
    for i, x in enumerate(xs):
        for j, (y, label) in enumerate(ys):
            ax = axes[i][j]
            _scatter_fit(ax, rows, x, y, modes, colors, correlations, iqr)
            ax.set_xlabel(MEASURE_LABELS.get(x, x.replace("_", " ")))
            ax.set_ylabel(label)
            ax.legend(loc="best", fontsize=8, framealpha=0.8)
    fig.suptitle(title)
    fig.tight_layout()
    path = save(fig, out / f"fig{number}_{slug}.png")
    filt = (
        "after the study's 1.5 x IQR filter (removed points drawn as x; rho over the kept ones)"
        if iqr
        else "on every run (no outlier filter)"
    )
    return Figure(
        number=number,
        slug=slug,
        title=title,
        caption=f"{caption} Lines: least-squares trend per mode ({trend_styles(modes)}); "
        f"legend: Spearman rho with its bootstrap 95% interval and n, {filt}.",
        path=path,
        section="Experiment 3",
    )


# --- routing views ----------------------------------------------------------------------------


def _loads_by_run(table: pd.DataFrame, by: str, phase: str = "all") -> dict[str, np.ndarray]:
    """(layers, experts) or (layers, ranks) loads per run: the phase's loads summed per layer
    and `by` (`expert`, or `rank`: the table's expert -> rank placement)."""
    if table.empty:
        return {}
    table = table[(table["phase"] == phase) & table["load"].notna() & table[by].notna()]
    sums = table.groupby(["run", "layer", by], sort=False)["load"].sum()
    out: dict[str, np.ndarray] = {}
    for run, cells in sums.groupby(level="run", sort=False):
        layer = cells.index.get_level_values("layer").to_numpy(dtype=int)
        column = cells.index.get_level_values(by).to_numpy(dtype=int)
        a = np.zeros((layer.max() + 1, column.max() + 1))
        a[layer, column] = cells.to_numpy(dtype=float)
        out[str(run)] = a
    return out


def heatmap_figures(
    runs: pd.DataFrame, expert_loads: pd.DataFrame, *, modes: Sequence[str], out: Path
) -> list[Figure]:
    runs = with_columns(runs, ["experiment", "mode", "run", "predicted_score", "dataset"])
    loads = _loads_by_run(expert_loads, "expert")
    imbalance = runs[(runs["experiment"] == "imbalance") & runs["run"].isin(list(loads))]
    figures = []
    for k, mode in enumerate(modes):
        rows = (
            imbalance[imbalance["mode"] == mode]
            .sort_values("predicted_score", na_position="last", kind="stable")
            .to_dict("records")
        )
        if not rows:
            continue
        n = len(rows)
        ncols = min(6, n)
        nrows = math.ceil(n / ncols)
        layers, experts = loads[rows[0]["run"]].shape
        # Layout in inches: panel height grows with the layers; fixed room for titles.
        axes_h, gap, top_in, bottom_in = max(0.7, 0.065 * layers), 0.55, 0.75, 0.55
        height = top_in + bottom_in + nrows * axes_h + (nrows - 1) * gap
        fig, axes = plt.subplots(nrows, ncols, figsize=(2.4 * ncols + 1.2, height), squeeze=False)
        # Up to the largest relative load seen (top-k of E experts: at most E / k), >= 2.
        highest = max(
            float(
                (loads[r["run"]] / np.maximum(loads[r["run"]].mean(1, keepdims=True), 1e-12)).max()
            )
            for r in rows
        )
        vmax = float(min(max(2.0, math.ceil(highest * 2) / 2), 8.0))
        image = None
        for ax, r in zip(axes.flat, rows, strict=False):
            a = loads[r["run"]]
            mean = a.mean(axis=1, keepdims=True)
            rel = np.divide(a, mean, out=np.zeros_like(a), where=mean > 0)
            image = ax.imshow(rel, aspect="auto", cmap="magma", vmin=0, vmax=vmax)
            score = r.get("predicted_score")
            name = str(r.get("dataset") or r["run"]).split("_")[0]
            ax.set_title(
                f"{name}" + (f"  score {score:.3f}" if score is not None else ""), fontsize=9
            )
            ax.set_xticks(range(experts))
            ax.set_xticklabels([str(e) for e in range(experts)], fontsize=7)
            step = max(1, layers // 4)
            ax.set_yticks(range(0, layers, step))
            ax.tick_params(axis="y", labelsize=7)
            ax.grid(False)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        for ax in axes[:, 0]:
            ax.set_ylabel("layer", fontsize=9)
        for ax in axes[-1, :]:
            ax.set_xlabel("expert", fontsize=9)
        fig.suptitle(
            f"Expert load per layer, mode {mode} (load / layer mean; datasets by predicted score)",
            fontsize=12,
            y=1 - 0.15 / height,
        )
        # Fixed margins: tight_layout over dozens of panels costs seconds per figure.
        fig.subplots_adjust(
            left=0.05,
            right=0.92,
            top=1 - top_in / height,
            bottom=bottom_in / height,
            hspace=gap / axes_h,
            wspace=0.25,
        )
        if image is not None:
            cax = fig.add_axes((0.94, bottom_in / height, 0.012, 1 - (top_in + bottom_in) / height))
            fig.colorbar(image, cax=cax, label="expert load / layer mean")
        letter = "abcdefgh"[k]
        path = save(fig, out / f"fig7{letter}_expert_load_heatmap_{mode}.png", tight=False)
        figures.append(
            Figure(
                number=f"7{letter}",
                slug=f"expert_load_heatmap_{mode}",
                title=f"Routing: per-layer expert load, {mode}",
                caption=f"Per-layer expert load of every imbalance-experiment run of mode "
                f"{mode} (one panel per dataset, ordered by predicted score): each cell is "
                "the tokens routed to an expert in that layer, over all steps and phases, "
                "divided by the layer's mean over experts (1 = even; 0 = idle expert). "
                "Loads are never summed across layers.",
                path=path,
                section="Routing",
            )
        )
    return figures


def rank_figure(
    runs: pd.DataFrame, expert_loads: pd.DataFrame, *, modes: Sequence[str], out: Path, note: str
) -> Figure | None:
    runs = with_columns(runs, ["experiment", "mode", "run", "predicted_score", "imb_rank_max_mean"])
    ranks = _loads_by_run(expert_loads, "rank")
    rows = runs[
        (runs["experiment"] == "imbalance")
        & runs["mode"].isin(list(modes))
        & runs["run"].isin(list(ranks))
    ]
    if rows.empty:
        return None
    colors = mode_colors(modes)
    present = [m for m in modes if (rows["mode"] == m).any()]
    fig, axes = plt.subplots(
        1, len(present) + 1, figsize=(4.6 * (len(present) + 1), 4.4), squeeze=False
    )
    axes = axes[0]
    for ax, mode in zip(axes, present, strict=False):
        per_rank: list[list[float]] = []
        for run in rows.loc[rows["mode"] == mode, "run"]:
            a = ranks[run]
            mean = a.mean(axis=1, keepdims=True)
            rel = np.divide(a, mean, out=np.ones_like(a), where=mean > 0)
            for rank in range(rel.shape[1]):
                while len(per_rank) <= rank:
                    per_rank.append([])
                per_rank[rank] += rel[:, rank].tolist()
        ax.boxplot(per_rank, tick_labels=[str(i) for i in range(len(per_rank))])
        ax.axhline(1.0, color="gray", ls=":")
        ax.set_xlabel("EP rank")
        ax.set_ylabel("rank load / mean over ranks")
        ax.set_title(f"{mode}: per-rank load (all layers, datasets)")
    ax = axes[-1]
    for mode in present:
        pts = rows[(rows["mode"] == mode) & rows["imb_rank_max_mean"].notna()]
        if not pts.empty and pts["predicted_score"].notna().all():
            pts = pts.sort_values("predicted_score", kind="stable")
            ax.plot(
                pts["predicted_score"].tolist(),
                pts["imb_rank_max_mean"].tolist(),
                marker="os^D"[present.index(mode) % 4],
                ms=5 + 2 * present.index(mode),
                mfc="none" if present.index(mode) else colors[mode],
                ls=LINESTYLES[present.index(mode) % len(LINESTYLES)],
                color=colors[mode],
                label=mode,
            )
    ax.set_xlabel("predicted imbalance score")
    ax.set_ylabel("busiest rank / mean (mean over layers)")
    ax.set_title("busiest EP rank per dataset")
    ax.legend()
    fig.tight_layout()
    path = save(fig, out / "fig8_rank_load.png")
    return Figure(
        number="8",
        slug="rank_load",
        title="Routing: per-rank load under expert parallelism",
        caption="Load of each expert-parallel rank (the sum of its experts' loads in a "
        "layer) over the mean of the ranks, for every layer of every imbalance run (boxes), "
        f"and the busiest rank's load over the mean per dataset (right). {note}",
        path=path,
        section="Routing",
    )
