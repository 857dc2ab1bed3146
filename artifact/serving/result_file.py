"""A run's result (`BenchResult`) and its file: vLLM's keys and meanings
(artifact.serving.results), our per-request arrays, provenance and the client's overhead."""

from __future__ import annotations

import platform
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from artifact import __version__
from artifact.core.io import atomic_write_json
from artifact.core.records import FORMAT, FORMAT_VERSION
from artifact.serving.config import BenchConfig, PromptSpec
from artifact.serving.request import RequestRecord, ServerCapabilities
from artifact.serving.results import summarize

BACKENDS = {"/v1/completions": "openai", "/v1/chat/completions": "openai-chat"}


@dataclass
class BenchResult:
    config: BenchConfig  # with the model resolved
    capabilities: ServerCapabilities
    prompts: list[PromptSpec]
    records: list[RequestRecord]
    warmup: list[RequestRecord]
    duration: float
    date: str
    started_at: str
    label: str = "run"
    repetition: int = 0
    # perf_counter (CLOCK_MONOTONIC on Linux) at the phase start: every time in the file is
    # relative to it, so other processes' monotonic timestamps on the host can be aligned.
    clock_origin: float = 0.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    server_info: dict[str, Any] = field(default_factory=dict)
    # The client process's CPU time during the measured phase (getrusage, all threads).
    cpu_user_s: float = 0.0
    cpu_system_s: float = 0.0

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
    """The client's own cost: the process CPU time of the measured phase, per content chunk,
    and a bound on its share of each TTFT.

    `total_s` = `user_s` + `system_s`: what the operating system counted for the client
    process (every thread: parsing, aiohttp, the event loop, the kernel's socket work) from
    the phase start to its end. `cpu_share`: that over the phase's wall time.

    `busy_share_of_ttft`: for each request, the CPU time of the client's event loop thread
    between its start and its first content chunk (every stream's work, not only its own),
    over its TTFT. The client delays a request's first chunk (its body sent late, the chunk
    read late) only while its loop is busy, so this bounds from above the client share of
    TTFT that benchmarks/bench_client_overhead.py measures from the server's side (start to
    body sent, plus the first chunk's wait in the client). Not covered: the loopback
    transfer and an idle client's wake-up (~0.3 ms, so at one stream that figure can exceed
    this one), and time the client's CPU was taken by other processes of a loaded machine.
    """
    total = result.cpu_user_s + result.cpu_system_s
    chunks = sum(len(r.chunk_times) for r in result.records)
    share = np.asarray(
        [r.cpu_to_first / r.ttft for r in result.records if r.ok and r.ttft > 0] or [0.0]
    )
    return {
        "content_chunks": chunks,
        "total_s": total,
        "user_s": result.cpu_user_s,
        "system_s": result.cpu_system_s,
        "cpu_share": total / result.duration if result.duration > 0 else 0.0,
        "per_chunk_us": total / chunks * 1e6 if chunks else 0.0,
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
