"""Stage `imbalance`: routing logs -> imbalance measures, joined with performance, correlated.

Reads every measured run of the bench stage (its vLLM-format result and its routing log) and
writes tidy tables under `imbalance/`:

- `runs.csv|json`: one row per measured run: experiment, mode, limits, dataset, predicted
  score, repetition; the performance summary of the result file; the headline imbalance
  measures (prefixed `imb_`, all phases, loads summed within each layer, averaged over
  layers; see artifact.routing.aggregate for the exact rules);
- `per_layer`, `summary`, `expert_loads`, `legacy`, `default_vs_legacy`, `skipped`: the
  per-run tables of artifact.routing (each row carries its run name);
- `correlations.csv|json`: for the imbalance experiment, per mode, predicted score vs each
  observed measure and each performance metric vs each imbalance measure, Pearson and
  Spearman with bootstrap 95% intervals (and again after the study's 1.5 x IQR filter);
- `nsys/<path of the report under bench>/<report>.kernels.csv`: for every nsys report the
  bench stage's profiled passes wrote, its CUDA GPU kernel summary (`nsys stats`, which must
  be on PATH; kept while newer than its report);
- `eplb.json`: the EPLB ablation's kernel table (`{runs, comparison}`, artifact.profiling.nsys
  eplb_table, as for the study's EPLBOFF.csv/EPLBON.csv), when both of its modes have a
  report: runs labelled by mode, EPLB off first.
"""

from __future__ import annotations

from pathlib import Path

from artifact.core.console import console, track
from artifact.core.io import atomic_write_json, atomic_write_text, read_json
from artifact.core.runner import Stage, StageContext, StageOutcome
from artifact.core.tables import csv_text
from artifact.profiling.nsys import eplb_table, export_kernel_summary, nsys_version
from artifact.routing.aggregate import analyze_routing_log
from artifact.routing.correlation import correlation_table
from artifact.routing.tables import write_run_tables
from artifact.stages.bench import NSYS_REPORT, PROFILE_DIR

PERF_KEYS = (
    "completed",
    "num_prompts",
    "duration",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "input_throughput",
    "output_throughput",
    "total_token_throughput",
)
LATENCIES = ("ttft", "tpot", "itl", "e2el")
STATS = ("mean", "median", "std", "p50", "p90", "p99")
PERF_METRICS = (
    "mean_ttft_ms",
    "mean_tpot_ms",
    "mean_itl_ms",
    "mean_e2el_ms",
    "output_throughput",
    "request_throughput",
)
IMBALANCE_MEASURES = (
    "imb_cv",
    "imb_max_mean",
    "imb_entropy",
    "imb_gini",
    "imb_rank_max_mean",
    "imb_rank_max_mean_ratio_of_sums",
)


def correlations(rows: list[dict], measures: tuple[str, ...]) -> list[dict]:
    """Per mode: predicted score vs each measure and performance metric, and each measure
    vs each performance metric; Pearson and Spearman, without and with the 1.5 x IQR filter."""
    out = []
    for iqr in (False, True):
        for x_keys, y_keys in (
            (("predicted_score",), measures + PERF_METRICS),
            (measures, PERF_METRICS),
        ):
            for item in correlation_table(rows, x_keys, y_keys, iqr=iqr):
                out.append({**item, "iqr_filter": iqr})
    return out


def run_rows(ctx: StageContext) -> list[tuple[dict, Path]]:
    """(row with the run's identity and performance, routing log) per measured run."""
    bench = ctx.stage_dir("bench")
    scores = {
        Path(d["file"]).stem: d["score"]
        for d in read_json(ctx.stage_dir("datasets") / "metadata.json")["datasets"]
    }
    out = []
    for unit_file in sorted(bench.rglob("unit.json")):
        unit = read_json(unit_file)
        for run in unit["runs"]:
            result = read_json(unit_file.parent / run["result"])
            unit_name = unit_file.parent.relative_to(bench).as_posix()
            row = {
                "run": f"{unit_name}/rep{run['repetition']:02d}",
                "experiment": unit["experiment"],
                "mode": unit["mode"],
                "max_num_seqs": unit["max_num_seqs"],
                "max_num_batched_tokens": unit["max_num_batched_tokens"],
                "dataset": unit["dataset"] or "",
                "predicted_score": scores.get(unit["dataset"]) if unit["dataset"] else None,
                "repetition": run["repetition"],
                "result": (unit_file.parent / run["result"])
                .relative_to(ctx.run_dir.path)
                .as_posix(),
                "mean_input_tokens": result["total_input_tokens"] / max(result["completed"], 1),
            }
            row.update({k: result.get(k) for k in PERF_KEYS})
            for lat in LATENCIES:
                for stat in STATS:
                    row[f"{stat}_{lat}_ms"] = result.get(f"{stat}_{lat}_ms")
            out.append((row, unit_file.parent / run["routing"]))
    return out


def kernel_summaries(ctx: StageContext) -> dict[Path, Path]:
    """{report path under bench/: its kernel summary CSV} for every nsys report of the run."""
    bench = ctx.stage_dir("bench")
    reports = sorted(bench.rglob("*.nsys-rep"))
    if not reports:
        return {}
    console.print(f"  nsys: {nsys_version()}; {len(reports)} report(s) to summarize")
    out = ctx.stage_dir("imbalance") / "nsys"
    summaries = {}
    for report in track(reports, "nsys kernel summaries"):
        rel = report.relative_to(bench)
        csv_path = out / rel.parent / f"{report.stem}.kernels.csv"
        if not (csv_path.exists() and csv_path.stat().st_mtime > report.stat().st_mtime):
            name = export_kernel_summary(report, csv_path)
            console.print(f"  {rel}: kernel summary ({name}) -> {csv_path.name}")
        summaries[rel] = csv_path
    return summaries


def ablation_table(ctx: StageContext, summaries: dict[Path, Path]) -> dict | None:
    """The EPLB table of the ablation's profiled passes, None when a mode has no report."""
    ablation = ctx.profile.experiments.eplb_ablation
    if ablation is None or not ablation.enabled or len(ablation.modes) != 2:
        return None
    # EPLB off first (the comparison is "on" relative to "off"), else profile order.
    modes = sorted(ablation.modes, key=lambda m: ctx.profile.modes[m].enable_eplb)
    csvs = [summaries.get(Path("eplb_ablation", m, PROFILE_DIR, NSYS_REPORT)) for m in modes]
    if None in csvs:
        return None
    return eplb_table(list(zip(csvs, modes, strict=True)), root=ctx.run_dir.path)


class ImbalanceStage(Stage):
    name = "imbalance"
    description = "routing logs -> imbalance measures and their correlation with performance"
    upstream = ("datasets", "bench")
    # modes: which of the ablation's modes has EPLB on orders the EPLB table
    profile_sections = ("experiments", "modes")

    def run(self, ctx: StageContext) -> StageOutcome:
        out = ctx.stage_dir(self.name)
        rows, results = [], []
        for row, routing in run_rows(ctx):
            analysed = analyze_routing_log(routing, run=row["run"])
            results.append(analysed)
            row["routing_tokens"] = analysed.num_tokens
            row["routing_events"] = analysed.events
            row.update({f"imb_{k}": v for k, v in analysed.headline().items()})
            rows.append(row)
        write_run_tables(out, results)
        columns = list(rows[0]) if rows else []
        atomic_write_text(out / "runs.csv", csv_text(rows, columns))
        atomic_write_json(out / "runs.json", rows)
        imbalance_rows = [r for r in rows if r["experiment"] == "imbalance"]
        correlation_rows = correlations(imbalance_rows, IMBALANCE_MEASURES)
        columns = list(correlation_rows[0]) if correlation_rows else []
        atomic_write_text(out / "correlations.csv", csv_text(correlation_rows, columns))
        atomic_write_json(out / "correlations.json", correlation_rows)
        summaries = kernel_summaries(ctx)
        eplb = ablation_table(ctx, summaries)
        if eplb is not None:
            atomic_write_json(out / "eplb.json", eplb)
        events = sum(r["routing_events"] for r in rows)
        kernels = f", {len(summaries)} nsys kernel summaries" if summaries else ""
        return StageOutcome(
            summary=f"{len(rows)} runs analysed ({events:,} routing events), "
            f"{len(correlation_rows)} correlations over {len(imbalance_rows)} imbalance runs"
            + kernels
            + (", EPLB kernel table" if eplb is not None else "")
        )


STAGE = ImbalanceStage()
