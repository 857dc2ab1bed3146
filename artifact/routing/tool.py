"""`moe-artifact imbalance-metrics`: the imbalance tables of routing logs or study gate logs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from artifact.core.console import console
from artifact.core.errors import ArtifactError
from artifact.routing.aggregate import RunImbalance, analyze_path
from artifact.routing.format import DEFAULT_CHUNK_RECORDS
from artifact.routing.readers import Skipped
from artifact.routing.tables import PerStepCsv, write_run_tables
from artifact.study.legacy import compare_default_vs_legacy


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="a moe-routing log file, a gate-log run folder (gate_logs_<layer>.json files) "
        "or a folder of such runs",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="write the tidy tables (CSV and JSON) here"
    )
    parser.add_argument(
        "--per-step", action="store_true", help="also write per_step.csv (one row per record)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out unreadable gate logs (and runs) instead of stopping; they are reported",
    )
    parser.add_argument(
        "--placement",
        default=None,
        metavar="R|LIST",
        help="EP placement: a rank count R (contiguous blocks, vLLM's linear placement) or "
        "one rank per expert, comma-separated (default: the log's world size, or 4)",
    )
    parser.add_argument(
        "--num-layers",
        type=int,
        default=None,
        help="gate logs: layers expected (default: up to the highest layer file found)",
    )
    parser.add_argument("--top-k", type=int, default=2, help="gate logs: experts per token")
    parser.add_argument(
        "--chunk-records",
        type=int,
        default=DEFAULT_CHUNK_RECORDS,
        help="routing logs: records per chunk (memory is bounded by one chunk)",
    )


def _analyze(args: argparse.Namespace, per_step) -> tuple[list[RunImbalance], list[Skipped]]:
    results, left_out = [], []
    for path in args.inputs:
        runs, skipped = analyze_path(
            path,
            placement=args.placement,
            num_layers=args.num_layers,
            top_k=args.top_k,
            skip_bad=args.skip_bad,
            per_step=per_step,
            chunk_records=args.chunk_records,
        )
        results += runs
        left_out += skipped
    return results, left_out


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def _print_tables(results: list[RunImbalance]) -> None:
    from rich.table import Table

    table = Table(title="Expert-load imbalance per layer, mean over layers (EP rank: sum ratio)")
    columns = {
        "CV": "cv",
        "max/mean": "max_mean",
        "EP rank max/mean": "rank_max_mean_ratio_of_sums",
        "per-step CV": "per_step_cv",
        "legacy-per-step": "legacy-per-step",
        "legacy-aggregated": "legacy-aggregated",
    }
    table.add_column("run", no_wrap=True)
    table.add_column("records", justify="right")
    for title in columns:
        table.add_column(title, justify="right")
    for r in results:
        head = r.headline()
        table.add_row(r.run, str(r.records), *(_fmt(head[key]) for key in columns.values()))
    console.print(table)


def run_tool(args: argparse.Namespace) -> int:
    if args.per_step and args.out is None:
        raise ArtifactError("--per-step writes per_step.csv under --out; give --out DIR")
    if args.per_step:
        with PerStepCsv(args.out / "per_step.csv") as sink:
            results, left_out = _analyze(args, sink)
    else:
        results, left_out = _analyze(args, None)
    if args.out is not None:
        write_run_tables(args.out, results, left_out)
    skipped = [*left_out, *(s for r in results for s in r.skipped)]
    if args.json:
        payload = {
            "runs": [r.to_json() for r in results],
            "default_vs_legacy": compare_default_vs_legacy(results),
            "skipped": [s.to_json() for s in skipped],
        }
        print(json.dumps(payload, indent=2, allow_nan=False))
    else:
        _print_tables(results)
    for s in skipped:
        console.print(f"[yellow]left out[/]: {s.path}: {s.reason}", soft_wrap=True)
    inconsistent = [r for r in results if r.inconsistent_records]
    for r in inconsistent:
        console.print(
            f"[yellow]warning[/]: {r.source}: {r.inconsistent_records} records whose loads do "
            f"not add up to top_k x num_tokens",
            soft_wrap=True,
        )
    if args.out is not None:
        console.print(f"tables written to {args.out}")
    return 0
