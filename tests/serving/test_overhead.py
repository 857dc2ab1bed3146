"""The client's own overhead figures against measures taken outside the client, with the
fake server of benchmarks/bench_client_overhead.py in a process of its own (so that the
client process's CPU time is the client's alone)."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from artifact.serving.config import BenchConfig, PromptSpec
from artifact.serving.request import ServerCapabilities
from artifact.serving.result_file import overhead_summary
from artifact.serving.run import run_benchmark

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_client_overhead.py"


@pytest.fixture
def fake_server():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(BENCH), "--serve", str(port), "--ttft-ms", "20", "--itl-ms", "2"]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the fake server did not start"
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(10)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_overhead_total_is_the_process_cpu_of_the_measured_phase(fake_server):
    config = BenchConfig(
        base_url=fake_server, model="fake", output_len=32, max_concurrency=32, ignore_eos=True
    )
    prompts = [PromptSpec(f"q{i}", f"question {i}", prompt_len=8) for i in range(128)]
    caps = ServerCapabilities(health_status=200, models=["fake"], usage_reported=True)

    def run(n: int):
        return asyncio.run(
            run_benchmark(
                config, prompts[:n], capabilities=caps, count_tokens=lambda t: [0] * len(t)
            )
        )

    run(2)  # the process's first use of the client: lazy imports and caches
    before = _cpu()  # no probe, no warmup: the measured phase is nearly all of this call
    result = run(len(prompts))
    outside = _cpu() - before
    over = overhead_summary(result)
    assert all(r.ok for r in result.records) and over["content_chunks"] == 128 * 32
    assert abs(over["total_s"] - outside) <= 0.2 * outside, (over["total_s"], outside)
    assert over["total_s"] == pytest.approx(over["user_s"] + over["system_s"])


def test_bodies_leave_promptly_and_busy_share_bounds_the_client_share(tmp_path):
    """At 64 streams each request's body leaves within a small part of its TTFT (when all
    bodies waited for the whole burst's set-up, 20-40 ms of the first wave's 100 ms), and
    the in-file bound is above the client share the benchmark measures from the server."""
    rows = tmp_path / "rows.json"
    command = [sys.executable, str(BENCH), "--streams", "64", "--trials", "1", "--waves", "2"]
    subprocess.run(
        [*command, "--tokens", "16", "--json", str(rows)], check=True, timeout=120, cwd=tmp_path
    )
    (row,) = json.loads(rows.read_text())
    assert row["completed"] == row["requests"] == 128
    assert row["dispatch_ms_mean"] < 0.05 * row["ttft_ms_mean"], row
    assert row["busy_share_of_ttft_mean"] >= row["client_share_of_ttft_mean"] > 0, row
