"""The bench client's own overhead per streamed chunk and its share of TTFT, at 1/16/64 streams.

    python benchmarks/bench_client_overhead.py                 # against a built-in fake server
    python benchmarks/bench_client_overhead.py --base-url URL  # against a running server

The fake server runs in its own process and writes, into every chunk's text, the monotonic
clock (CLOCK_MONOTONIC, shared by all processes of the host) when it received the request
and when it sent that chunk. Against it the script reports, per concurrency level:

- client µs/chunk: the client process's CPU time over the measured phase per content chunk
  (the result file's `client.overhead.per_chunk_us`), and that CPU time over the phase's
  wall time (`cpu_share`);
- dispatch: from the request's start (where TTFT starts, as in vLLM) to its body leaving
  the client (aiohttp's request machinery and waiting for our event loop);
- delivery lag: chunk arrival at the client minus its send time at the server (loopback
  and any wait behind other streams' work in the client's loop);
- client share of TTFT: (dispatch + first chunk's delivery lag) / client TTFT;
- client+transport share: (client TTFT - server TTFT) / client TTFT, server TTFT running
  from the server's handler receiving the request to it sending the first chunk: adds the
  loopback and the server framework's accept/parse time, a looser upper bound;
- busy share (in-client bound, also in every result file): the CPU time of the client's
  event loop thread, all streams together, between a request's start and its first chunk,
  over its TTFT; it bounds the client share from above, less the loopback, the wake-up and
  CPU taken by other processes (see overhead_summary).

Against a real server only the in-client figures exist. The goal is a client share under 5%
of TTFT at 64 streams. Both processes share the machine's cores, as in a local run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from artifact.serving.config import BenchConfig, PromptSpec
from artifact.serving.result_file import overhead_summary
from artifact.serving.run import new_session, run_benchmark


def serve(port: int, ttft_ms: float, itl_ms: float) -> None:
    """The fake server: fixed TTFT and ITL, timestamps in the text, usage at the end."""
    from aiohttp import web

    async def completions(request: web.Request) -> web.StreamResponse:
        t_recv = time.perf_counter()
        body = await request.json()
        n = int(body.get("max_tokens") or 16)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(ttft_ms / 1000)
        for _ in range(n):
            text = f"{t_recv:.9f},{time.perf_counter():.9f};"
            await resp.write(f'data: {{"choices":[{{"index":0,"text":"{text}"}}]}}\n\n'.encode())
            await asyncio.sleep(itl_ms / 1000)
        usage = {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}
        final = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}], "usage": usage}
        await resp.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "fake"}]})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"no server at {url}") from None
            time.sleep(0.2)


def measure(
    base_url: str, model: str | None, streams: int, requests: int, tokens: int, fake: bool
) -> dict:
    config = BenchConfig(
        base_url=base_url,
        model=model,
        output_len=tokens,
        max_concurrency=streams,
        warmup_requests=min(streams, 4),
        ignore_eos=True,
    )
    prompts = [PromptSpec(f"q{i}", f"question {i}", prompt_len=8) for i in range(requests)]
    body_sent: dict[str, float] = {}

    async def on_body_sent(session, ctx, params) -> None:
        body_sent[json.loads(params.chunk)["prompt"]] = time.perf_counter()

    async def run():
        # Against the fake server, learn when each body left the client (benchmark-only).
        trace = aiohttp.TraceConfig()
        trace.on_request_chunk_sent.append(on_body_sent)
        async with new_session(config, [trace] if fake else []) as session:
            return await run_benchmark(
                config, prompts, session=session, count_tokens=lambda t: [0] * len(t)
            )

    result = asyncio.run(run())
    over = overhead_summary(result)
    ok = [r for r in result.records if r.ok]
    row = {
        "streams": streams,
        "requests": requests,
        "completed": len(ok),
        "chunks": over["content_chunks"],
        "client_us_per_chunk": over["per_chunk_us"],
        "cpu_share": over["cpu_share"],
        "ttft_ms_mean": 1000 * float(np.mean([r.ttft for r in ok])),
        "busy_share_of_ttft_mean": over["busy_share_of_ttft"]["mean"],
        "busy_share_of_ttft_max": over["busy_share_of_ttft"]["max"],
    }
    if not fake:
        return row
    text_of = {p.id: p.text for p in prompts}
    shares: list[float] = []
    client_shares: list[float] = []
    dispatch: list[float] = []
    lags: list[float] = []
    for rec in ok:
        stamps = [tuple(map(float, s.split(","))) for s in rec.text.split(";") if s]
        t_recv, first_send = stamps[0]
        server_ttft = first_send - t_recv
        shares.append((rec.ttft - server_ttft) / rec.ttft)
        arrivals = [result.clock_origin + t for t in rec.chunk_times]
        lags.extend(a - sent for a, (_, sent) in zip(arrivals, stamps, strict=True))
        sent = body_sent[text_of[rec.prompt_id]] - (result.clock_origin + rec.start)
        dispatch.append(sent)
        client_shares.append((sent + arrivals[0] - first_send) / rec.ttft)
    row.update(
        dispatch_ms_mean=1000 * float(np.mean(dispatch)),
        client_share_of_ttft_mean=float(np.mean(client_shares)),
        client_transport_share_of_ttft_mean=float(np.mean(shares)),
        delivery_lag_us_median=1e6 * float(np.median(lags)),
        delivery_lag_us_p99=1e6 * float(np.percentile(lags, 99)),
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="a running server (default: start the fake one)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--streams", default="1,16,64", help="concurrency levels")
    parser.add_argument("--waves", type=int, default=4, help="requests = waves x streams")
    parser.add_argument("--trials", type=int, default=3, help="runs per level; medians shown")
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--ttft-ms", type=float, default=100.0, help="fake server's TTFT")
    parser.add_argument("--itl-ms", type=float, default=20.0, help="fake server's ITL")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.ttft_ms, args.itl_ms)
        return 0
    fake = args.base_url is None
    server = None
    if fake:
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                str(port),
                "--ttft-ms",
                str(args.ttft_ms),
                "--itl-ms",
                str(args.itl_ms),
            ]
        )
        base_url = f"http://127.0.0.1:{port}"
    else:
        base_url = args.base_url
    rows = []
    try:
        wait_healthy(base_url)
        for streams in (int(s) for s in args.streams.split(",")):
            requests = max(args.waves * streams, 8)
            trials = [
                measure(base_url, args.model, streams, requests, args.tokens, fake)
                for _ in range(args.trials)
            ]
            # The median of each figure over the trials: a shared machine is noisy.
            rows.append({k: float(np.median([t[k] for t in trials])) for k in trials[0]})
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
    cpus = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    target = (
        f"fake server (TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms, {args.tokens} tokens)"
        if fake
        else base_url
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"bench client overhead: {target}; {cpus}; load average {load}")
    print(f"median of {args.trials} trials per level")
    header = f"{'streams':>7} {'reqs':>5} {'µs/chunk':>9} {'cpu share':>9} {'TTFT ms':>9} "
    header += f"{'busy share':>10}"
    if fake:
        header += f" {'dispatch ms':>11} {'client share':>12} {'+transport':>10}"
        header += f" {'lag med µs':>10} {'lag p99 µs':>10}"
    print(header)
    for r in rows:
        line = (
            f"{r['streams']:>7.0f} {r['requests']:>5.0f} {r['client_us_per_chunk']:>9.1f} "
            f"{100 * r['cpu_share']:>8.2f}% {r['ttft_ms_mean']:>9.1f} "
            f"{100 * r['busy_share_of_ttft_mean']:>9.2f}%"
        )
        if fake:
            line += (
                f" {r['dispatch_ms_mean']:>11.2f} {100 * r['client_share_of_ttft_mean']:>11.2f}%"
                f" {100 * r['client_transport_share_of_ttft_mean']:>9.2f}%"
                f" {r['delivery_lag_us_median']:>10.0f} {r['delivery_lag_us_p99']:>10.0f}"
            )
        print(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
