"""The routing capture's cost in timed runs: capture on vs off, interleaved, on one server.

    python benchmarks/capture_cost.py --profile gpu [--rounds 5] [--mode grouped_mm]
        [--output-len N] [--run-dir DIR] [--model-dir DIR] [--out FILE]

The profile's engine (the embedded transformers engine for `local` and `gpu`) serves the
profile's seeded model at the config sweep's fixed limits: the install stage builds it from the
seed on the profile's device, or reuses its cache (no download), unless --model-dir names a
model folder. The datasets stage writes the sweep prompts (reused when up to date). One server
runs everything: a warm-up round of each arm (not counted), then --rounds rounds of the same
prompts with the sweep's client settings (--output-len: longer runs, less noise a run), capture
on (start_routing ... stop_routing around the run, the log in the server's folder, its totals
checked as the bench stage checks them) and off, in A/B then B/A order alternately. Per metric
it prints the median of each arm, on / off and each arm's run-to-run spread ((max - min) /
median); a ratio outside 1 +/- the larger spread is beyond noise, marked `*`. Then on / off
within each round (its two runs are next to each other in time, so a slow drift of the machine's
load cancels): median, min and max. Writes the figures to --out (JSON) and each run's result
file beside it. The target is a capture cost under 2% of TPOT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crosscheck_vllm_client import run_cli, table  # noqa: E402

from artifact.config.profiles import load_profile  # noqa: E402
from artifact.core.errors import ArtifactError  # noqa: E402
from artifact.core.io import atomic_write_json  # noqa: E402
from artifact.core.layout import RunLayout  # noqa: E402
from artifact.core.records import (  # noqa: E402
    ModelRecord,
    ResultFile,
    read_record,
    validate_record,
    write_record,
)
from artifact.engines.base import ServerLimits, get_engine  # noqa: E402
from artifact.serving.config import load_prompts  # noqa: E402
from artifact.serving.probe import probe_server  # noqa: E402
from artifact.serving.request import ServerCapabilities  # noqa: E402
from artifact.serving.result_file import result_to_vllm_json  # noqa: E402
from artifact.serving.run import new_session, run_benchmark  # noqa: E402
from artifact.stages.bench import bench_config, check_routing_totals  # noqa: E402

METRICS = [
    ("mean TPOT (ms)", "mean_tpot_ms"),
    ("median TPOT (ms)", "median_tpot_ms"),
    ("mean TTFT (ms)", "mean_ttft_ms"),
    ("output throughput (tok/s)", "output_throughput"),
]
ARMS = ("off", "on")  # the first round's order; the table shows on / off


def paired(rounds: dict[str, list[dict[str, float]]], rows: list[dict]) -> str:
    """on / off within each round (the two runs next to each other in time: a drift of the
    machine's load cancels), added to `rows`; the table of their median and range."""
    lines = ["| metric | on / off within a round (median) | min | max |", "|---|---:|---:|---:|"]
    for row in rows:
        key = row["key"]
        ratios = [a[key] / b[key] for a, b in zip(rounds["on"], rounds["off"], strict=True)]
        row["paired_ratios"] = ratios
        lines.append(
            f"| {row['metric']} | {statistics.median(ratios):.3f} | {min(ratios):.3f} "
            f"| {max(ratios):.3f} |"
        )
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace) -> dict:
    if args.model_dir is not None and not (args.model_dir / "config.json").is_file():
        raise ArtifactError("no model folder (no config.json) at --model-dir", path=args.model_dir)
    if args.model_dir is None:
        run_cli("install", "--profile", args.profile, "--run-dir", str(args.run_dir))
    run_cli("datasets", "--profile", args.profile, "--run-dir", str(args.run_dir))
    layout = RunLayout(args.run_dir)
    profile = load_profile(args.profile)
    model_dir = args.model_dir or Path(read_record(layout.model_record, ModelRecord).model_dir)
    engine = get_engine(profile, model_dir, layout)
    sweep = profile.experiments.config_sweep
    if sweep is None:
        raise ArtifactError(f"profile {args.profile} has no config_sweep to take limits from")
    mode = args.mode or sweep.modes[-1]
    limits = ServerLimits(sweep.fixed_max_num_seqs, sweep.fixed_max_num_batched_tokens)
    prompts = load_prompts(layout.sweep_prompts)
    out = args.out.parent
    out.mkdir(parents=True, exist_ok=True)
    rounds: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    started = time.monotonic()
    with engine.start(mode, limits, out / "server.log") as server:
        client = sweep.bench
        if args.output_len is not None:
            client = client.model_copy(update={"output_len": args.output_len})
        config = bench_config(server.base_url, server.model_id, client)
        top_k = int(server.provenance()["top_k"])

        async def probe() -> ServerCapabilities:
            async with new_session(config) as session:
                return (await probe_server(session, config))[1]

        capabilities = asyncio.run(probe())  # once, outside any capture

        def run(arm: str, label: str) -> dict[str, float]:
            routing = out / f"{label}.routing"
            if arm == "on":
                server.start_routing(routing, meta={"benchmark": "capture_cost", "run": label})
            try:
                result = asyncio.run(
                    run_benchmark(config, prompts, label=label, capabilities=capabilities)
                )
            finally:
                server.check_alive(label)
                if arm == "on":
                    server.stop_routing()
            path = out / f"{label}.json"
            summary = result_to_vllm_json(result)
            data = validate_record(summary, ResultFile, path)
            write_record(path, data)
            if data.completed != len(prompts):
                raise ArtifactError(
                    f"only {data.completed} of {len(prompts)} requests completed", path=path
                )
            if arm == "on":
                check_routing_totals(routing, data, top_k)  # the capture saw every token
            return {key: float(summary[key]) for _, key in METRICS}

        for arm in ARMS:
            run(arm, f"warmup-{arm}")
        for i in range(args.rounds):
            for arm in ARMS if i % 2 == 0 else ARMS[::-1]:
                rounds[arm].append(run(arm, f"{arm}-{i}"))
            print(f"round {i + 1}/{args.rounds} done ({time.monotonic() - started:.0f} s)")
        provenance = server.provenance()
    text, rows = table(rounds, (("off", "off"), ("on", "capture on")), METRICS)
    text += "\n" + paired(rounds, rows)
    header = (
        f"routing capture cost: {profile.name} profile, {provenance.get('engine')} engine, "
        f"mode {mode} on {profile.engine.device}, max-num-seqs {limits.max_num_seqs}, "
        f"{len(prompts)} prompts x {client.output_len} output tokens, {args.rounds} "
        f"interleaved rounds; {os.cpu_count()} CPUs, load average "
        + " ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    return {"header": header, "table": text, "rows": rows, "provenance": provenance}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="local")
    parser.add_argument("--mode", help="the profile's mode to serve (default: the sweep's last)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--output-len", type=int, help="output tokens a request (default: the sweep's)"
    )
    parser.add_argument("--run-dir", type=Path, help="default: runs/capture-cost-<profile>")
    parser.add_argument("--model-dir", type=Path, help="serve this model folder (no install)")
    parser.add_argument("--out", type=Path, help="default: <run-dir>/capture_cost/figures.json")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.output_len is not None and args.output_len < 1:
        parser.error("--output-len must be at least 1")
    args.run_dir = args.run_dir or ROOT / "runs" / f"capture-cost-{args.profile}"
    args.out = args.out or args.run_dir / "capture_cost" / "figures.json"
    try:
        figures = measure(args)
    except (ArtifactError, OSError) as exc:
        print(f"capture_cost: failed: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:  # the stage printed its own error above
        print(
            f"capture_cost: failed: `{' '.join(exc.cmd[1:])}` exited {exc.returncode}",
            file=sys.stderr,
        )
        return 1
    atomic_write_json(args.out, figures)
    print(figures["header"] + "\n\n" + figures["table"] + f"\nfigures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
