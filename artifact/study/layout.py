"""The original study's raw data as this artifact's tidy tables (`--from-study DIR`).

Reads the study's layout as it is, with no conversion by hand:

- `trace_collection/Mixtral8x7B-<engine>-Perlmutter[<mode>_<seqs>_<tokens>[_eplbon|_eplboff]]
  -group12/` (Experiments 1 and 2): artifact.serving.metrics opens each trace (name, card, server
  log, the benchmark_serving result); traces with an `_eplbon` / `_eplboff` suffix are the
  EPLB ablation, the others the config sweep;
- `load_imbalance/` (Experiment 3): `<mode>_results_json/NNN.json` joined with the gate logs
  `<mode>_gates_logs/gates_logs_NN/` (artifact.routing) and the dataset scores of
  `datasets/dataset_metadata.json`;
- `eplb/EPLBOFF.csv`, `eplb/EPLBON.csv` (artifact.profiling.nsys kernel summaries).

and writes, into the run directory's `study-import/` (where the imbalance stage's folder is in
a run directory of our own), the same tables the imbalance stage writes for our runs (`runs`,
`per_layer`, `summary`, `expert_loads`, `legacy`, `default_vs_legacy`, `skipped`,
`correlations`) plus
`provenance` (one row per trace: what its name and card asked for and what its server log
shows), `eplb.json` (both kernel summaries and their comparison) and `hardware.json`.

The study's modes map onto the perlmutter profile's: `baseline` (TP4) -> baseline,
`defaultall2all` / `default_all2all` (EP4) -> all2all, and the ablation's `_eplbon` run ->
all2all-eplb, the mode it was meant to be.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from artifact.checker.tables import hardware_id
from artifact.core.errors import ArtifactError
from artifact.core.io import atomic_write_json, read_json
from artifact.core.manifest import hash_tree
from artifact.core.tables import table_file, write_table
from artifact.profiling.nsys import eplb_table
from artifact.routing.aggregate import RunImbalance, analyze_gate_log_run
from artifact.routing.correlation import IMBALANCE_MEASURES, correlations
from artifact.routing.readers import Skipped
from artifact.routing.tables import write_run_tables
from artifact.serving.metrics import csv_row, find_traces, open_trace, trace_report
from artifact.serving.results import PERF_KEYS, load_result
from artifact.study.audit import log_provenance
from artifact.study.cards import card_gpu_count, card_hardware, read_card
from artifact.study.traces import parse_trace_name

TRACE_MODES = {"baseline": "baseline", "defaultall2all": "all2all"}
# load_imbalance/<prefix>_results_json and <prefix>_gates_logs -> mode
IMBALANCE_PREFIXES = {"baseline": "baseline", "default_all2all": "all2all"}
EPLB_FILES = (("EPLBOFF.csv", "all2all"), ("EPLBON.csv", "all2all-eplb"))
LEGACY_MEASURES = ("imb_legacy-per-step", "imb_legacy-aggregated")
LATENCY_COLUMNS = tuple(
    f"{stat}_{lat}_ms"
    for lat in ("ttft", "tpot", "itl", "e2el")
    for stat in ("mean", "median", "std", "p50", "p90", "p99")
)


def is_study(path: Path) -> bool:
    return any((path / d).is_dir() for d in ("trace_collection", "load_imbalance", "eplb"))


def check_study(path: Path) -> None:
    if not path.is_dir():
        raise ArtifactError("--from-study: no such folder", path=path)
    if not is_study(path):
        raise ArtifactError(
            "--from-study: not the study's layout (expected trace_collection/, "
            "load_imbalance/ and/or eplb/ in it)",
            path=path,
        )


def study_hash(path: Path) -> str:
    """One hash over the content of every file of the study folder."""
    blob = json.dumps(hash_tree(path, path), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _perf(report: dict, data: dict) -> dict[str, Any]:
    """Performance columns of one result file, named as in our runs table."""
    flat = csv_row(report)
    row: dict[str, Any] = {k: data.get(k) for k in PERF_KEYS}
    row["num_prompts"] = data.get("num_prompts", data.get("completed"))
    for key in ("request_throughput", "output_throughput", "input_throughput"):
        if flat.get(key) is not None:
            row[key] = flat[key]
    if row.get("total_token_throughput") is None and data.get("duration"):
        row["total_token_throughput"] = (
            data["total_input_tokens"] + data["total_output_tokens"]
        ) / data["duration"]
    for key in LATENCY_COLUMNS:
        row[key] = flat.get(key)
    row["mean_input_tokens"] = data["total_input_tokens"] / max(data["completed"], 1)
    return row


def _log_fields(run: dict | None) -> dict[str, Any]:
    """Provenance columns of one trace from artifact.engines.vllm.provenance's report on its log."""
    if run is None:
        return {"log": None}
    p = run["provenance"]
    args = p.get("non_default_args") or {}
    return {
        "log": Path(run["log"]).name,
        "engine_version": p.get("vllm_version"),
        "vllm_build": p.get("vllm_build"),
        "args": args,
        "host": p.get("host") or args.get("host"),
        "tensor_parallel_size": p.get("tensor_parallel_size"),
        "data_parallel_size": p.get("data_parallel_size"),
        "enable_expert_parallel": p.get("enable_expert_parallel"),
        "all2all_manager": p.get("all2all_manager"),
        "moe_kernel": p.get("moe_kernel"),
        "flashinfer_moe": p.get("flashinfer_moe"),
        "flashinfer_moe_used": p.get("moe_kernel") == "flashinfer_cutlass_moe",
        "eplb_enabled": p.get("eplb_enabled"),
        "gpu_model": p.get("gpu_model"),
        "flags": run.get("flags") or [],
        "log_notes": run.get("notes") or [],
    }


def sweep_tables(
    root: Path, cards: list[Path]
) -> tuple[list[dict], list[dict], list[str], list[dict]]:
    """(runs rows, provenance rows, hardware ids, log flags) of trace_collection/; `cards`
    are workload cards whose per-mode claims the logs are checked against too."""
    runs, provenance, hardware = [], [], []
    traces = [p for p in find_traces(root) if parse_trace_name(p.name)]
    logs = [log for p in traces for log in sorted((p / "logs").glob("*.log"))[:1]]
    report = log_provenance(logs, cards) if logs or cards else {"runs": []}
    by_log = {Path(r["log"]): r for r in report["runs"]}
    flags = [
        {"kind": "sweep", "flag": f, "source": "server logs of trace_collection/"}
        for f in report.get("sweep_flags", [])
    ] + [
        {"kind": "card", "flag": f, "source": ", ".join(c.name for c in cards)}
        for f in report.get("card_flags", [])
    ]
    for path in traces:
        named = parse_trace_name(path.name)
        if named is None:
            continue
        trace = open_trace(path)
        results = trace.results()
        if not results:
            continue
        report = trace_report(trace, "all")
        mode = TRACE_MODES.get(named["mode"], named["mode"])
        experiment = "config_sweep"
        if named["eplb"] is not None:
            experiment = "eplb_ablation"
            mode = "all2all-eplb" if named["eplb"] else mode
        base = {
            "run": path.name,
            "experiment": experiment,
            "mode": mode,
            "max_num_seqs": named["max_num_seqs"],
            "max_num_batched_tokens": named["max_num_batched_tokens"],
        }
        result_path, data = results[0]
        runs.append(
            {
                **base,
                "dataset": "",
                "predicted_score": None,
                "repetition": 0,
                "result": result_path.relative_to(root.parent).as_posix(),
                "engine_version": trace.config.get("engine_version"),
                **_perf(report, data),
            }
        )
        card = _card_hardware(trace.card) if trace.card else None
        if card:
            hardware.append(card)
        # The directory name is the claim (as artifact.engines.vllm.provenance reads it).
        row = {
            **base,
            "eplb_requested": bool(named["eplb"]),
            "card": trace.card.name if trace.card else None,
        }
        log = sorted((path / "logs").glob("*.log"))[:1]
        row.update(_log_fields(by_log.get(log[0]) if log else None))
        provenance.append(row)
    return runs, provenance, hardware, flags


def _card_hardware(path: Path) -> str | None:
    card = read_card(path)
    model = card_hardware(card)
    return hardware_id([model], card_gpu_count(card)) if model else None


def imbalance_tables(root: Path) -> tuple[list[dict], list[RunImbalance], list[Skipped]]:
    """(runs rows, RunImbalance results, skipped) of load_imbalance/."""
    scores = {}
    meta_path = root / "datasets" / "dataset_metadata.json"
    if meta_path.exists():
        for d in read_json(meta_path)["datasets"]:
            scores[Path(d["filepath"]).stem] = d["score"]
    rows, results, skipped = [], [], []
    for prefix, mode in IMBALANCE_PREFIXES.items():
        results_dir = root / f"{prefix}_results_json"
        gates_dir = root / f"{prefix}_gates_logs"
        if not results_dir.is_dir():
            continue
        for path in sorted(results_dir.glob("*.json")):
            data = load_result(path)
            dataset = Path(str(data.get("dataset_path", path.stem))).stem
            run = f"imbalance/{mode}/{dataset}/rep00"
            report = trace_report(open_trace(path), "all")
            row = {
                "run": run,
                "experiment": "imbalance",
                "mode": mode,
                "max_num_seqs": None,
                "max_num_batched_tokens": None,
                "dataset": dataset,
                "predicted_score": scores.get(dataset),
                "repetition": 0,
                "result": path.relative_to(root.parent).as_posix(),
                "result_imbalance_score": data.get("imbalance_score"),
                **_perf(report, data),
            }
            gate_run = gates_dir / f"gates_logs_{int(path.stem):02d}"
            if gate_run.is_dir():
                analysed = analyze_gate_log_run(gate_run, run=run, skip_bad=True)
                results.append(analysed)
                row["routing_tokens"] = analysed.num_tokens
                row["routing_events"] = analysed.events
                row.update({f"imb_{k}": v for k, v in analysed.headline().items()})
            else:
                skipped.append(Skipped(str(gate_run), "no gate logs for this result"))
            rows.append(row)
    return rows, results, skipped


def study_eplb_table(root: Path) -> dict | None:
    """The EPLB table of the study's `eplb/` CSVs, None when one is missing."""
    passes = [(root / name, label, 0) for name, label in EPLB_FILES]  # one pass an arm
    if not all(path.exists() for path, _, _ in passes):
        return None
    return eplb_table(passes)


def import_study(study: Path, out: Path) -> dict[str, int]:
    """Write the study's tables under `out`; returns counts for the stage summary."""
    check_study(study)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    provenance: list[dict] = []
    hardware: list[str] = []
    flags: list[dict] = []
    cards = sorted((study / "load_imbalance").glob("*.yaml"))
    if (study / "trace_collection").is_dir():
        runs, provenance, hardware, flags = sweep_tables(study / "trace_collection", cards)
    results: list[RunImbalance] = []
    skipped: list[Skipped] = []
    if (study / "load_imbalance").is_dir():
        imb_rows, results, skipped = imbalance_tables(study / "load_imbalance")
        runs += imb_rows
    write_run_tables(out, results, skipped)
    write_table(out, "runs", runs)
    write_table(out, "provenance", provenance)
    atomic_write_json(table_file(out, "log_flags"), flags)
    imbalance_rows = [r for r in runs if r["experiment"] == "imbalance"]
    corr = correlations(imbalance_rows, IMBALANCE_MEASURES + LEGACY_MEASURES)
    write_table(out, "correlations", corr)
    eplb = study_eplb_table(study / "eplb") if (study / "eplb").is_dir() else None
    if eplb is not None:
        atomic_write_json(table_file(out, "eplb"), eplb)
    ids = sorted(set(hardware))
    atomic_write_json(
        table_file(out, "hardware"),
        {"id": ids[0] if len(ids) == 1 else "unknown", "cards": ids, "source": "workload cards"},
    )
    atomic_write_json(table_file(out, "source"), {"study": str(study.resolve())})
    return {
        "runs": len(runs),
        "imbalance_runs": len(imbalance_rows),
        "traces": len(provenance),
        "correlations": len(corr),
        "eplb": int(eplb is not None),
    }
