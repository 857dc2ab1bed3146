"""`moe-artifact bench-client`: streamed requests against any OpenAI-compatible server.

Per request the client stores its start time, the arrival time of every content chunk, the
text, the server's usage counts and the finish reason. TTFT, ITL, TPOT and E2EL follow vLLM's
definitions (artifact.serving.results). The client is split by concern:

- config: `BenchConfig` and the dataset's prompts;
- request: one streamed request, its body and SSE parsing;
- arrivals: the arrival schedule and per-request seeds;
- probe: what the server accepts, before any measured request;
- run: warmup and measured phases, repetitions;
- result_file: the run's result and its vLLM-format file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from artifact.core.errors import ArtifactError
from artifact.core.io import atomic_write_json
from artifact.serving.config import ENDPOINTS, BenchConfig, load_prompts
from artifact.serving.result_file import result_filename, result_to_vllm_json
from artifact.serving.results import SERVER_INFO_KEYS, parse_goodput, parse_percentiles
from artifact.serving.run import run_repetitions


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    parser.add_argument("--endpoint", default="/v1/completions", choices=ENDPOINTS)
    parser.add_argument("--model", default=None, help="model name (default: the one it lists)")
    parser.add_argument(
        "--dataset", required=True, type=Path, help="JSONL of {id, text, category[, output_len]}"
    )
    parser.add_argument(
        "--num-prompts",
        type=int,
        default=None,
        help="requests per run (default: every prompt once)",
    )
    parser.add_argument("--request-rate", default="inf", help="'inf' or requests per second")
    parser.add_argument(
        "--burstiness",
        type=float,
        default=1.0,
        help="gamma shape of the gaps between arrivals (1 = Poisson)",
    )
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument(
        "--output-len",
        type=int,
        default=None,
        help="fixed output tokens per request (default: each record's output_len)",
    )
    parser.add_argument("--warmup-requests", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs of the same schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ask the server to ignore EOS (default on; dropped if refused)",
    )
    parser.add_argument("--request-timeout", type=float, default=600.0, metavar="S")
    parser.add_argument("--metric-percentiles", default="50,90,99", metavar="P,P,...")
    parser.add_argument(
        "--goodput",
        nargs="+",
        default=[],
        metavar="NAME:MS",
        help="SLOs for goodput, e.g. ttft:500 tpot:50 e2el:2000",
    )
    parser.add_argument("--label", default=None, help="file name stem (default: dataset stem)")
    parser.add_argument("--result-dir", type=Path, default=Path("."))
    parser.add_argument(
        "--server-info",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help=f"provenance stored in the file (keys read by metrics: {', '.join(SERVER_INFO_KEYS)})",
    )


def _server_info(pairs: list[str]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ArtifactError(f"--server-info {pair!r} must be KEY=VALUE")
        try:
            info[key] = json.loads(value)
        except ValueError:
            info[key] = value
    return info


def _print_summary(path: Path, data: dict) -> None:
    from rich.table import Table
    from rich.text import Text

    from artifact.core.console import console

    title = f"{path.name}: {data['completed']}/{data['num_prompts']} completed"
    table = Table(title=Text(title))
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("duration (s)", f"{data['duration']:.2f}")
    for key in ("request_throughput", "output_throughput", "total_token_throughput"):
        table.add_row(key, f"{data[key]:.2f}")
    if data.get("request_goodput") is not None:
        table.add_row("request_goodput", f"{data['request_goodput']:.2f}")
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", *(f"p{p:g}" for p in data["percentiles"])):
            table.add_row(f"{stat} {metric.upper()} (ms)", f"{data[f'{stat}_{metric}_ms']:.2f}")
    over = data["client"]["overhead"]
    if over.get("content_chunks"):
        table.add_row("client CPU µs per chunk", f"{over['per_chunk_us']:.1f}")
        table.add_row(
            "client share of TTFT (≤)", f"{100 * over['busy_share_of_ttft']['mean']:.2f}%"
        )
    console.print(table)
    eos = data["server"].get("ignore_eos")
    if eos and not eos["sent"]:
        console.print("[yellow]note[/]: the server refused 'ignore_eos'; outputs may stop early")


def run_tool(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from artifact.core.console import console

    config = BenchConfig(
        base_url=args.base_url,
        model=args.model,
        endpoint=args.endpoint,
        request_rate=args.request_rate,
        burstiness=args.burstiness,
        max_concurrency=args.max_concurrency,
        output_len=args.output_len,
        num_prompts=args.num_prompts,
        warmup_requests=args.warmup_requests,
        repeat=args.repeat,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
        request_timeout_s=args.request_timeout,
        metric_percentiles=tuple(parse_percentiles(args.metric_percentiles)),
        goodput_slos_ms=parse_goodput(args.goodput),
    )
    prompts = load_prompts(args.dataset)
    label = args.label or args.dataset.stem
    results = asyncio.run(
        run_repetitions(
            config, prompts, label=label, server_info=_server_info(args.server_info), progress=True
        )
    )
    any_completed = False
    for result in results:
        data = result_to_vllm_json(result)
        path = args.result_dir / result_filename(result.label, result.repetition)
        atomic_write_json(path, data)
        any_completed |= data["completed"] > 0
        _print_summary(path, data)
        console.print(f"wrote {escape(str(path))}")
    if not any_completed:
        first = next(r.error for r in results[0].records if r.error)
        raise ArtifactError(f"every request failed; the first: {first}")
    return 0
