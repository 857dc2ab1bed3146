"""One streamed request: its body, the SSE stream parsed into a `RequestRecord`.

Arrival times are taken when a network read returns, before any parsing, so several events
in one read share one arrival time (an ITL of 0): that is what the client saw. A content
chunk is a streamed event whose text is not empty.

Requests leave the client one at a time (`issuing`): on Python < 3.12 aiohttp writes a
request's body from a task of its own, so a burst of N requests started together would send
every body only after all N were set up, and each TTFT would carry the others' set-up. Each
request's clock starts when its turn comes (vLLM's client on Python >= 3.12 behaves alike:
aiohttp writes the body eagerly there). A request whose body is not out within
`ISSUE_WAIT_S` (a connection the server does not accept) lets the next one go.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from dataclasses import dataclass, field
from time import perf_counter, thread_time
from typing import Any

import aiohttp

from artifact.serving.config import BenchConfig, PromptSpec

ISSUE_WAIT_S = 1.0


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    # thread_time() at the start, and the CPU time of the event loop's thread (every
    # stream's work) from the start to the first content chunk.
    cpu_start: float = 0.0
    cpu_to_first: float = 0.0

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


def request_body(
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
        rec.error = f"malformed stream event: {one_line(payload.decode(errors='replace'), 120)}"
        return True
    if not isinstance(obj, dict):
        rec.error = f"stream event is not a JSON object: {one_line(str(obj), 120)}"
        return True
    choices = obj.get("choices")
    if "error" in obj and not choices:
        err = obj["error"]
        message = err.get("message", err) if isinstance(err, dict) else err
        rec.error = f"server error in stream: {one_line(str(message))}"
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


class _Turn:
    """One request's turn to send: it ends when the body is out, the request is over, or
    after ISSUE_WAIT_S, whichever comes first."""

    __slots__ = ("lock", "timer")

    def __init__(self, lock: asyncio.Lock) -> None:
        self.lock = lock
        self.timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            ISSUE_WAIT_S, self.end
        )

    def end(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.lock.release()


async def _on_body_sent(session: object, ctx: Any, params: object) -> None:
    if isinstance(turn := ctx.trace_request_ctx, _Turn):
        turn.end()


def issue_trace() -> aiohttp.TraceConfig:
    """The trace a session needs for requests to leave one at a time (see the module doc)."""
    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(_on_body_sent)
    return trace


def traces_issue(session: aiohttp.ClientSession) -> bool:
    return any(_on_body_sent in t.on_request_chunk_sent for t in session.trace_configs)


async def _open(
    session: aiohttp.ClientSession,
    config: BenchConfig,
    body: bytes,
    rec: RequestRecord,
    issuing: asyncio.Lock | None,
) -> aiohttp.ClientResponse:
    timeout = aiohttp.ClientTimeout(total=config.request_timeout_s)
    if issuing is None:
        rec.start, rec.cpu_start = perf_counter(), thread_time()
        return await session.post(config.url, data=body, headers=_headers(), timeout=timeout)
    await issuing.acquire()
    turn = _Turn(issuing)
    rec.start, rec.cpu_start = perf_counter(), thread_time()
    try:
        return await session.post(
            config.url, data=body, headers=_headers(), timeout=timeout, trace_request_ctx=turn
        )
    finally:
        turn.end()


async def stream_request(
    session: aiohttp.ClientSession,
    config: BenchConfig,
    body: bytes,
    rec: RequestRecord,
    issuing: asyncio.Lock | None = None,
) -> RequestRecord:
    """Send one streamed request and fill `rec`; never raises for a failed request.

    `issuing`: a lock shared by the requests of a phase on a session with `issue_trace()`.
    """
    chat = config.chat
    done = False
    try:
        async with await _open(session, config, body, rec, issuing) as resp:
            rec.status = resp.status
            if resp.status != 200:
                rec.error = f"HTTP {resp.status}: {one_line(await resp.text())}"
                return rec
            buf = b""
            stream = resp.content
            while data := await stream.readany():
                if done:
                    continue  # drain to the end, so the connection can be reused
                t = perf_counter()
                first = not rec.chunk_times
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
                if first and rec.chunk_times:
                    rec.cpu_to_first = thread_time() - rec.cpu_start
                if rec.error:
                    break
    except TimeoutError:
        rec.error = f"timed out after {config.request_timeout_s:g} s"
    except (aiohttp.ClientError, OSError) as exc:
        rec.error = f"{type(exc).__name__}: {one_line(str(exc)) or 'connection failed'}"
    if not rec.error:
        if not rec.chunk_times:
            rec.error = f"no content in the stream (finish_reason={rec.finish_reason})"
        elif not done and rec.finish_reason is None:
            rec.error = "stream ended before a finish_reason or [DONE]"
    return rec
