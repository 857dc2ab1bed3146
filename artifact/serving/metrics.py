"""`moe-artifact metrics`: one metric of one trace, a table over a tree of traces, file checks.

A trace is the directory of one served configuration, either

- an original study trace, `Mixtral8x7B-<engine>-Perlmutter[<mode>_<max_seqs>_<batch_tokens>
  [_eplbon|_eplboff]]-group12/` with `results_json/*.json` (vLLM `benchmark_serving` files),
  `logs/*.log` (the server's log) and a workload card `*.yaml`; or
- one of ours: result files `*.repNN.json` (moe-artifact-bench, see bench_results) directly
  in it or in `results_json/`, optionally a card and routing logs (`*.routing`);
- a folder of `vllm bench serve --save-result` files under vLLM's default names
  (`openai-infqps-concurrency8-<model>-<YYYYMMDD-HHMMSS>.json`, `openai-4.0qps-...`). A file
  saved without `--save-detailed` holds only summaries: they are shown as stored.

A single result file can stand for a trace too. The configuration (engine, mode,
max-num-seqs, max-num-batched-tokens, EPLB flag) comes from the directory name, the card,
the server log (version and non-default arguments) and our files' `server` block; where they
disagree the trace gets a note. A metric that does not fit the trace is refused with the
reason. Latency statistics are in ms; with several result files (repetitions) each file is
reported and the top-level values are their means.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.text import Text

from artifact.core.errors import ArtifactError
from artifact.core.records import summary_only
from artifact.core.tables import csv_text
from artifact.engines.vllm.provenance import parse_log
from artifact.serving.results import (
    DEFAULT_PERCENTILES,
    SERVER_INFO_KEYS,
    SUMMARY_KEY,
    estimate_e2els,
    file_percentiles,
    is_ours,
    load_result,
    parse_goodput,
    percentile_word,
    summarize_file,
    verify_result,
)
from artifact.study.cards import card_fields, read_card
from artifact.study.traces import parse_trace_name, trace_card

OUR_RESULT = re.compile(r".+\.rep\d+\.json$")
# `vllm bench serve --save-result`'s default names:
# <label>-<rate|inf>qps[-concurrency<N>]-<model>-<YYYYMMDD-HHMMSS>.json
VLLM_RESULT = re.compile(r".+-(?:inf|\d+(?:\.\d+)?)qps(?:-concurrency\d+)?-.+-\d{8}-\d{6}\.json$")


def is_result_name(name: str) -> bool:
    """A result file's name, ours or vLLM's default, found outside results_json/."""
    return bool(OUR_RESULT.match(name) or VLLM_RESULT.match(name))


LATENCY = {"TTFT": "ttft", "TPOT": "tpot", "ITL": "itl", "E2EL": "e2el"}
THROUGHPUT = {
    "request_throughput": "req/s",
    "input_throughput": "tok/s",
    "output_throughput": "tok/s",
}
# The original study's names first, then ours.
METRIC_NAMES = (
    "TTFT",
    "TPOT",
    "request_throughput",
    "output_throughput",
    "token_to_expert_assignment",
    "ITL",
    "E2EL",
    "input_throughput",
    "goodput",
    "all",
)
# A trace's config columns: the result files' server_info keys, and after `eplb` whether the
# server log shows EPLB on.
_AFTER_EPLB = SERVER_INFO_KEYS.index("eplb") + 1
CONFIG_COLUMNS = (*SERVER_INFO_KEYS[:_AFTER_EPLB], "eplb_in_log", *SERVER_INFO_KEYS[_AFTER_EPLB:])
CARD_CONFIG = ("moe", "max_num_seqs", "max_num_batched_tokens", "eplb")


class MetricRefused(ArtifactError):
    """The metric does not fit this trace; the message says why."""


@dataclass
class Trace:
    path: Path
    kind: str  # "original", "artifact" or "file"
    config: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # config key -> where it came from
    card: Path | None = None
    card_fields: dict[str, Any] = field(default_factory=dict)
    result_files: list[Path] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    routing_logs: list[Path] = field(default_factory=list)
    gate_log_dirs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # bad result files left out (--skip-bad)
    _results: list[tuple[Path, dict]] | None = None

    def results(self, skip_bad: bool = False) -> list[tuple[Path, dict]]:
        """The trace's result files, read and shape-checked once."""
        if self._results is None:
            loaded = []
            for path in self.result_files:
                try:
                    data = load_result(path, summary_only_ok=True)
                except ArtifactError as exc:
                    if not skip_bad:
                        raise
                    self.skipped.append(str(exc))
                    continue
                loaded.append((path, data))
                if summary_only(data):
                    self.notes.append(
                        f"{path.name}: vLLM's stored summaries, shown as written (no per-request "
                        "arrays to recompute them from: rerun `vllm bench serve` with "
                        "--save-detailed)"
                    )
            self._results = loaded
            if is_ours_trace(loaded):
                _merge_server_info(self, loaded)
        return self._results


def is_ours_trace(results: list[tuple[Path, dict]]) -> bool:
    return bool(results) and all(is_ours(data) for _, data in results)


# --- what a trace is --------------------------------------------------------------------------


def _merge(trace: Trace, source: str, values: dict[str, Any]) -> None:
    """Fill configuration fields; a source that disagrees with an earlier one adds a note."""
    for key, value in values.items():
        if value is None:
            continue
        if key not in trace.config:
            trace.config[key] = value
            trace.sources[key] = source
        elif trace.config[key] != value:
            trace.notes.append(
                f"{key}: {trace.sources[key]} says {trace.config[key]!r}, {source} says {value!r}"
            )


def _merge_server_info(trace: Trace, results: list[tuple[Path, dict]]) -> None:
    for _, data in results:
        server = data.get("server") or {}
        _merge(trace, "result file", {k: server[k] for k in SERVER_INFO_KEYS if k in server})


def open_trace(path: str | Path) -> Trace:
    """Find a trace's files and parse its configuration (name, card, logs)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError("no such trace directory or result file", path=path)
    if path.is_file():
        return Trace(path=path, kind="file", result_files=[path])
    named = parse_trace_name(path.name)
    results_dir = path / "results_json"
    results = sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []
    results += sorted(p for p in path.glob("*.json") if is_result_name(p.name))
    card = trace_card(path)
    routing = sorted(path.rglob("*.routing"))
    gates = sorted({p.parent for p in path.rglob("gate_logs_*.json")})
    if not (named or results or card or routing or gates):
        raise ArtifactError(
            "not a trace: no results_json/, *.repNN.json or vLLM-named (*qps*-<date>.json) "
            "result files, workload card, routing or gate logs, and the name is not "
            "Model-engine-Platform[mode_seqs_tokens]-group",
            path=path,
        )
    trace = Trace(
        path=path,
        kind="original" if named else "artifact",
        result_files=results,
        logs=sorted((path / "logs").glob("*.log")) if (path / "logs").is_dir() else [],
        routing_logs=routing,
        gate_log_dirs=gates,
    )
    if named:
        _merge(trace, "name", {k: v for k, v in named.items() if k not in ("group", "platform")})
    if card is not None:
        trace.card = card
        trace.card_fields = card_fields(read_card(card))
        _merge(trace, "card", {k: trace.card_fields.get(k) for k in CARD_CONFIG})
    for log in trace.logs:
        prov = parse_log(log)
        _merge(trace, f"log {log.name}", {"engine_version": prov.vllm_version})
        args = prov.non_default_args
        _merge(
            trace,
            f"log {log.name}",
            {k: args[k] for k in ("max_num_seqs", "max_num_batched_tokens") if k in args},
        )
        if args:
            _merge(trace, f"log {log.name}", {"eplb_in_log": bool(args.get("enable_eplb"))})
        if args and trace.config.get("eplb") and not args.get("enable_eplb"):
            trace.notes.append(
                f"EPLB: the name/card say on, but {log.name} shows no --enable-eplb in the "
                "server's non-default args (EPLB was not enabled)"
            )
    if trace.logs and "engine_version" not in trace.config:
        trace.notes.append("no engine version found in the server log")
    return trace


def find_traces(root: str | Path) -> list[Path]:
    """Every trace directory under root (root itself if it is one), in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError("not a directory", path=root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames.sort()
        if (
            parse_trace_name(here.name)
            or "results_json" in dirnames
            or any(is_result_name(f) for f in filenames)
        ):
            found.append(here)
            dirnames.clear()  # a trace's subfolders are part of it
    return found


# --- metrics ----------------------------------------------------------------------------------


def _latency_stats(data: dict, name: str) -> tuple[dict[str, float], list[str]]:
    """A file's statistics of one latency metric: its own fields, the missing ones computed."""
    notes = []
    percentiles = sorted({*file_percentiles(data), *DEFAULT_PERCENTILES})
    ours = is_ours(data)
    e2els = data["e2els"] if ours else estimate_e2els(data)
    computed = summarize_file(data, e2els=e2els, percentiles=percentiles)
    stats: dict[str, float] = {}
    for stat in ("mean", "median", "std", *(f"p{percentile_word(p)}" for p in percentiles)):
        key = f"{stat}_{name}_ms"
        if key in data and isinstance(data[key], int | float):
            stats[stat] = float(data[key])
        elif name == "tpot" and not ours:
            continue  # vLLM's TPOT of these files cannot be recomputed; see below
        else:
            stats[stat] = computed[key]
    if not ours and name == "e2el":
        notes.append(
            "rebuilt from TTFT and ITLs (to the last content chunk); "
            "the file stores no per-request latency"
        )
    if not ours and name == "ttft":
        notes.extend(_empty_output_note(data))
    if not ours and name == "tpot":
        notes.append(
            "the file's own TPOT (its per-request latency is not stored); recomputed to the "
            "last chunk its ITLs record: "
            + ", ".join(f"{s} {computed[f'{s}_tpot_ms']:.4f}" for s in ("mean", "median", "p99"))
        )
    return stats, notes


def _empty_output_note(data: dict) -> list[str]:
    """vLLM's older client counted a request without any text as a success with TTFT 0.

    Those zeros stay in the file's own TTFT summary (and so in ours, to reproduce it); the
    note gives the TTFT over the requests that did produce text.
    """
    ok = [e == "" for e in data["errors"]]
    empty = sum(
        1
        for t, row, good in zip(data["ttfts"], data["itls"], ok, strict=True)
        if good and t == 0 and not row
    )
    if not empty:
        return []
    real = [t for t, good in zip(data["ttfts"], ok, strict=True) if good and t > 0] or [0.0]
    mean, median = 1000 * float(np.mean(real)), 1000 * float(np.median(real))
    return [
        f"{empty} of {sum(ok)} successful requests produced no text and enter this file's TTFT "
        f"as 0 ms (its vLLM client's rule); over the requests with text: mean {mean:.1f} ms, "
        f"median {median:.1f} ms"
    ]


def _goodput(data: dict, slos: dict[str, float] | None) -> dict[str, Any]:
    stored = data.get("goodput") if is_ours(data) else None
    if not slos:
        if not stored:
            raise MetricRefused(
                "goodput needs SLOs: give --goodput ttft:MS [tpot:MS] [e2el:MS] "
                "(this result file was run without any)"
            )
        slos = stored["slos_ms"]
    e2els = data["e2els"] if is_ours(data) else estimate_e2els(data)
    out = summarize_file(data, e2els=e2els, goodput_slos_ms=slos)
    return {
        "value": out["request_goodput"],
        "unit": "req/s",
        "slos_ms": slos,
        "good_completed": out["good_completed"],
        "completed": out["completed"],
    }


def file_metric(data: dict, metric: str, goodput_slos: dict[str, float] | None = None) -> dict:
    """One metric of one result file (latency stats in ms, or a value with its unit)."""
    if summary := summary_only(data):
        return _stored_metric(data, metric, summary)
    if metric in LATENCY:
        stats, notes = _latency_stats(data, LATENCY[metric])
        out: dict[str, Any] = {"unit": "ms", "value": stats.get("mean"), "stats": stats}
        if notes:
            out["notes"] = notes
        return out
    if metric in THROUGHPUT:
        # Files without the key get it recomputed: throughputs reproduce exactly.
        value = float(data[metric]) if metric in data else _summary_value(data, metric)
        return {"unit": THROUGHPUT[metric], "value": value}
    if metric == "goodput":
        return _goodput(data, goodput_slos)
    raise ArtifactError(f"unknown metric {metric!r}")


def _stored_metric(data: dict, metric: str, summary: str) -> dict:
    """One metric of a file without per-request arrays: its stored values, or refused."""
    if metric in LATENCY:
        stats = {
            m.group(1): float(value)
            for key, value in data.items()
            if (m := SUMMARY_KEY.match(key))
            and m.group(3) == LATENCY[metric]
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        }
        if stats:
            return {"unit": "ms", "value": stats.get("mean"), "stats": stats}
    elif metric in THROUGHPUT and isinstance(data.get(metric), int | float):
        return {"unit": THROUGHPUT[metric], "value": float(data[metric])}
    raise MetricRefused(f"{metric} is not among the file's stored summaries: {summary}")


def _summary_value(data: dict, key: str) -> float:
    return summarize_file(data)[key]


def expert_assignment(trace: Trace) -> dict[str, Any]:
    """Token-to-expert assignments per layer and expert, summed over the trace's steps."""
    if trace.config.get("moe") is False:
        raise MetricRefused(
            f"the workload card ({trace.card.name if trace.card else 'card'}) says moe: false; "
            "a dense model has no expert assignment"
        )
    if trace.routing_logs:
        counts, source, extra = _routing_counts(trace.routing_logs)
    elif trace.gate_log_dirs:
        if len(trace.gate_log_dirs) > 1:
            raise MetricRefused(
                f"{len(trace.gate_log_dirs)} gate-log sets in one trace "
                f"({', '.join(str(d) for d in trace.gate_log_dirs[:3])}...); point --trace at one"
            )
        counts, source, extra = _gate_counts(trace.gate_log_dirs[0])
    else:
        raise MetricRefused(
            "no gate or routing logs in this trace: token_to_expert_assignment needs per-layer "
            "expert loads (*.routing files, or gates_logs/gate_logs_<layer>.json); the "
            "original trace_collection kept none"
        )
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    mean = counts.mean(axis=1)
    cv = np.divide(counts.std(axis=1), mean, out=np.zeros_like(mean), where=mean > 0)
    return {
        "source": source,
        "layers": int(counts.shape[0]),
        "experts": int(counts.shape[1]),
        "assignments": float(counts.sum()),
        "per_layer_counts": counts.tolist(),
        "per_layer_share": share.tolist(),
        "per_layer_cv": cv.tolist(),
        "value": float(cv.mean()),
        "unit": "mean over layers of the CV of expert loads",
        **extra,
    }


def _routing_counts(paths: list[Path]) -> tuple[np.ndarray, str, dict]:
    from artifact.routing.format import RoutingLog

    counts = None
    steps: set[int] = set()
    truncated = []
    for path in paths:
        log = RoutingLog(path)
        if log.truncated:
            truncated.append(path.name)
        layers, experts = log.header.num_layers, log.header.num_experts
        if counts is None:
            counts = np.zeros((layers, experts), dtype=np.float64)
        elif counts.shape != (layers, experts):
            raise ArtifactError(
                f"routing log has {layers} layers x {experts} experts, the trace's others "
                f"{counts.shape[0]} x {counts.shape[1]}",
                path=path,
            )
        for block in log.chunks():
            np.add.at(counts, block["layer"], block["counts"].astype(np.float64))
            steps.update(np.unique(block["step"]).tolist())
    assert counts is not None
    extra: dict[str, Any] = {"files": len(paths), "steps": len(steps)}
    if truncated:
        extra["notes"] = [f"last record cut (writer stopped mid-record) in {', '.join(truncated)}"]
    return counts, "routing", extra


def _gate_counts(directory: Path) -> tuple[np.ndarray, str, dict]:
    from artifact.study.gate_logs import read_gate_log_run

    run = read_gate_log_run(directory)
    counts = np.vstack([block["counts"].sum(axis=0) for block in run.blocks])
    return counts, "gate_logs", {"steps": max(len(block) for block in run.blocks)}


def trace_metric(
    trace: Trace,
    metric: str,
    *,
    goodput_slos: dict[str, float] | None = None,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """One metric of a trace: per result file, and their mean on top."""
    if metric == "token_to_expert_assignment":
        return expert_assignment(trace)
    results = trace.results(skip_bad)
    if not results:
        why = "every result file was bad" if trace.skipped else "no result files"
        raise MetricRefused(f"{metric} needs benchmark results; this trace has {why}")
    runs = []
    for path, data in results:
        entry = file_metric(data, metric, goodput_slos)
        entry = {
            "file": str(path),
            "repetition": (data.get("run") or {}).get("repetition"),
            **entry,
        }
        runs.append(entry)
    if len(runs) == 1:
        top = {k: v for k, v in runs[0].items() if k not in ("file", "repetition", "notes")}
    else:
        top = {"unit": runs[0]["unit"], "value": float(np.mean([r["value"] for r in runs]))}
        if "stats" in runs[0]:
            keys = set.intersection(*(set(r["stats"]) for r in runs))
            top["stats"] = {
                k: float(np.mean([r["stats"][k] for r in runs]))
                for k in runs[0]["stats"]
                if k in keys
            }
    return {**top, "runs": runs}


def trace_report(
    trace: Trace,
    metric: str,
    *,
    goodput_slos: dict[str, float] | None = None,
    skip_bad: bool = False,
) -> dict[str, Any]:
    if metric != "token_to_expert_assignment":
        trace.results(skip_bad)  # our files also describe the configuration
    out: dict[str, Any] = {
        "trace": str(trace.path),
        "kind": trace.kind,
        "config": trace.config,
        "card": trace.card_fields or None,
        "notes": list(trace.notes),
        "metric": metric,
    }
    if metric == "all":
        metrics: dict[str, Any] = {}
        for name in METRIC_NAMES[:-1]:
            try:
                metrics[name] = trace_metric(
                    trace, name, goodput_slos=goodput_slos, skip_bad=skip_bad
                )
            except MetricRefused as exc:
                metrics[name] = {"refused": exc.detail}
        out["metrics"] = metrics
    else:
        metrics = {
            metric: trace_metric(trace, metric, goodput_slos=goodput_slos, skip_bad=skip_bad)
        }
        out.update(metrics[metric])
    # Each metric's notes, once per trace (a file's own notes stay in its `runs` entry).
    for name, value in metrics.items():
        runs = value.get("runs", [])
        found = [*value.get("notes", []), *(n for r in runs for n in r.get("notes", []))]
        for note in dict.fromkeys(found):
            out["notes"].append(f"{name}: {note}")
    if trace.skipped:
        out["skipped"] = trace.skipped
    return out


def tree_notes(reports: list[dict[str, Any]]) -> list[str]:
    """Problems only a whole tree shows: one engine's traces ran on several versions."""
    versions: dict[str, dict[str, list[str]]] = {}
    for report in reports:
        config = report["config"]
        if config.get("engine") and config.get("engine_version"):
            by_version = versions.setdefault(config["engine"], {})
            by_version.setdefault(config["engine_version"], []).append(Path(report["trace"]).name)
    notes = []
    for engine, by_version in versions.items():
        if len(by_version) > 1:
            counts = ", ".join(f"{v} ({len(t)} traces)" for v, t in sorted(by_version.items()))
            notes.append(
                f"{engine} traces ran on {len(by_version)} engine versions: {counts}; "
                "differences between them may be the version, not the configuration"
            )
    return notes


def csv_row(report: dict[str, Any]) -> dict[str, Any]:
    """One flat row: the trace's configuration, then every scalar of its metric(s)."""
    config = report["config"]
    row: dict[str, Any] = {"trace": Path(report["trace"]).name, "kind": report["kind"]}
    row.update({k: config.get(k) for k in CONFIG_COLUMNS})
    row["runs"] = None
    metrics = report["metrics"] if report["metric"] == "all" else {report["metric"]: report}
    for name, value in metrics.items():
        if "refused" in value:
            continue
        if name in LATENCY:
            for stat in ("mean", "median", "std", "p50", "p90", "p99"):
                if stat in value["stats"]:
                    row[f"{stat}_{LATENCY[name]}_ms"] = value["stats"][stat]
        elif name == "token_to_expert_assignment":
            row["mean_layer_cv"] = value["value"]
        elif name == "goodput":
            row["request_goodput"] = value["value"]
        else:
            row[name] = value["value"]
        if "runs" in value:
            row["runs"] = len(value["runs"])
    row["notes"] = "; ".join(report["notes"])
    return row


def write_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV: every key any row has, in first-seen order, `notes` last."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    columns.remove("notes")
    columns.append("notes")
    return csv_text(rows, columns)


# --- CLI tool: moe-artifact metrics -----------------------------------------------------------


def _metric_name(text: str) -> str:
    for name in METRIC_NAMES:
        if text.lower() == name.lower():
            return name
    raise argparse.ArgumentTypeError(f"unknown metric {text!r}; one of {', '.join(METRIC_NAMES)}")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trace",
        type=Path,
        metavar="DIR",
        help="a trace directory or result file (with --all: a tree of traces)",
    )
    parser.add_argument(
        "--metric",
        type=_metric_name,
        default=None,
        metavar="NAME",
        help=f"one of {', '.join(METRIC_NAMES)} (default: all)",
    )
    parser.add_argument("--all", action="store_true", help="every trace under --trace")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    parser.add_argument("--csv", action="store_true", help="with --all: one CSV row per trace")
    parser.add_argument(
        "--goodput",
        nargs="+",
        default=None,
        metavar="NAME:MS",
        help="SLOs for the goodput metric, e.g. ttft:500 tpot:50",
    )
    parser.add_argument(
        "--verify",
        nargs="+",
        type=Path,
        default=None,
        metavar="FILE",
        help="recompute every summary field of result files (or directories)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable files or traces and list them at the end",
    )


def _report_skipped(skipped: list[str]) -> None:
    from artifact.core.console import console

    if skipped:
        console.print(f"[yellow]skipped {len(skipped)}[/]:")
        for line in skipped:
            console.print(f"  {line}", soft_wrap=True, markup=False)


def _verify(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from artifact.core.console import console

    files: list[Path] = []
    for target in args.verify:
        if target.is_dir():
            for trace_dir in find_traces(target):
                files.extend(open_trace(trace_dir).result_files)
        else:
            files.append(target)
    if not files:
        raise ArtifactError("no result files to verify", path=args.verify[0])
    skipped, failed = [], 0
    for path in files:
        try:
            data = load_result(path)
        except ArtifactError as exc:
            if not args.skip_bad:
                raise
            skipped.append(str(exc))
            continue
        report = verify_result(data, path)
        where = escape(str(path))
        if report.ok:
            console.print(
                f"[green]ok[/] {where}: {len(report.checked)} fields recomputed", soft_wrap=True
            )
        else:
            failed += 1
            for line in report.mismatches:
                console.print(f"[red]mismatch[/] {where}: {escape(line)}", soft_wrap=True)
        for note in report.notes:
            console.print(f"[yellow]note[/] {where}: {escape(note)}", soft_wrap=True)
    _report_skipped(skipped)
    return 1 if failed else 0


# Columns of the terminal table over many traces (the CSV has every column).
SUMMARY_COLUMNS = (
    "mean_ttft_ms",
    "mean_tpot_ms",
    "mean_itl_ms",
    "mean_e2el_ms",
    "request_throughput",
    "output_throughput",
    "request_goodput",
    "mean_layer_cv",
)


def _cell(value: Any) -> Text:
    # Text, not markup: trace names hold [mode_seqs_tokens].
    return Text("" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value))


def _print_table(reports: list[dict[str, Any]]) -> None:
    """One trace: a field/value table; several: one row per trace with the main columns."""
    from rich.markup import escape
    from rich.table import Table

    from artifact.core.console import console

    rows = [csv_row(r) for r in reports]
    table = Table()
    if len(rows) == 1:
        table.add_column("field")
        table.add_column("value", justify="right")
        for key, value in rows[0].items():
            if key != "notes" and value is not None:
                table.add_row(_cell(key), _cell(value))
        for name, value in (reports[0].get("metrics") or {}).items():
            if "refused" in value:
                table.add_row(_cell(name), _cell(f"refused: {value['refused']}"))
    else:
        columns = ["trace", *CONFIG_COLUMNS, "runs"]
        if reports[0]["metric"] == "all":
            columns += SUMMARY_COLUMNS
        else:  # one metric: all of its columns
            columns += [c for c in rows[0] if c not in (*columns, "kind", "notes")]
        columns = [c for c in columns if any(row.get(c) is not None for row in rows)]
        for row in rows:
            # The bracket of an original trace name says it all; the config columns repeat it.
            m = re.search(r"\[(.+)\]", row["trace"])
            row["trace"] = m.group(1) if m and parse_trace_name(row["trace"]) else row["trace"]
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*(_cell(row.get(col)) for col in columns))
    console.print(table)
    for report in reports:
        for note in report["notes"]:
            name = escape(Path(report["trace"]).name)
            console.print(f"[yellow]note[/] {name}: {escape(note)}", soft_wrap=True)


def run_tool(args: argparse.Namespace) -> int:
    if args.verify:
        return _verify(args)
    if args.trace is None:
        raise ArtifactError("give --trace DIR (or --verify FILE)")
    if args.csv and not args.all:
        raise ArtifactError("--csv goes with --all (one row per trace)")
    metric = args.metric or "all"
    slos = parse_goodput(args.goodput) if args.goodput else None
    paths = find_traces(args.trace) if args.all else [args.trace]
    if args.all and not paths:
        raise ArtifactError("no traces under this directory", path=args.trace)
    reports, skipped = [], []
    for path in paths:
        try:
            trace = open_trace(path)
            report = trace_report(trace, metric, goodput_slos=slos, skip_bad=args.skip_bad)
        except MetricRefused as exc:
            if not args.all:
                raise MetricRefused(f"{metric} refused: {exc.detail}", path=path) from None
            skipped.append(f"{path}: {metric} refused: {exc.detail}")
            continue
        except ArtifactError as exc:
            if not args.skip_bad:
                raise
            skipped.append(str(exc))
            continue
        skipped.extend(trace.skipped)
        if trace.result_files and not trace.results(args.skip_bad):
            continue  # every result file was bad: nothing left to report for this trace
        reports.append(report)
    if args.all:
        from rich.markup import escape

        from artifact.core.console import console

        for note in tree_notes(reports):
            console.print(f"[yellow]note[/]: {escape(note)}", soft_wrap=True)
    if args.csv:
        sys.stdout.write(write_csv([csv_row(r) for r in reports]))
    elif args.json:
        print(json.dumps(reports if args.all else reports[0], indent=2))
    elif reports:
        _print_table(reports)
    _report_skipped(skipped)
    if not reports:
        raise ArtifactError("nothing to report: every trace was skipped", path=args.trace)
    return 0
