"""Figures of the kernels stage: `kernels.png` (the layer across token counts and routings,
the EP view) and `replay.png` (the cost of each logged step's imbalance level)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from artifact.core.io import atomic_open


def _save(fig, path: Path) -> None:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")


def _series(rows: list[dict], key: str, value: str, **match) -> dict[str, tuple[list, list]]:
    out: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for r in rows:
        if r.get(value) is None or any(r.get(k) != v for k, v in match.items()):
            continue
        xs, ys = out[r[key]]
        xs.append(r["tokens"])
        ys.append(r[value])
    return out


def plot_results(rows: list[dict], ep_rows: list[dict], steps: list[dict], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    card = rows[0].get("card", "") if rows else ""
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    panels = (
        (
            axes[0, 0],
            "impl",
            "time_ms",
            {"routing": "uniform"},
            "time per layer (ms), uniform",
            True,
        ),
        (axes[0, 1], "impl", "frac_of_bound", {"routing": "uniform"}, "fraction of bound", False),
        (
            axes[1, 0],
            "routing",
            "cost_vs_balanced",
            {"impl": "triton"},
            "triton: time / balanced",
            False,
        ),
    )
    for ax, key, value, match, title, log_y in panels:
        for label, (xs, ys) in sorted(_series(rows, key, value, **match).items()):
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("tokens per layer call (T)")
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ax = axes[1, 1]
    done = [r for r in ep_rows if r.get("slowdown_vs_balanced") is not None]
    if done:
        tokens = sorted({r["tokens"] for r in done})
        colors = plt.cm.viridis(np.linspace(0, 1, len(tokens)))
        for t, color in zip(tokens, colors, strict=True):
            pts = [r for r in done if r["tokens"] == t]
            ax.scatter(
                [r["predicted_slowdown"] for r in pts],
                [r["slowdown_vs_balanced"] for r in pts],
                color=color,
                label=f"T={t}",
            )
        top = max(max(r["predicted_slowdown"], r["slowdown_vs_balanced"]) for r in done)
        ax.plot([1, top], [1, top], "k--", lw=0.8, label="measured = predicted")
        ax.legend(fontsize=7)
    ax.set_xlabel("predicted: max/mean of per-rank assignments")
    ax.set_ylabel("measured: slowest rank / balanced routing's")
    ax.set_title("EP view (Triton shards)")
    ax.grid(alpha=0.3)
    fig.suptitle(f"Mixtral MoE layer kernels on {card}")
    _save(fig, out_dir / "kernels.png")
    plt.close(fig)
    if steps:
        plot_replay(steps, out_dir / "replay.png", card)


def plot_replay(steps: list[dict], path: Path, card: str) -> None:
    import matplotlib.pyplot as plt

    sources = sorted({s["source"] for s in steps})
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4.5), squeeze=False)
    measures = (
        ("triton_cost", "TP-style (all experts local): time / balanced"),
        ("ep_vs_balanced", "EP slowest rank / balanced"),
        ("rank_max_mean", "predicted EP slowdown (rank max/mean)"),
    )
    for ax, source in zip(axes[0], sources, strict=True):
        mine = [s for s in steps if s["source"] == source]
        levels = sorted({s["expert_max_mean"] for s in mine})
        for key, label in measures:
            means = [
                np.mean([s[key] for s in mine if s["expert_max_mean"] == lv and s.get(key)])
                if any(s["expert_max_mean"] == lv and s.get(key) for s in mine)
                else np.nan
                for lv in levels
            ]
            ax.plot(levels, means, marker="o", label=label)
        ax.set_xlabel("logged step's expert max/mean")
        ax.set_title(f"{source} ({len(mine)} steps)")
        ax.axhline(1.0, color="k", lw=0.6)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Kernel-level cost of the logged routing imbalance on {card}")
    _save(fig, path)
    plt.close(fig)
