"""Benchmark of the imbalance stage's computation on synthetic moe-routing logs.

    python benchmarks/bench_imbalance.py [--events 1e8] [--dir /tmp/moe-bench] [--json OUT]

Writes two logs (N events and 10 N events; 32 layers, top-2 of 8 experts) under --dir, then
runs `analyze_routing_log` (per-record measures, per-layer sums, every view and cross-layer
aggregate, the legacy methods) plus `write_run_tables` on each, in a fresh child process
pinned to one core with one BLAS/OpenMP thread, with and without the streamed per-step CSV.
It reports events/s (one event = one token-to-expert assignment: a record of n tokens
carries 2n), records/s, and the child's peak RSS next to its RSS before the analysis: peak
RSS that stays flat from N to 10 N events shows memory is bounded by the chunk.

The step mix imitates vLLM continuous batching (max_num_seqs 256, 8192 batched tokens):
each engine step has a decode batch of 1-256 tokens and, in 10% of steps, a prefill chunk
of 128-4096 tokens in its own record (the format's one record per phase). `--small-batches`
is the pessimistic mix: decode batches of 1-32 and prefill in 2% of steps. Loads per record
are multinomial draws of 2n assignments over a skewed per-layer expert distribution.
The timed part reads from the page cache (the files were just written).
"""

from __future__ import annotations

import os

# One thread for numpy's BLAS/OpenMP, set before numpy loads (also in the measured child).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from artifact.routing.aggregate import analyze_routing_log  # noqa: E402
from artifact.routing.format import PHASE_CODE, RoutingHeader, RoutingWriter, record_dtype  # noqa: E402
from artifact.routing.tables import PerStepCsv, write_run_tables  # noqa: E402

LAYERS, EXPERTS, TOP_K = 32, 8, 2
MIXES = {
    # (decode batch range, prefill probability per step, prefill chunk range)
    "vllm-mix": ((1, 256), 0.10, (128, 4096)),
    "small-batches": ((1, 32), 0.02, (128, 4096)),
}


def write_log(path: Path, events: int, mix: str, seed: int = 0) -> dict:
    """A synthetic log of at least `events` routing events; returns its shape."""
    (d_lo, d_hi), p_prefill, (p_lo, p_hi) = MIXES[mix]
    rng = np.random.default_rng(seed)
    layer_p = rng.dirichlet(np.full(EXPERTS, 2.0), size=LAYERS)  # skewed, per layer
    header = RoutingHeader(
        num_experts=EXPERTS, top_k=TOP_K, num_layers=LAYERS, source=f"bench_imbalance {mix}"
    )
    RoutingWriter(path, header).close()  # the header line, written by the format's writer
    dtype = record_dtype(EXPERTS)
    written = records = steps = 0
    with open(path, "ab") as fh:
        while written < events:
            n_steps = 256
            decode = rng.integers(d_lo, d_hi + 1, n_steps)
            prefill = np.where(
                rng.random(n_steps) < p_prefill, rng.integers(p_lo, p_hi + 1, n_steps), 0
            )
            step_ids = np.arange(steps, steps + n_steps)
            rows = []
            for phase, tokens in ((PHASE_CODE["decode"], decode), (PHASE_CODE["prefill"], prefill)):
                keep = tokens > 0
                s, n = np.repeat(step_ids[keep], LAYERS), np.repeat(tokens[keep], LAYERS)
                layer = np.tile(np.arange(LAYERS), int(keep.sum()))
                block = np.zeros(len(s), dtype=dtype)
                block["step"], block["layer"], block["phase"], block["num_tokens"] = (
                    s,
                    layer,
                    phase,
                    n,
                )
                block["counts"] = rng.multinomial(TOP_K * n, layer_p[layer])
                rows.append(block)
            block = np.concatenate(rows)
            block.sort(order=["step", "layer"], kind="stable")
            fh.write(block.tobytes())
            written += int(block["counts"].sum())
            records += len(block)
            steps += n_steps
    return {"events": written, "records": records, "steps": steps, "bytes": path.stat().st_size}


def measure(path: Path, per_step: bool) -> dict:
    """In this (child) process: one core, then the timed stage computation."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory(dir=path.parent) as out:
        t0 = time.perf_counter()
        if per_step:
            with PerStepCsv(Path(out) / "per_step.csv") as sink:
                result = analyze_routing_log(path, per_step=sink)
        else:
            result = analyze_routing_log(path)
        write_run_tables(out, [result])
        seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "events": result.events,
        "records": result.records,
        "rss_before_mib": rss_before / 1024,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=float, default=1e8)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/moe-bench"))
    parser.add_argument("--small-batches", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--per-step", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.per_step)))
        return
    mix = "small-batches" if args.small_batches else "vllm-mix"
    args.dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, numpy "
        f"{np.__version__}",
        "mix": mix,
        "runs": runs,
    }
    for scale in (1, 10):
        path = args.dir / f"{mix}-{scale}x.routing"
        t0 = time.perf_counter()
        shape = write_log(path, int(args.events * scale), mix)
        print(f"wrote {path}: {shape} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for per_step in (False, True):
            child = [sys.executable, __file__, "--measure", str(path)]
            out = subprocess.run(
                child + (["--per-step"] if per_step else []),
                capture_output=True,
                text=True,
                check=True,
            )
            m = json.loads(out.stdout)
            m.update(
                file=str(path),
                file_mib=shape["bytes"] / 2**20,
                mean_tokens_per_record=m["events"] / TOP_K / m["records"],
                per_step_csv=per_step,
                events_per_s=m["events"] / m["seconds"],
                records_per_s=m["records"] / m["seconds"],
            )
            runs.append(m)
            print(
                f"{scale:>2}x  per-step CSV {'on ' if per_step else 'off'}  "
                f"{m['events']:.3g} events, {m['records']:,} records "
                f"({m['mean_tokens_per_record']:.0f} tokens/record), {m['seconds']:.2f} s: "
                f"{m['events_per_s'] / 1e6:.0f} M events/s, {m['records_per_s'] / 1e6:.2f} M "
                f"records/s, peak RSS {m['peak_rss_mib']:.0f} MiB "
                f"(before analysis {m['rss_before_mib']:.0f} MiB)"
            )
        path.unlink()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
