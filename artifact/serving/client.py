"""Serving benchmark client: streamed requests against any OpenAI-compatible server.

One shared aiohttp session; per request the client stores its start time, the arrival time of
every content chunk (a streamed event whose text is not empty), the text, the server's usage
counts and the finish reason. Arrival times are taken when a network read returns, before
any parsing, so several events in one read share one arrival time (an ITL of 0): that is what
the client saw. TTFT, ITL, TPOT and E2EL follow vLLM's definitions (see bench_results).

Load: arrivals at `request_rate` requests/s with gamma-distributed gaps (shape `burstiness`;
1 is Poisson), or all at once for 'inf'; at most `max_concurrency` requests in flight; the
arrival times and per-request sampling seeds come from `seed`, so a repetition replays the
same schedule. Before the measured phase a probe request learns what the server accepts
(a field it rejects, such as `ignore_eos` on `transformers serve`, is dropped and recorded)
and `warmup_requests` requests run; neither counts in any metric.

The bench stage calls `run_repetitions` (or `run_benchmark`) and `write_result`; the
standalone command is `moe-artifact bench-client` (`configure_parser`, `run_tool`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import Any

import aiohttp
import numpy as np

from artifact import __version__
from artifact.core.errors import ArtifactError
from artifact.core.io import atomic_write_json, read_jsonl
from artifact.core.records import FORMAT, FORMAT_VERSION
from artifact.serving.results import (
    DEFAULT_PERCENTILES,
    parse_goodput,
    parse_percentiles,
    summarize,
)

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")
BACKENDS = {"/v1/completions": "openai", "/v1/chat/completions": "openai-chat"}
MIXTRAL_TOKENIZER_ID = "mistralai/Mixtral-8x7B-v0.1 (mistral-common tokenizer.model.v1)"
# Request fields a server may reject; the probe drops each one that it names in a 4xx reply.
OPTIONAL_FIELDS = ("ignore_eos", "stream_options")
PROBE_TIMEOUT_S = 60.0
# Keys of `server_info` the metrics tool reads to describe a run (all optional).
SERVER_INFO_KEYS = (
    "engine",
    "engine_version",
    "mode",
    "max_num_seqs",
    "max_num_batched_tokens",
    "eplb",
    "moe",
)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class BenchConfig:
    """How to load one server. Field names match the profile's BenchSpec where they overlap."""

    base_url: str
    model: str | None = None  # None: the one model the server lists
    endpoint: str = "/v1/completions"
    request_rate: float | str = "inf"
    burstiness: float = 1.0
    max_concurrency: int | None = None
    output_len: int | None = None  # None: each prompt's own output_len
    num_prompts: int | None = None  # None: every prompt once; more cycles through them
    warmup_requests: int = 0
    repeat: int = 1
    seed: int = 0
    ignore_eos: bool = True
    temperature: float = 0.0
    request_timeout_s: float = 600.0
    metric_percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    goodput_slos_ms: dict[str, float] = field(default_factory=dict)
    tokenizer_id: str = MIXTRAL_TOKENIZER_ID
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ArtifactError:
            return ArtifactError(why, where=f"bench config '{name}'")

        if not self.base_url.startswith(("http://", "https://")):
            raise bad("base_url", f"{self.base_url!r} is not an http(s) URL")
        if self.endpoint not in ENDPOINTS:
            raise bad("endpoint", f"{self.endpoint!r} is not one of {', '.join(ENDPOINTS)}")
        rate = self.request_rate
        if isinstance(rate, str) and rate != "inf":
            try:
                rate = float(rate)
            except ValueError:
                raise bad("request_rate", f"{rate!r} is not 'inf' or a number") from None
        if rate != "inf" and (math.isinf(rate) or not rate > 0):
            raise bad("request_rate", "must be 'inf' or a positive number of requests/s")
        object.__setattr__(self, "request_rate", "inf" if rate == "inf" else float(rate))
        if not self.burstiness > 0:
            raise bad("burstiness", "must be > 0 (1 is a Poisson process)")
        for name in ("max_concurrency", "output_len", "num_prompts"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise bad(name, "must be at least 1")
        if self.warmup_requests < 0 or self.repeat < 1:
            raise bad("warmup_requests/repeat", "warmup must be >= 0 and repeat >= 1")
        if not self.request_timeout_s > 0:
            raise bad("request_timeout_s", "must be > 0")
        if self.temperature < 0:
            raise bad("temperature", "must be >= 0")
        pct = tuple(float(p) for p in self.metric_percentiles)
        if not all(0 < p < 100 for p in pct):
            raise bad("metric_percentiles", "each must be between 0 and 100")
        object.__setattr__(self, "metric_percentiles", pct)
        object.__setattr__(self, "goodput_slos_ms", dict(self.goodput_slos_ms))

    @property
    def rate(self) -> float:
        return math.inf if self.request_rate == "inf" else float(self.request_rate)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.endpoint

    @property
    def chat(self) -> bool:
        return self.endpoint == "/v1/chat/completions"

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["metric_percentiles"] = list(self.metric_percentiles)
        return out


@dataclass(frozen=True)
class PromptSpec:
    id: str
    text: str
    category: str = ""
    output_len: int | None = None
    prompt_len: int | None = None  # client-side token count; filled in by run_benchmark


def load_prompts(path: str | Path) -> list[PromptSpec]:
    """A dataset JSONL: `{"id","text","category"}` per line, optional positive `output_len`."""
    prompts = []
    for lineno, rec in enumerate(read_jsonl(path, required=("text",)), start=1):
        if not isinstance(rec["text"], str):
            raise ArtifactError("'text' must be a string", path=path, where=str(lineno))
        out_len = rec.get("output_len")
        if out_len is not None and (
            isinstance(out_len, bool) or not isinstance(out_len, int) or out_len < 1
        ):
            raise ArtifactError(
                f"'output_len' must be a positive integer, got {out_len!r}",
                path=path,
                where=str(lineno),
            )
        prompts.append(
            PromptSpec(
                id=str(rec.get("id", lineno)),
                text=rec["text"],
                category=str(rec.get("category", "")),
                output_len=out_len,
            )
        )
    return prompts


@dataclass
class ServerCapabilities:
    """What the probe learned; recorded in every result file."""

    health_status: int | None = None
    models: list[str] = field(default_factory=list)
    # Optional request fields the server refused, with its reply (they are not sent).
    rejected_fields: dict[str, str] = field(default_factory=dict)
    usage_reported: bool = False

    def accepts(self, name: str) -> bool:
        return name not in self.rejected_fields

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it (perf_counter seconds)."""

    prompt_id: str
    prompt_len: int
    requested_output_len: int | None
    scheduled: float = 0.0  # intended start, seconds after the phase start
    start: float = 0.0
    chunk_times: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    usage_prompt_tokens: int | None = None
    usage_completion_tokens: int | None = None
    finish_reason: str | None = None
    status: int | None = None
    error: str = ""
    retokenized: int = 0

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] - self.start if self.chunk_times else 0.0

    @property
    def e2el(self) -> float:
        return self.chunk_times[-1] - self.start if self.chunk_times else 0.0

    @property
    def itls(self) -> list[float]:
        t = self.chunk_times
        return [t[k] - t[k - 1] for k in range(1, len(t))]

    @property
    def text(self) -> str:
        return "".join(self.texts)


# --- one streamed request ---------------------------------------------------------------------


def _payload(
    config: BenchConfig,
    model: str,
    prompt: PromptSpec,
    max_tokens: int | None,
    seed: int | None,
    caps: ServerCapabilities,
) -> bytes:
    body: dict[str, Any] = {"model": model, "stream": True, "temperature": config.temperature}
    if config.chat:
        body["messages"] = [{"role": "user", "content": prompt.text}]
    else:
        body["prompt"] = prompt.text
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if caps.accepts("stream_options"):
        body["stream_options"] = {"include_usage": True}
    if config.ignore_eos and caps.accepts("ignore_eos"):
        body["ignore_eos"] = True
    if seed is not None and config.temperature > 0:
        body["seed"] = seed
    body.update(config.extra_body)
    return json.dumps(body).encode()


def _headers() -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if key := os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _handle_event(rec: RequestRecord, payload: bytes, t: float, chat: bool) -> bool:
    """Apply one SSE data payload to the record; True when the stream is over."""
    if payload == b"[DONE]":
        return True
    try:
        obj = json.loads(payload)
    except ValueError:
        rec.error = f"malformed stream event: {_one_line(payload.decode(errors='replace'), 120)}"
        return True
    if not isinstance(obj, dict):
        rec.error = f"stream event is not a JSON object: {_one_line(str(obj), 120)}"
        return True
    choices = obj.get("choices")
    if "error" in obj and not choices:
        err = obj["error"]
        message = err.get("message", err) if isinstance(err, dict) else err
        rec.error = f"server error in stream: {_one_line(str(message))}"
        return True
    if choices:
        choice = choices[0]
        text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
        if text:
            rec.chunk_times.append(t)
            rec.texts.append(text)
        if choice.get("finish_reason"):
            rec.finish_reason = choice["finish_reason"]
    usage = obj.get("usage")
    if isinstance(usage, dict):
        rec.usage_prompt_tokens = usage.get("prompt_tokens")
        rec.usage_completion_tokens = usage.get("completion_tokens")
    return False


async def stream_request(
    session: aiohttp.ClientSession,
    config: BenchConfig,
    body: bytes,
    rec: RequestRecord,
    reads: list[tuple[float, float]],
) -> RequestRecord:
    """Send one streamed request and fill `rec`; never raises for a failed request.

    Appends (arrival time, processing seconds) of every network read to `reads`: the
    client's own work per read, from which its overhead is reported.
    """
    timeout = aiohttp.ClientTimeout(total=config.request_timeout_s)
    chat = config.chat
    done = False
    rec.start = perf_counter()
    try:
        async with session.post(config.url, data=body, headers=_headers(), timeout=timeout) as resp:
            rec.status = resp.status
            if resp.status != 200:
                rec.error = f"HTTP {resp.status}: {_one_line(await resp.text())}"
                return rec
            buf = b""
            async for data in resp.content.iter_any():
                if done:
                    continue  # drain to the end, so the connection can be reused
                t = perf_counter()
                buf = buf + data if buf else data
                if b"\r" in buf:
                    buf = buf.replace(b"\r\n", b"\n")
                while not done:
                    end = buf.find(b"\n\n")
                    if end < 0:
                        break
                    event, buf = buf[:end], buf[end + 2 :]
                    for line in event.split(b"\n"):
                        # SSE comments (":") and event/id fields carry no data.
                        if line.startswith(b"data:"):
                            done = _handle_event(rec, line[5:].strip(), t, chat)
                            if done:
                                break
                reads.append((t, perf_counter() - t))
                if rec.error:
                    break
    except TimeoutError:
        rec.error = f"timed out after {config.request_timeout_s:g} s"
    except (aiohttp.ClientError, OSError) as exc:
        rec.error = f"{type(exc).__name__}: {_one_line(str(exc)) or 'connection failed'}"
    if not rec.error:
        if not rec.chunk_times:
            rec.error = f"no content in the stream (finish_reason={rec.finish_reason})"
        elif not done and rec.finish_reason is None:
            rec.error = "stream ended before a finish_reason or [DONE]"
    return rec


# --- load generation --------------------------------------------------------------------------


def arrival_offsets(n: int, request_rate: float, burstiness: float, seed: int) -> np.ndarray:
    """Start offsets (s) of n requests: 0 for 'inf', else cumulative gamma gaps (mean 1/rate)."""
    if math.isinf(request_rate) or n == 0:
        return np.zeros(n)
    rng = np.random.default_rng([seed, 0])
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


def request_seeds(n: int, seed: int) -> list[int]:
    """Per-request sampling seeds (sent only when temperature > 0)."""
    return [int(s) for s in np.random.default_rng([seed, 1]).integers(0, 2**31 - 1, size=n)]


def _max_tokens(config: BenchConfig, prompt: PromptSpec) -> int | None:
    return config.output_len if config.output_len is not None else prompt.output_len


async def _run_phase(
    session: aiohttp.ClientSession,
    config: BenchConfig,
    caps: ServerCapabilities,
    prompts: Sequence[PromptSpec],
    offsets: np.ndarray,
    seeds: Sequence[int],
    progress: bool,
) -> tuple[list[RequestRecord], float, float, list[tuple[float, float]]]:
    """Run one phase; returns the records, its start (perf_counter), its duration and the
    per-read overhead log, with times relative to the start."""
    from artifact.core.console import progress_bar

    sem = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
    reads: list[tuple[float, float]] = []
    assert config.model is not None
    bodies = [
        _payload(config, config.model, p, _max_tokens(config, p), s, caps)
        for p, s in zip(prompts, seeds, strict=True)
    ]
    records = [
        RequestRecord(p.id, p.prompt_len or 0, _max_tokens(config, p), scheduled=float(o))
        for p, o in zip(prompts, offsets, strict=True)
    ]
    bar = progress_bar() if progress else None
    with bar or contextlib.nullcontext():
        task = bar.add_task("requests", total=len(records)) if bar else None
        t0 = perf_counter()

        async def one(i: int) -> None:
            delay = t0 + offsets[i] - perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if sem is None:
                await stream_request(session, config, bodies[i], records[i], reads)
            else:
                async with sem:
                    await stream_request(session, config, bodies[i], records[i], reads)
            if bar is not None and task is not None:
                bar.advance(task)

        await asyncio.gather(*(one(i) for i in range(len(records))))
        duration = perf_counter() - t0
    for rec in records:
        rec.start -= t0
        rec.chunk_times = [t - t0 for t in rec.chunk_times]
    return records, t0, duration, [(t - t0, dt) for t, dt in reads]


def new_session(config: BenchConfig) -> aiohttp.ClientSession:
    """The one HTTP session of a benchmark: unlimited connections (concurrency is ours)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None),
    )


async def probe_server(
    session: aiohttp.ClientSession, config: BenchConfig
) -> tuple[str, ServerCapabilities]:
    """Health, model list and one short streamed request; returns (model, capabilities).

    A 4xx reply that names an optional field drops that field and retries, so a server
    without `ignore_eos` (transformers serve) still runs, and the file says so.
    """
    base = config.base_url.rstrip("/")
    caps = ServerCapabilities()
    short = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    try:
        async with session.get(base + "/health", timeout=short) as resp:
            caps.health_status = resp.status
        async with session.get(base + "/v1/models", timeout=short) as resp:
            if resp.status == 200:
                listing = await resp.json(content_type=None)
                caps.models = [str(m.get("id")) for m in listing.get("data", [])]
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
        if caps.health_status is None:
            raise ArtifactError(
                f"cannot reach the server at {base}: {_one_line(str(exc)) or type(exc).__name__}"
            ) from None
    model = config.model
    if model is None:
        if len(caps.models) != 1:
            raise ArtifactError(
                f"the server at {base} lists {len(caps.models)} models "
                f"({', '.join(caps.models) or 'none'}); name one with --model"
            )
        model = caps.models[0]
    probe_config = dataclasses.replace(config, model=model, request_timeout_s=PROBE_TIMEOUT_S)
    prompt = PromptSpec("probe", "Hello")
    for _ in range(len(OPTIONAL_FIELDS) + 1):
        rec = RequestRecord("probe", 0, 2)
        body = _payload(probe_config, model, prompt, 2, 0, caps)
        await stream_request(session, probe_config, body, rec, [])
        if rec.status in (400, 422):
            named = [f for f in OPTIONAL_FIELDS if f in rec.error and caps.accepts(f)]
            if named:
                for name in named:
                    caps.rejected_fields[name] = rec.error
                continue
        if rec.error:
            raise ArtifactError(f"probe request to {config.url} failed: {rec.error}")
        caps.usage_reported = rec.usage_completion_tokens is not None
        return model, caps
    raise ArtifactError(f"probe request to {config.url} failed: {rec.error}")


# --- results ----------------------------------------------------------------------------------


@dataclass
class BenchResult:
    config: BenchConfig  # with the model resolved
    capabilities: ServerCapabilities
    prompts: list[PromptSpec]
    records: list[RequestRecord]
    warmup: list[RequestRecord]
    duration: float
    reads: list[tuple[float, float]]  # (arrival s after start, processing s) per read
    date: str
    started_at: str
    label: str = "run"
    repetition: int = 0
    # perf_counter (CLOCK_MONOTONIC on Linux) at the phase start: every time in the file is
    # relative to it, so other processes' monotonic timestamps on the host can be aligned.
    clock_origin: float = 0.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    server_info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return summarize(
            **self._arrays(),
            percentiles=self.config.metric_percentiles,
            goodput_slos_ms=self.config.goodput_slos_ms or None,
        )

    def _arrays(self) -> dict[str, Any]:
        recs = self.records
        return {
            "duration": self.duration,
            "ttfts": [r.ttft for r in recs],
            "itls": [r.itls for r in recs],
            "e2els": [r.e2el for r in recs],
            "output_lens": [_output_len(r) for r in recs],
            "input_lens": [
                r.usage_prompt_tokens if r.usage_prompt_tokens is not None else r.prompt_len
                for r in recs
            ],
            "errors": [r.error for r in recs],
        }


def _output_len(rec: RequestRecord) -> int:
    """vLLM's rule: the server's count when it reports one, else re-tokenized; 0 when failed."""
    if not rec.ok:
        return 0
    return (
        rec.usage_completion_tokens if rec.usage_completion_tokens is not None else rec.retokenized
    )


def overhead_summary(result: BenchResult) -> dict[str, Any]:
    """The client's own work: per read, per content chunk, and as a share of TTFT.

    `busy_share_of_ttft`: for each request, the client's processing time (all streams)
    between its start and its first chunk, over its TTFT. The event loop is single-threaded,
    so this bounds from above how much the client itself can have delayed that first chunk.
    """
    if not result.reads:
        return {"reads": 0}
    arr = np.asarray(result.reads, dtype=np.float64)
    order = np.argsort(arr[:, 0], kind="stable")
    times, proc = arr[order, 0], arr[order, 1]
    cum = np.concatenate([[0.0], np.cumsum(proc)])
    shares = []
    for rec in result.records:
        if rec.ok and rec.ttft > 0:
            lo = np.searchsorted(times, rec.start, side="left")
            hi = np.searchsorted(times, rec.chunk_times[0], side="left")
            shares.append((cum[hi] - cum[lo]) / rec.ttft)
    chunks = sum(len(r.chunk_times) for r in result.records)
    share = np.asarray(shares or [0.0])
    return {
        "reads": int(arr.shape[0]),
        "content_chunks": chunks,
        "total_s": float(proc.sum()),
        "per_chunk_us": float(proc.sum() / chunks * 1e6) if chunks else 0.0,
        "per_read_us": {
            "mean": float(proc.mean() * 1e6),
            "p50": float(np.percentile(proc, 50) * 1e6),
            "p99": float(np.percentile(proc, 99) * 1e6),
            "max": float(proc.max() * 1e6),
        },
        "busy_share_of_ttft": {
            "mean": float(share.mean()),
            "p50": float(np.median(share)),
            "max": float(share.max()),
        },
    }


def result_to_vllm_json(result: BenchResult) -> dict[str, Any]:
    """The result file: vLLM's keys and meanings, plus our per-request arrays and provenance.

    Times are seconds from the phase start (`run.clock_origin_s` on the host's monotonic
    clock); request i's content chunks arrived at start_times[i] + ttfts[i] + the cumulative
    sums of itls[i], and e2els[i] = ttfts[i] + sum(itls[i]).
    """
    cfg = result.config
    recs = result.records
    arrays = result._arrays()
    summary = result.summary()
    good = summary.pop("good_completed", None)
    requested_eos = cfg.ignore_eos and result.capabilities.accepts("ignore_eos")
    early_stops = sum(1 for r in recs if r.ok and r.finish_reason == "stop")
    out: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "date": result.date,
        "backend": BACKENDS[cfg.endpoint],
        "endpoint": cfg.endpoint,
        "base_url": cfg.base_url,
        "model_id": cfg.model,
        "tokenizer_id": cfg.tokenizer_id,
        "num_prompts": len(recs),
        "request_rate": cfg.request_rate,
        "burstiness": cfg.burstiness,
        "max_concurrency": cfg.max_concurrency,
        "duration": result.duration,
        "request_goodput": None,
        **summary,
        "percentiles": list(cfg.metric_percentiles),
        "goodput": {"slos_ms": cfg.goodput_slos_ms, "good_completed": good}
        if cfg.goodput_slos_ms
        else None,
        "input_lens": arrays["input_lens"],
        "output_lens": arrays["output_lens"],
        "ttfts": arrays["ttfts"],
        "itls": arrays["itls"],
        "e2els": arrays["e2els"],
        "generated_texts": [r.text for r in recs],
        "errors": arrays["errors"],
        "prompt_ids": [r.prompt_id for r in recs],
        "scheduled_times": [r.scheduled for r in recs],
        "start_times": [r.start for r in recs],
        "finish_reasons": [r.finish_reason for r in recs],
        "requested_output_lens": [r.requested_output_len for r in recs],
        "output_lens_usage": [r.usage_completion_tokens for r in recs],
        "output_lens_retokenized": [r.retokenized for r in recs],
        "input_lens_usage": [r.usage_prompt_tokens for r in recs],
        "input_lens_tokenized": [r.prompt_len for r in recs],
        "run": {
            "label": result.label,
            "repetition": result.repetition,
            "run_id": result.run_id,
            "started_at": result.started_at,
            "clock_origin_s": result.clock_origin,
        },
        "config": cfg.to_json(),
        "warmup": {
            "requests": len(result.warmup),
            "failed": sum(1 for r in result.warmup if not r.ok),
            "errors": sorted({r.error for r in result.warmup if r.error})[:5],
        },
        "server": {
            **result.server_info,
            "capabilities": result.capabilities.to_json(),
            "ignore_eos": {
                "requested": cfg.ignore_eos,
                "sent": requested_eos,
                # Honoured only if no successful request stopped early on its own.
                "honoured": (early_stops == 0) if requested_eos else False,
                "early_stops": early_stops,
            }
            if cfg.ignore_eos
            else None,
        },
        "client": {
            "name": "moe-artifact bench-client",
            "version": __version__,
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "overhead": overhead_summary(result),
        },
    }
    return out


def result_filename(label: str, repetition: int) -> str:
    return f"{label}.rep{repetition:02d}.json"


def write_result(result: BenchResult, directory: str | Path) -> Path:
    """Write one run's file as `<label>.repNN.json` (repetitions never share a file)."""
    path = Path(directory) / result_filename(result.label, result.repetition)
    atomic_write_json(path, result_to_vllm_json(result))
    return path


def _count_tokens() -> Callable[[list[str]], list[int]]:
    from artifact.workload.tokenizer import encode_batch

    return lambda texts: [len(ids) for ids in encode_batch(texts)] if texts else []


def _select(prompts: Sequence[PromptSpec], n: int) -> list[PromptSpec]:
    return [prompts[i % len(prompts)] for i in range(n)]


async def run_benchmark(
    config: BenchConfig,
    prompts: Sequence[PromptSpec],
    *,
    label: str = "run",
    repetition: int = 0,
    server_info: dict[str, Any] | None = None,
    session: aiohttp.ClientSession | None = None,
    capabilities: ServerCapabilities | None = None,
    count_tokens: Callable[[list[str]], list[int]] | None = None,
    progress: bool = False,
) -> BenchResult:
    """One run: probe (unless `capabilities` is given), warmup, measured phase.

    `count_tokens` maps texts to client-side token counts (default: the Mixtral tokenizer);
    it sizes prompts and re-tokenizes outputs, after the measured phase.
    """
    if not prompts:
        raise ArtifactError("no prompts to send")
    missing = [p.id for p in prompts if _max_tokens(config, p) is None]
    if missing:
        raise ArtifactError(
            f"no output length for prompt {missing[0]!r}: give a fixed output_len "
            "(--output-len) or an 'output_len' in every dataset record"
        )
    if session is None:
        async with new_session(config) as own:
            return await run_benchmark(
                config,
                prompts,
                label=label,
                repetition=repetition,
                server_info=server_info,
                session=own,
                capabilities=capabilities,
                count_tokens=count_tokens,
                progress=progress,
            )
    count = count_tokens or _count_tokens()
    if capabilities is None or config.model is None:
        model, capabilities = await probe_server(session, config)
        config = dataclasses.replace(config, model=model)
    measured = _select(prompts, config.num_prompts or len(prompts))
    unsized = [p for p in measured if p.prompt_len is None]
    if unsized:
        lens = dict(zip([p.id for p in unsized], count([p.text for p in unsized]), strict=True))
        measured = [
            p if p.prompt_len is not None else dataclasses.replace(p, prompt_len=lens[p.id])
            for p in measured
        ]
    warm = _select(measured, config.warmup_requests)
    warm_records: list[RequestRecord] = []
    if warm:
        warm_records, _, _, _ = await _run_phase(
            session,
            config,
            capabilities,
            warm,
            np.zeros(len(warm)),
            request_seeds(len(warm), config.seed + 1),
            progress=False,
        )
        if all(not r.ok for r in warm_records):
            raise ArtifactError(f"every warmup request failed; the first: {warm_records[0].error}")
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    date = datetime.now().strftime("%Y%m%d-%H%M%S")
    offsets = arrival_offsets(len(measured), config.rate, config.burstiness, config.seed)
    records, origin, duration, reads = await _run_phase(
        session,
        config,
        capabilities,
        measured,
        offsets,
        request_seeds(len(measured), config.seed),
        progress=progress,
    )
    for rec, n in zip(records, count([r.text for r in records]), strict=True):
        rec.retokenized = n
    return BenchResult(
        config=config,
        capabilities=capabilities,
        prompts=list(measured),
        records=records,
        warmup=warm_records,
        duration=duration,
        reads=reads,
        clock_origin=origin,
        date=date,
        started_at=started_at,
        label=label,
        repetition=repetition,
        server_info=dict(server_info or {}),
    )


async def run_repetitions(
    config: BenchConfig,
    prompts: Sequence[PromptSpec],
    *,
    label: str = "run",
    server_info: dict[str, Any] | None = None,
    count_tokens: Callable[[list[str]], list[int]] | None = None,
    progress: bool = False,
) -> list[BenchResult]:
    """`config.repeat` runs of the same schedule on one session and one probe; each run has
    its own warmup, run_id and repetition index, and is written to its own file."""
    count = count_tokens or _count_tokens()
    async with new_session(config) as session:
        model, caps = await probe_server(session, config)
        config = dataclasses.replace(config, model=model)
        return [
            await run_benchmark(
                config,
                prompts,
                label=label,
                repetition=rep,
                server_info=server_info,
                session=session,
                capabilities=caps,
                count_tokens=count,
                progress=progress,
            )
            for rep in range(config.repeat)
        ]


# --- CLI: moe-artifact bench-client -----------------------------------------------------------

TOOL_HELP = "benchmark an OpenAI-compatible server with a JSONL dataset (vLLM-format results)"


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
    if over.get("reads"):
        table.add_row("client µs per chunk", f"{over['per_chunk_us']:.1f}")
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
