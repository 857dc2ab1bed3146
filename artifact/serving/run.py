"""The run loop: warmup, then the measured phase, with at most `max_concurrency` requests
in flight on one shared aiohttp session; repetitions share the session and one probe.

The bench stage calls `run_repetitions` (or `run_benchmark`) and `write_result`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import resource
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import aiohttp
import numpy as np

from artifact.core.errors import ArtifactError
from artifact.serving.arrivals import arrival_offsets, request_seeds
from artifact.serving.config import BenchConfig, PromptSpec
from artifact.serving.probe import probe_server
from artifact.serving.request import (
    RequestRecord,
    ServerCapabilities,
    issue_trace,
    request_body,
    stream_request,
    traces_issue,
)
from artifact.serving.result_file import BenchResult


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
) -> tuple[list[RequestRecord], float, float, tuple[float, float]]:
    """Run one phase; returns the records (times relative to the phase start), its start
    (perf_counter), its duration and the process CPU time (user, system) it took."""
    sem = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
    issuing = asyncio.Lock() if traces_issue(session) else None
    assert config.model is not None
    bodies = [
        request_body(config, config.model, p, _max_tokens(config, p), s, caps)
        for p, s in zip(prompts, seeds, strict=True)
    ]
    records = [
        RequestRecord(p.id, p.prompt_len or 0, _max_tokens(config, p), scheduled=float(o))
        for p, o in zip(prompts, offsets, strict=True)
    ]
    bar = None
    if progress:
        from artifact.core.console import progress_bar

        bar = progress_bar()
    with bar or contextlib.nullcontext():
        task = bar.add_task("requests", total=len(records)) if bar else None
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = perf_counter()

        async def one(i: int) -> None:
            delay = t0 + offsets[i] - perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if sem is None:
                await stream_request(session, config, bodies[i], records[i], issuing)
            else:
                async with sem:
                    await stream_request(session, config, bodies[i], records[i], issuing)
            if bar is not None and task is not None:
                bar.advance(task)

        await asyncio.gather(*(one(i) for i in range(len(records))))
        duration = perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for rec in records:
        rec.start -= t0
        rec.chunk_times = [t - t0 for t in rec.chunk_times]
    return records, t0, duration, (cpu1.ru_utime - cpu0.ru_utime, cpu1.ru_stime - cpu0.ru_stime)


def new_session(
    config: BenchConfig, trace_configs: Sequence[aiohttp.TraceConfig] = ()
) -> aiohttp.ClientSession:
    """The one HTTP session of a benchmark: unlimited connections (concurrency is ours),
    requests leaving one at a time (artifact.serving.request), and any further traces."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None),
        trace_configs=[issue_trace(), *trace_configs],
    )


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
    records, origin, duration, cpu = await _run_phase(
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
        cpu_user_s=cpu[0],
        cpu_system_s=cpu[1],
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
