"""Cross-check of `moe-artifact bench-client` against vLLM's own `vllm bench serve`.

    python benchmarks/crosscheck_vllm_client.py [--rounds 3] [--concurrency 8] [--out DIR]

One live vLLM server (the `vllm-cpu` profile's vLLM, `nox -s vllm-env`; mode baseline-tp1 at
the sweep's fixed limits), the sweep prompts of that profile's datasets, the same
concurrency, output length (EOS ignored) and request rate (inf) for both clients, run
interleaved: vLLM, ours, vLLM, ours, ... Each client is its own process on the same cores.
vLLM's client runs with --save-detailed; its file is read back through our result reader
(`moe-artifact metrics --verify` reads the same file) and both clients' own summary fields
are tabulated per metric: median over rounds per client, the ratio ours / vLLM, and each
client's run-to-run spread ((max - min) / median over its rounds). A ratio outside
1 +/- the larger spread is a difference beyond noise, marked `*`.

vLLM's client sends the custom dataset in its own shuffled order (seeded) with
--custom-skip-chat-template, ours in file order; both send every prompt once per round.
The install and datasets stages run first on --run-dir (reused when up to date). Writes
`crosscheck.md`, `crosscheck.json` and every result file under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from artifact.config.profiles import load_profile  # noqa: E402
from artifact.core.layout import RunLayout  # noqa: E402
from artifact.core.records import ModelRecord, read_record  # noqa: E402
from artifact.engines.base import ServerLimits, get_engine  # noqa: E402
from artifact.engines.vllm.engine import VllmEngine  # noqa: E402
from artifact.serving.results import load_result  # noqa: E402

# (label, summary key) in the order of the table; both clients write these keys.
METRICS = [
    (f"{stat} {name} (ms)", f"{stat}_{name.lower()}_ms")
    for name in ("TTFT", "TPOT", "ITL", "E2EL")
    for stat in ("mean", "median", "p99")
] + [
    ("request throughput (req/s)", "request_throughput"),
    ("output throughput (tok/s)", "output_throughput"),
    ("total token throughput (tok/s)", "total_token_throughput"),
    ("completed requests", "completed"),
    ("total input tokens", "total_input_tokens"),
    ("total output tokens", "total_output_tokens"),
]


def run_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "artifact", *args], check=True, cwd=ROOT)


def vllm_client(vllm: str, url: str, model: str, prompts: Path, n: int, args, out: Path):
    name = out.name
    argv = [
        vllm, "bench", "serve",
        "--backend", "vllm",
        "--base-url", url,
        "--model", model,
        "--dataset-name", "custom",
        "--dataset-path", str(prompts),
        "--custom-skip-chat-template",
        "--custom-output-len", str(args.output_len),
        "--num-prompts", str(n),
        "--max-concurrency", str(args.concurrency),
        "--request-rate", "inf",
        "--ignore-eos",
        "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--metric-percentiles", "50,99",
        "--save-result", "--save-detailed",
        "--result-dir", str(out.parent),
        "--result-filename", name,
        "--disable-tqdm",
        "--seed", str(args.seed),
    ]  # fmt: skip
    log = out.with_suffix(".log")
    with open(log, "w") as fh:
        subprocess.run(argv, check=True, stdout=fh, stderr=subprocess.STDOUT, timeout=1800)


def our_client(url: str, model: str, prompts: Path, args, label: str) -> None:
    """Writes `<label>.rep00.json` into args.out."""
    run_cli(
        "bench-client",
        "--base-url", url,
        "--model", model,
        "--dataset", str(prompts),
        "--max-concurrency", str(args.concurrency),
        "--output-len", str(args.output_len),
        "--request-rate", "inf",
        "--warmup-requests", "1",
        "--metric-percentiles", "50,99",
        "--label", label,
        "--result-dir", str(args.out),
        "--seed", str(args.seed),
    )  # fmt: skip


def summary(path: Path) -> dict[str, float]:
    """The client's own summary fields (each client's definitions, as it wrote them)."""
    data = load_result(path)
    return {key: float(data[key]) for _, key in METRICS}


def table(
    rounds: dict[str, list[dict[str, float]]],
    arms: tuple[tuple[str, str], tuple[str, str]] = (("vllm", "vLLM"), ("ours", "ours")),
    metrics: list[tuple[str, str]] = METRICS,
) -> tuple[str, list[dict]]:
    """Per metric, two arms' rounds ((key, title) each): medians, second / first, spreads."""
    (ka, ta), (kb, tb) = arms
    lines = [
        f"| metric | {ta} (median) | {tb} (median) | {tb} / {ta} | spread {ta} | spread {tb} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for label, key in metrics:
        a = [r[key] for r in rounds[ka]]
        b = [r[key] for r in rounds[kb]]
        ma, mb = statistics.median(a), statistics.median(b)
        sa = (max(a) - min(a)) / ma if ma else 0.0
        sb = (max(b) - min(b)) / mb if mb else 0.0
        ratio = mb / ma if ma else float("nan")
        beyond = abs(ratio - 1) > max(sa, sb)
        rows.append(
            {"metric": label, "key": key, ka: a, kb: b, "ratio": ratio,
             f"spread_{ka}": sa, f"spread_{kb}": sb, "beyond_noise": beyond}
        )  # fmt: skip
        lines.append(
            f"| {label} | {ma:.4g} | {mb:.4g} | {ratio:.3f}{' *' if beyond else ''} "
            f"| {sa:.1%} | {sb:.1%} |"
        )
    return "\n".join(lines) + "\n", rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="vllm-cpu")
    parser.add_argument("--mode", default="baseline-tp1")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "crosscheck-vllm-cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "crosscheck-vllm-cpu" / "xc")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    for stage in ("install", "datasets"):
        run_cli(stage, "--profile", args.profile, "--run-dir", str(args.run_dir))
    layout = RunLayout(args.run_dir)
    profile = load_profile(args.profile)
    model_dir = Path(read_record(layout.model_record, ModelRecord).model_dir)
    engine = get_engine(profile, model_dir, layout)
    assert isinstance(engine, VllmEngine), f"{args.profile} does not serve with vLLM"
    records = [json.loads(line) for line in layout.sweep_prompts.read_text().splitlines()]
    args.out.mkdir(parents=True, exist_ok=True)
    ours_prompts = args.out / "prompts.jsonl"
    ours_prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    vllm_prompts = args.out / "prompts-vllm.jsonl"
    vllm_prompts.write_text("".join(json.dumps({"prompt": r["text"]}) + "\n" for r in records))
    sweep = profile.experiments.config_sweep
    assert sweep is not None, f"{args.profile} has no config_sweep"
    limits = ServerLimits(sweep.fixed_max_num_seqs, sweep.fixed_max_num_batched_tokens)
    vllm = engine.vllm_executable()
    rounds: dict[str, list[dict[str, float]]] = {"vllm": [], "ours": []}
    started = time.monotonic()
    with engine.start(args.mode, limits, args.out / "server.log") as server:
        for i in range(args.rounds):
            target = args.out / f"vllm-{i}.json"
            vllm_client(
                vllm, server.base_url, server.model_id, vllm_prompts, len(records), args, target
            )
            rounds["vllm"].append(summary(target))
            our_client(server.base_url, server.model_id, ours_prompts, args, f"ours-{i}")
            rounds["ours"].append(summary(args.out / f"ours-{i}.rep00.json"))
            print(f"round {i + 1}/{args.rounds} done ({time.monotonic() - started:.0f} s)")
        provenance = server.provenance()
    text, rows = table(rounds)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    header = (
        f"vLLM {provenance.get('vllm_version')} ({args.profile}, {args.mode}, max-num-seqs "
        f"{limits.max_num_seqs}), {len(records)} prompts x {args.output_len} output tokens, "
        f"concurrency {args.concurrency}, {args.rounds} interleaved rounds; "
        f"{os.cpu_count()} CPUs, load average {' '.join(load)}\n\n"
    )
    (args.out / "crosscheck.md").write_text(header + text)
    (args.out / "crosscheck.json").write_text(
        json.dumps({"header": header, "rows": rows}, indent=1)
    )
    print(header + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
