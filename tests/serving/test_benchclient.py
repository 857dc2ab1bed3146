"""The bench client against a small in-test SSE server: parsing, timing, load, failures, files."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest
from aiohttp import web

from artifact.core.errors import ArtifactError
from artifact.serving.arrivals import arrival_offsets
from artifact.serving.config import BenchConfig, PromptSpec, load_prompts
from artifact.serving.request import ISSUE_WAIT_S, ServerCapabilities
from artifact.serving.result_file import result_to_vllm_json, write_result
from artifact.serving.results import load_result, summarize, verify_result, verify_result_file
from artifact.serving.run import run_benchmark, run_repetitions


@dataclass
class FakeState:
    """What the fake server saw, and how it behaves."""

    bodies: list[dict] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    reject_ignore_eos: bool = False


STATE = web.AppKey("state", FakeState)


def _chunk(text: str, finish_reason: str | None = None, **extra) -> bytes:
    choice = {"index": 0, "text": text, "finish_reason": finish_reason}
    return f"data: {json.dumps({'choices': [choice], **extra})}\n\n".encode()


async def _completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await request.json()
    if state.reject_ignore_eos and "ignore_eos" in body:
        return web.json_response(
            {"detail": "Unexpected fields in the request: {'ignore_eos'}"}, status=422
        )
    state.bodies.append(body)
    # The prompt drives the behaviour: "<mode> <ttft_ms> <gap_ms>".
    mode, ttft_ms, gap_ms = ([*body["prompt"].split(), "0", "0"])[:3]
    if mode == "http500":
        return web.Response(status=500, text="engine exploded")
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(float(ttft_ms) / 1000)
        n = body.get("max_tokens") or 4
        if mode == "hang":  # until the client gives up
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.05)
            return resp
        if mode == "error":
            await resp.write(_chunk("a"))
            await resp.write(b'data: {"error": {"message": "out of KV cache"}}\n\n')
            return resp
        if mode == "batched":  # several events in one write, CRLF separators
            await resp.write(b"".join(_chunk(f"t{k} ").replace(b"\n", b"\r\n") for k in range(n)))
        elif mode != "empty":
            for k in range(n):
                await resp.write(_chunk(f"t{k} "))
                await asyncio.sleep(float(gap_ms) / 1000)
        if mode == "cut":
            return resp
        usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
        final = {"usage": usage} if mode != "nousage" else {}
        await resp.write(_chunk("", "length", **final))
        await resp.write(b"data: [DONE]\n\n")
        return resp
    finally:
        state.in_flight -= 1


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    request.app[STATE].bodies.append(body)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    def delta(d, **extra):
        return f"data: {json.dumps({'choices': [{'index': 0, 'delta': d, **extra}]})}\n\n".encode()

    await resp.write(delta({"role": "assistant", "content": ""}))
    await asyncio.sleep(0.02)
    for k in range(3):
        await resp.write(delta({"content": f"c{k}"}))
        await asyncio.sleep(0.005)
    await resp.write(delta({}, finish_reason="stop"))
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "fake-model"}]})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@pytest.fixture
def server():
    """A fake OpenAI-compatible server on its own thread and loop; yields (base_url, state)."""
    state = FakeState()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    async def start():
        app = web.Application()
        app[STATE] = state
        app.router.add_post("/v1/completions", _completions)
        app.router.add_post("/v1/chat/completions", _chat)
        app.router.add_get("/v1/models", _models)
        app.router.add_get("/health", _health)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        holder["port"] = site._server.sockets[0].getsockname()[1]
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()))
    thread.start()
    assert started.wait(10)
    yield f"http://127.0.0.1:{holder['port']}", state
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def words(texts: list[str]) -> list[int]:
    """A stand-in tokenizer: one token per word."""
    return [len(t.split()) for t in texts]


def bench(config: BenchConfig, prompts: list[PromptSpec], **kw):
    return asyncio.run(run_benchmark(config, prompts, count_tokens=words, **kw))


def prompts_of(*texts: str) -> list[PromptSpec]:
    return [PromptSpec(id=f"p{i}", text=t) for i, t in enumerate(texts)]


def test_timing_follows_vllm_definitions(server):
    url, _ = server
    cfg = BenchConfig(base_url=url, output_len=5)
    result = bench(cfg, prompts_of("ok 60 20"))
    rec = result.records[0]
    assert rec.ok, rec.error
    assert rec.text == "t0 t1 t2 t3 t4 "
    assert 0.055 <= rec.ttft < 1.0
    assert len(rec.itls) == 4 and all(0.015 <= gap < 0.5 for gap in rec.itls)
    assert rec.e2el == pytest.approx(rec.ttft + sum(rec.itls), rel=1e-12)
    assert rec.usage_completion_tokens == 5 and rec.finish_reason == "length"
    data = result_to_vllm_json(result)
    assert data["output_lens"] == [5] and data["input_lens"] == [7]
    assert data["model_id"] == "fake-model"  # the one model the server lists
    assert data["mean_tpot_ms"] == pytest.approx((rec.e2el - rec.ttft) / 4 * 1000)
    assert data["mean_itl_ms"] == pytest.approx(np.mean(rec.itls) * 1000)
    assert verify_result(data, "x.json").ok


def test_events_in_one_read_share_one_arrival_time(server):
    url, _ = server
    result = bench(BenchConfig(base_url=url, output_len=4), prompts_of("batched 10"))
    rec = result.records[0]
    assert rec.ok and rec.text == "t0 t1 t2 t3 "
    assert rec.itls == [0.0, 0.0, 0.0]


def test_failures_are_recorded_with_a_reason(server):
    url, _ = server
    cfg = BenchConfig(base_url=url, output_len=3, request_timeout_s=0.5)
    result = bench(cfg, prompts_of("http500", "error", "hang", "empty", "cut", "ok", "nousage"))
    errors = [r.error for r in result.records]
    assert errors[0].startswith("HTTP 500: engine exploded")
    assert "out of KV cache" in errors[1]
    assert errors[2] == "timed out after 0.5 s"
    assert errors[3].startswith("no content in the stream")
    assert errors[4] == "stream ended before a finish_reason or [DONE]"
    assert errors[5] == errors[6] == ""
    data = result_to_vllm_json(result)
    assert data["completed"] == 2 and data["failed"] == 5
    # Without usage the re-tokenized count stands in; failed requests count 0 (vLLM's rule).
    assert data["output_lens"] == [0, 0, 0, 0, 0, 3, 3]
    assert data["output_lens_usage"][6] is None and data["output_lens_retokenized"][6] == 3
    assert verify_result(data, "x.json").ok


def test_refused_ignore_eos_is_dropped_and_recorded(server):
    url, state = server
    state.reject_ignore_eos = True
    result = bench(BenchConfig(base_url=url, output_len=2), prompts_of("ok", "ok"))
    assert all(r.ok for r in result.records)
    assert "ignore_eos" in result.capabilities.rejected_fields
    assert all("ignore_eos" not in b for b in state.bodies)
    eos = result_to_vllm_json(result)["server"]["ignore_eos"]
    assert eos == {"requested": True, "sent": False, "honoured": False, "early_stops": 0}


def test_request_body_carries_output_len_usage_and_seed(server, tmp_path):
    url, state = server
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "a", "text": "ok", "output_len": 3}\n{"id": "b", "text": "ok"}\n')
    prompts = load_prompts(path)
    with pytest.raises(ArtifactError, match="no output length for prompt 'b'"):
        bench(BenchConfig(base_url=url), prompts)
    bench(BenchConfig(base_url=url, temperature=0.7, seed=3), prompts[:1])
    body = state.bodies[-1]
    assert body["max_tokens"] == 3 and body["ignore_eos"] is True
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert isinstance(body["seed"], int) and body["temperature"] == 0.7
    bench(BenchConfig(base_url=url, output_len=6), prompts)  # fixed length overrides
    assert [b["max_tokens"] for b in state.bodies[-2:]] == [6, 6]


def test_warmup_is_excluded_and_repetitions_are_kept_apart(server, tmp_path):
    url, state = server
    cfg = BenchConfig(base_url=url, output_len=2, warmup_requests=3, repeat=2)
    prompts = prompts_of(*[f"ok 5 {i}" for i in range(4)])
    results = asyncio.run(run_repetitions(cfg, prompts, label="sweep", count_tokens=words))
    # one probe, then per repetition 3 warmup and 4 measured requests
    assert len(state.bodies) == 1 + 2 * (3 + 4)
    paths = [write_result(r, tmp_path) for r in results]
    assert [p.name for p in paths] == ["sweep.rep00.json", "sweep.rep01.json"]
    files = [load_result(p) for p in paths]
    assert [f["run"]["repetition"] for f in files] == [0, 1]
    assert files[0]["run"]["run_id"] != files[1]["run"]["run_id"]
    for f, p in zip(files, paths, strict=True):
        assert f["num_prompts"] == 4 and f["warmup"]["requests"] == 3
        assert verify_result_file(p) == []


def test_max_concurrency_bounds_requests_in_flight(server):
    url, state = server
    cfg = BenchConfig(base_url=url, output_len=2, max_concurrency=2)
    result = bench(cfg, prompts_of(*["ok 30 5"] * 6))
    assert all(r.ok for r in result.records)
    assert state.max_in_flight == 2
    state.max_in_flight = 0
    bench(BenchConfig(base_url=url, output_len=2), prompts_of(*["ok 30 5"] * 6))
    assert state.max_in_flight == 6


def test_chat_endpoint_counts_content_deltas_only(server):
    url, _ = server
    cfg = BenchConfig(base_url=url, endpoint="/v1/chat/completions", output_len=3)
    rec = bench(cfg, prompts_of("hi")).records[0]
    assert rec.ok and rec.text == "c0c1c2" and len(rec.itls) == 2
    assert rec.ttft >= 0.02  # the role-only chunk is not content


def test_arrival_schedule_is_seeded_gamma():
    assert not arrival_offsets(5, float("inf"), 1.0, 0).any()
    a = arrival_offsets(4000, 10.0, 1.0, seed=1)
    assert np.array_equal(a, arrival_offsets(4000, 10.0, 1.0, seed=1))
    assert not np.array_equal(a, arrival_offsets(4000, 10.0, 1.0, seed=2))
    gaps = np.diff(a)
    assert a[0] == 0 and gaps.mean() == pytest.approx(0.1, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.1)  # Poisson: CV 1
    bursty = np.diff(arrival_offsets(4000, 10.0, 0.25, seed=1))
    assert bursty.mean() == pytest.approx(0.1, rel=0.1)
    assert bursty.std() / bursty.mean() == pytest.approx(2.0, rel=0.1)  # CV 1/sqrt(shape)


def test_goodput_counts_requests_meeting_every_slo(server):
    url, _ = server
    cfg = BenchConfig(base_url=url, output_len=3, goodput_slos_ms={"ttft": 40.0})
    data = result_to_vllm_json(bench(cfg, prompts_of("ok 1", "ok 1", "ok 120")))
    assert data["goodput"]["good_completed"] == 2
    assert data["request_goodput"] == pytest.approx(2 / data["duration"])


def test_unreachable_server_is_one_clear_error():
    cfg = BenchConfig(base_url="http://127.0.0.1:9", output_len=1)
    with pytest.raises(ArtifactError, match=r"cannot reach the server at http://127\.0\.0\.1:9"):
        bench(cfg, prompts_of("x"))


def test_a_connection_never_accepted_holds_the_next_request_back_only_briefly():
    """Requests leave one at a time; one whose connection hangs (a full accept backlog) lets
    the next one go after ISSUE_WAIT_S instead of at its own timeout."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):  # fill the backlog: later connections hang in connect()
            sock = stack.enter_context(socket.socket())
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", port))
        cfg = BenchConfig(
            base_url=f"http://127.0.0.1:{port}", model="m", output_len=1, request_timeout_s=3.0
        )
        result = bench(cfg, prompts_of("a", "b", "c"), capabilities=ServerCapabilities())
    assert [r.error for r in result.records] == ["timed out after 3 s"] * 3
    starts = sorted(r.start for r in result.records)
    assert all(0.9 * ISSUE_WAIT_S <= b - a < 2.5 for a, b in itertools.pairwise(starts)), starts


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"endpoint": "/generate"}, "endpoint"),
        ({"request_rate": "fast"}, "request_rate"),
        ({"request_rate": -1}, "request_rate"),
        ({"burstiness": 0}, "burstiness"),
        ({"metric_percentiles": (50, 100)}, "metric_percentiles"),
    ],
)
def test_bad_config_is_one_error(kwargs, match):
    with pytest.raises(ArtifactError, match=match):
        BenchConfig(base_url="http://h:1", **kwargs)


def test_summary_arithmetic_by_hand():
    out = summarize(
        duration=2.0,
        ttfts=[0.1, 0.3, 9.0, 0.2],
        itls=[[0.05, 0.05], [0.1], [7.0], []],
        e2els=[0.2, 0.4, 16.0, 0.2],
        output_lens=[3, 2, 0, 1],
        input_lens=[10, 20, 30, 40],
        errors=["", "", "boom", ""],
        percentiles=(50, 99.9),
        goodput_slos_ms={"ttft": 250, "tpot": 60},
    )
    assert out["completed"] == 3 and out["failed"] == 1
    assert out["total_input_tokens"] == 70 and out["total_output_tokens"] == 6
    assert out["request_throughput"] == 1.5 and out["total_token_throughput"] == 38.0
    assert out["mean_ttft_ms"] == pytest.approx(200.0)
    assert out["mean_itl_ms"] == pytest.approx(1000 * 0.2 / 3)  # failed request's gap left out
    # TPOT only for output_len > 1: (0.2-0.1)/2 and (0.4-0.3)/1
    assert out["mean_tpot_ms"] == pytest.approx(75.0)
    assert out["p99.9_ttft_ms"] == pytest.approx(1000 * np.percentile([0.1, 0.3, 0.2], 99.9))
    # good: request 0 (ttft 100, tpot 50); request 1 has tpot 100; request 3 has ttft 200, tpot 0
    assert out["good_completed"] == 2
    empty = summarize(
        duration=1.0,
        ttfts=[0.0],
        itls=[[]],
        output_lens=[0],
        input_lens=[5],
        errors=["x"],
        e2els=[0.0],
    )
    assert empty["mean_ttft_ms"] == 0.0 and empty["p99_itl_ms"] == 0.0


def test_verify_catches_a_tampered_file(server, tmp_path):
    url, _ = server
    path = write_result(
        bench(BenchConfig(base_url=url, output_len=3), prompts_of("ok 5 5")), tmp_path
    )
    assert verify_result_file(path) == []
    data = json.loads(path.read_text())
    data["mean_ttft_ms"] *= 1.001
    data["e2els"][0] += 0.5
    path.write_text(json.dumps(data))
    problems = verify_result_file(path)
    assert any(p.startswith("mean_ttft_ms: stored") for p in problems)
    assert any(p.startswith("e2els[0]:") for p in problems)
    assert any(p.startswith("mean_e2el_ms:") for p in problems)


def test_client_command_writes_one_file_per_repetition(server, tmp_path):
    import argparse

    from artifact.serving.client import configure_parser, run_tool

    url, _ = server
    dataset = tmp_path / "set.jsonl"
    dataset.write_text("".join(f'{{"id": "{i}", "text": "ok 5 2"}}\n' for i in range(3)))
    parser = argparse.ArgumentParser()
    configure_parser(parser)

    def run(*extra):
        return run_tool(
            parser.parse_args(
                [
                    "--base-url",
                    url,
                    "--dataset",
                    str(dataset),
                    "--output-len",
                    "2",
                    "--result-dir",
                    str(tmp_path / "out"),
                    *extra,
                ]
            )
        )

    assert run("--repeat", "2", "--server-info", "mode=eager", "max_num_seqs=4") == 0
    files = sorted((tmp_path / "out").glob("*.json"))
    assert [f.name for f in files] == ["set.rep00.json", "set.rep01.json"]
    data = load_result(files[0])
    assert data["server"]["mode"] == "eager" and data["server"]["max_num_seqs"] == 4
    dataset.write_text('{"id": "x", "text": "http500"}\n')
    with pytest.raises(ArtifactError, match="every request failed; the first: HTTP 500"):
        run("--label", "broken")
    assert (tmp_path / "out" / "broken.rep00.json").exists()
