"""Stage `imbalance`: routing logs -> imbalance measures, joined with performance, correlated.

Reads every measured run of the bench stage (its vLLM-format result and its routing log) and
writes tidy tables under `imbalance/`:

- `runs.csv|json`: one row per measured run: experiment, mode, limits, the mode's data-parallel
  ranks and `effective_concurrency` (max-num-seqs x ranks), dataset, predicted score,
  repetition, launch; the performance summary of the result file; the headline imbalance
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
  eplb_table, as for the study's EPLBOFF.csv/EPLBON.csv), when every profiled pass of both
  modes has a report: one run per mode and pass (labelled by mode, with its launch; EPLB off
  first in each launch), the comparison of their medians with a bootstrap interval.
"""

from __future__ import annotations

from pathlib import Path

from artifact.core.console import console, track
from artifact.core.errors import ArtifactError
from artifact.core.io import atomic_write_json
from artifact.core.layout import UnitDir
from artifact.core.records import DatasetMetadata, ResultFile, UnitRecord, read_record
from artifact.core.runner import Stage, StageContext, StageOutcome
from artifact.core.tables import write_table
from artifact.profiling.nsys import eplb_table, export_kernel_summary, nsys_version
from artifact.routing.aggregate import analyze_routing_log
from artifact.routing.correlation import IMBALANCE_MEASURES, correlations
from artifact.routing.tables import write_run_tables
from artifact.serving.results import METRICS, PERF_KEYS, SUMMARY_STATS


def run_rows(ctx: StageContext) -> list[tuple[dict, Path]]:
    """(row with the run's identity and performance, routing log) per measured run."""
    layout = ctx.layout
    bench = layout.stage("bench")
    scores = read_record(layout.dataset_metadata, DatasetMetadata).scores()
    out = []
    for record in layout.bench_unit_records():
        key = record.parent.relative_to(bench).as_posix()
        redo = f"rerun `moe-artifact bench --redo {key}`"
        unit = read_record(record, UnitRecord, redo)
        folder = UnitDir(record.parent)
        mode = ctx.profile.modes.get(unit.mode)
        ranks = mode.data_parallel_size if mode else None
        for run in unit.runs:
            result_path = folder.path / run.result
            result = read_record(result_path, ResultFile, redo)
            tokens = result.get("total_input_tokens")
            if not isinstance(tokens, int):
                raise ArtifactError(
                    f"expected the number of prompt tokens, got {tokens!r}; {redo}",
                    path=result_path,
                    where="field 'total_input_tokens'",
                )
            row = {
                "run": f"{folder.path.relative_to(bench).as_posix()}/rep{run.repetition:02d}",
                "experiment": unit.experiment,
                "mode": unit.mode,
                "max_num_seqs": unit.max_num_seqs,
                "max_num_batched_tokens": unit.max_num_batched_tokens,
                # max-num-seqs applies per data-parallel rank: the server admits this many
                "data_parallel_size": ranks,
                "effective_concurrency": unit.max_num_seqs * ranks if ranks else None,
                "dataset": unit.dataset or "",
                "predicted_score": scores.get(unit.dataset) if unit.dataset else None,
                "repetition": run.repetition,
                "launch": run.launch,
                "result": result_path.relative_to(layout.root).as_posix(),
                "mean_input_tokens": tokens / max(result.completed, 1),
            }
            row.update({k: result.get(k) for k in PERF_KEYS})
            for lat in METRICS:
                for stat in SUMMARY_STATS:
                    row[f"{stat}_{lat}_ms"] = result.get(f"{stat}_{lat}_ms")
            out.append((row, folder.path / run.routing))
    return out


def kernel_summaries(ctx: StageContext) -> dict[Path, Path]:
    """{report: its kernel summary CSV} for every nsys report of the run."""
    layout = ctx.layout
    reports = layout.bench_reports()
    if not reports:
        return {}
    console.print(f"  nsys: {nsys_version(reports[0])}; {len(reports)} report(s) to summarize")
    summaries = {}
    for report in track(reports, "nsys kernel summaries"):
        rel = report.relative_to(layout.stage("bench"))
        csv_path = layout.kernel_summary(report)
        if not (csv_path.exists() and csv_path.stat().st_mtime > report.stat().st_mtime):
            name = export_kernel_summary(report, csv_path)
            console.print(f"  {rel}: kernel summary ({name}) -> {csv_path.name}")
        summaries[report] = csv_path
    return summaries


def ablation_table(ctx: StageContext, summaries: dict[Path, Path]) -> dict | None:
    """The EPLB table of the ablation's profiled passes (one per arm and launch, the arms
    taking turns), None when a pass has no report."""
    ablation = ctx.profile.experiments.eplb_ablation
    if ablation is None or not ablation.enabled or len(ablation.modes) != 2:
        return None
    # EPLB off first (the comparison is "on" relative to "off"), else profile order.
    modes = sorted(ablation.modes, key=lambda m: ctx.profile.modes[m].enable_eplb)
    folders = [ctx.layout.bench_unit(f"eplb_ablation/{m}").profile for m in modes]
    passes = [
        (folder.launch(launch).nsys_report, mode, launch)
        for launch in range(ablation.bench.launches)
        for folder, mode in zip(folders, modes, strict=True)
    ]
    if any(report not in summaries for report, _, _ in passes):
        return None
    table = [(summaries[report], mode, launch) for report, mode, launch in passes]
    return eplb_table(table, root=ctx.run_dir.path)


class ImbalanceStage(Stage):
    name = "imbalance"
    upstream = ("datasets", "bench")
    # modes: which of the ablation's modes has EPLB on orders the EPLB table
    profile_sections = ("experiments", "modes")

    def run(self, ctx: StageContext) -> StageOutcome:
        layout = ctx.layout
        rows, results = [], []
        for row, routing in run_rows(ctx):
            analysed = analyze_routing_log(routing, run=row["run"])
            results.append(analysed)
            row["routing_tokens"] = analysed.num_tokens
            row["routing_events"] = analysed.events
            row.update({f"imb_{k}": v for k, v in analysed.headline().items()})
            rows.append(row)
        write_run_tables(layout.stage(self.name), results)
        write_table(layout.stage(self.name), "runs", rows)
        imbalance_rows = [r for r in rows if r["experiment"] == "imbalance"]
        correlation_rows = correlations(imbalance_rows, IMBALANCE_MEASURES)
        write_table(layout.stage(self.name), "correlations", correlation_rows)
        summaries = kernel_summaries(ctx)
        eplb = ablation_table(ctx, summaries)
        if eplb is not None:
            atomic_write_json(layout.table("eplb"), eplb)
        events = sum(r["routing_events"] for r in rows)
        kernels = f", {len(summaries)} nsys kernel summaries" if summaries else ""
        return StageOutcome(
            summary=f"{len(rows)} runs analysed ({events:,} routing events), "
            f"{len(correlation_rows)} correlations over {len(imbalance_rows)} imbalance runs"
            + kernels
            + (", EPLB kernel table" if eplb is not None else "")
        )


STAGE = ImbalanceStage()
