"""Serving-benchmark result files: the summary arithmetic, vLLM-compatible, and its verification.

One result file per run, in the schema of vLLM's `benchmark_serving.py` /
`vllm bench serve --save-result`, with the same keys and meanings, computed as vLLM computes
them (numpy mean/median/std (ddof 0)/percentile with linear interpolation, `x or 0` for an
empty list):

- a request succeeded when its `errors` entry is ""; `completed` counts those;
- `duration`: seconds from the first request of the measured phase to the end of the last;
- `total_input_tokens`: input lengths of successful requests; `total_output_tokens`: sum of
  `output_lens` (0 for a failed request); throughputs are those totals over `duration`;
- TTFT: to the first content chunk; ITL: every gap between consecutive content chunks,
  pooled over successful requests (`itls` keeps them per request); E2EL: to the last content
  chunk; TPOT per request = (e2el - ttft) / (output_len - 1) for output_len > 1;
- goodput (vLLM's `request_goodput`): successful requests meeting every SLO per second; a
  request of one output token counts as TPOT 0.

Our files add `format`/`format_version` and per-request arrays vLLM does not keep (`e2els`,
both output-token counts, start times, finish reasons), so every summary field can be
recomputed from the file alone: `verify_result` does it.

The original study's files came from an older vLLM client and store no per-request latency.
Their TTFT, ITL, token and throughput fields recompute exactly; TPOT does not, and
`estimate_e2els` explains why and by how much.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from artifact.core.errors import ArtifactError
from artifact.core.io import read_json
from artifact.core.records import FORMAT, ResultFile, summary_only, validate_record

METRICS = ("ttft", "tpot", "itl", "e2el")
DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)
GOODPUT_METRICS = ("ttft", "tpot", "e2el")
REL_TOL = 1e-9
# The performance columns of the runs table (ours and the study import), one row per result.
PERF_KEYS = (
    "completed",
    "num_prompts",
    "duration",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "input_throughput",
    "output_throughput",
    "total_token_throughput",
)
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
SUMMARY_STATS = ("mean", "median", "std", "p50", "p90", "p99")
SUMMARY_KEY = re.compile(r"^(mean|median|std|p(\d+(?:\.\d+)?))_(ttft|tpot|itl|e2el)_ms$")


def percentile_word(p: float) -> str:
    """vLLM's spelling of a percentile in a key: 99 -> '99', 99.9 -> '99.9'."""
    return str(int(p)) if float(p).is_integer() else str(p)


def parse_percentiles(text: str) -> list[float]:
    """'50,90,99' -> [50.0, 90.0, 99.0]; each strictly between 0 and 100."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ArtifactError(
                f"metric percentile {part.strip()!r} is not a number (expected e.g. 50,90,99)"
            ) from None
        if not 0 < value < 100:
            raise ArtifactError(f"metric percentile {value:g} must be between 0 and 100")
        values.append(value)
    return values


def parse_goodput(specs: list[str]) -> dict[str, float]:
    """['ttft:500', 'tpot:50'] -> {'ttft': 500.0, 'tpot': 50.0} (milliseconds)."""
    slos: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition(":")
        name = name.strip().lower()
        if not sep or name not in GOODPUT_METRICS:
            raise ArtifactError(
                f"goodput SLO {spec!r} must be NAME:MS, NAME one of {', '.join(GOODPUT_METRICS)}"
            )
        try:
            ms = float(value)
        except ValueError:
            raise ArtifactError(f"goodput SLO {spec!r}: {value!r} is not a number") from None
        if not ms > 0 or math.isinf(ms):
            raise ArtifactError(f"goodput SLO {spec!r} must be a positive number of ms")
        slos[name] = ms
    return slos


def _stats_ms(name: str, values: list[float], percentiles) -> dict[str, float]:
    # `values or 0` is vLLM's: an empty list summarises as 0, not NaN.
    data = values or 0
    out = {
        f"mean_{name}_ms": float(np.mean(data) * 1000),
        f"median_{name}_ms": float(np.median(data) * 1000),
        f"std_{name}_ms": float(np.std(data) * 1000),
    }
    for p in percentiles:
        out[f"p{percentile_word(p)}_{name}_ms"] = float(np.percentile(data, p) * 1000)
    return out


def summarize(
    *,
    duration: float,
    ttfts: list[float],
    itls: list[list[float]],
    output_lens: list[int],
    input_lens: list[int],
    errors: list[str],
    e2els: list[float] | None = None,
    percentiles=DEFAULT_PERCENTILES,
    goodput_slos_ms: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Every summary field of a result file from its per-request arrays (see module doc).

    Without `e2els` (the original study's files) TPOT, E2EL and goodput are left out.
    """
    ok = [e == "" for e in errors]
    completed = sum(ok)
    ttft_ok = [t for t, good in zip(ttfts, ok, strict=True) if good]
    itl_pool = [gap for row, good in zip(itls, ok, strict=True) if good for gap in row]
    total_input = sum(n for n, good in zip(input_lens, ok, strict=True) if good)
    total_output = sum(n for n, good in zip(output_lens, ok, strict=True) if good)
    out: dict[str, Any] = {
        "completed": completed,
        "failed": len(errors) - completed,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": completed / duration,
        "input_throughput": total_input / duration,
        "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
    }
    out.update(_stats_ms("ttft", ttft_ok, percentiles))
    out.update(_stats_ms("itl", itl_pool, percentiles))
    if e2els is None:
        return out
    tpots, all_tpots, e2el_ok = [], [], []
    for i, good in enumerate(ok):
        if not good:
            continue
        tpot = 0.0
        if output_lens[i] > 1:
            tpot = (e2els[i] - ttfts[i]) / (output_lens[i] - 1)
            tpots.append(tpot)
        all_tpots.append(tpot)
        e2el_ok.append(e2els[i])
    out.update(_stats_ms("tpot", tpots, percentiles))
    out.update(_stats_ms("e2el", e2el_ok, percentiles))
    if goodput_slos_ms:
        per_metric = {"ttft": ttft_ok, "tpot": all_tpots, "e2el": e2el_ok}
        chosen = [
            (per_metric[m], goodput_slos_ms[m] / 1000)
            for m in GOODPUT_METRICS
            if m in goodput_slos_ms
        ]
        met = sum(all(values[j] <= slo for values, slo in chosen) for j in range(completed))
        out["request_goodput"] = met / duration
        out["good_completed"] = met
    return out


def close(a: float, b: float, rel: float = REL_TOL) -> bool:
    if a == b:
        return True
    return abs(a - b) <= rel * max(abs(a), abs(b))


# --- reading and checking files ---------------------------------------------------------------


def is_ours(data: dict) -> bool:
    return data.get("format") == FORMAT


def load_result(path: str | Path, *, summary_only_ok: bool = False) -> dict:
    """Read and shape-check one result file (artifact.core.records.ResultFile); any problem
    is one ArtifactError line. Returns the file's JSON as read.

    `summary_only_ok`: a vLLM file without per-request arrays (`summary_only`) is returned
    as read too, for showing its stored summaries; nothing in it can be recomputed."""
    path = Path(path)
    data = read_json(path)
    if not (summary_only_ok and summary_only(data)):
        validate_record(data, ResultFile, path)
    return data


def file_percentiles(data: dict) -> list[float]:
    """The percentiles a file reports: its own list, plus every p<x> summary key present."""
    found = {float(p) for p in data.get("percentiles") or []}
    for key in data:
        m = SUMMARY_KEY.match(key)
        if m and m.group(2):
            found.add(float(m.group(2)))
    return sorted(found)


def summarize_file(
    data: dict,
    *,
    e2els: list[float] | None = None,
    percentiles=(),
    goodput_slos_ms: dict[str, float] | None = None,
) -> dict[str, Any]:
    """`summarize` over a result file's own per-request arrays."""
    return summarize(
        duration=data["duration"],
        ttfts=data["ttfts"],
        itls=data["itls"],
        output_lens=data["output_lens"],
        input_lens=data["input_lens"],
        errors=data["errors"],
        e2els=e2els,
        percentiles=percentiles,
        goodput_slos_ms=goodput_slos_ms,
    )


def recompute(data: dict, *, e2els: list[float] | None = None) -> dict[str, Any]:
    """Summary fields recomputed from the file's arrays (its own `e2els` when it has them)."""
    if e2els is None and is_ours(data):
        e2els = data["e2els"]
    return summarize_file(
        data,
        e2els=e2els,
        percentiles=file_percentiles(data),
        goodput_slos_ms=(data.get("goodput") or {}).get("slos_ms"),
    )


def itls_include_first_token(data: dict) -> bool:
    """True for files whose `itls[i][0]` is the time to the first chunk, not a decode gap.

    The vLLM client that wrote the original trace_collection appended a gap for the first
    chunk too (measured from the request start), then took TTFT with a second clock read a
    few microseconds later; so itls[i][0] is TTFT minus at most a few microseconds.
    """
    seen = False
    for ttft, row, err in zip(data["ttfts"], data["itls"], data["errors"], strict=True):
        if err or not row or ttft <= 0:
            continue
        seen = True
        if not 0 <= ttft - row[0] < 1e-3:
            return False
    return seen


def estimate_e2els(data: dict) -> list[float]:
    """Per-request end-to-end latency to the last content chunk, rebuilt from TTFT and ITLs.

    Why this need not reproduce a vLLM file's own TPOT: the file stores neither the
    per-request latency its TPOT came from nor when that latency ended. Its TPOT is
    (t_end - ttft)/(n-1); the stored ITLs end at the last chunk the client recorded, so the
    estimate is smaller by (t_end - t_last_recorded)/(n-1), which the original study's files
    show (their ITLs end at the last chunk with text):

    - requests that stop at max_tokens: the load-imbalance runs (every request hits
      max_tokens) differ by 1-3e-6 relative;
    - requests that stop on EOS (the EOS token comes as a chunk without text): the
      trace_collection runs (ShareGPT prompts, natural stops) show mean TPOT 0.5-1.7% lower,
      median 0-0.6% lower and p99 up to 9% lower than stored, always lower, largest where
      few tokens share the extra step.
    """
    first = itls_include_first_token(data)
    out = []
    for ttft, row in zip(data["ttfts"], data["itls"], strict=True):
        out.append(float(sum(row)) if first else ttft + float(sum(row)))
    return out


@dataclass
class VerifyReport:
    path: Path
    checked: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    # Fields present but not recomputable from the file (the original study's TPOT).
    unverifiable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _compare(report: VerifyReport, key: str, stored: Any, value: Any) -> None:
    report.checked.append(key)
    if isinstance(stored, bool) or not isinstance(stored, int | float):
        report.mismatches.append(f"{key}: stored {stored!r} is not a number")
    elif not close(float(stored), float(value)):
        rel = abs(stored - value) / max(abs(stored), abs(value))
        report.mismatches.append(
            f"{key}: stored {stored!r}, recomputed {value!r} (relative difference {rel:.3g})"
        )


def verify_result(data: dict, path: str | Path) -> VerifyReport:
    """Recompute every summary field of a checked result and compare (1e-9 relative)."""
    report = VerifyReport(Path(path))
    ours = is_ours(data)
    values = recompute(data)
    for key, value in values.items():
        if key in data:
            _compare(report, key, data[key], value)
        elif ours and key not in ("good_completed",):
            report.mismatches.append(f"{key}: missing (recomputed {value!r})")
    if ours and "goodput" in data and data["goodput"]:
        stored_good = data["goodput"].get("good_completed")
        if stored_good != values.get("good_completed"):
            report.mismatches.append(
                f"goodput.good_completed: stored {stored_good!r}, "
                f"recomputed {values.get('good_completed')!r}"
            )
    for key in data:
        if SUMMARY_KEY.match(key) and key not in values:
            report.unverifiable.append(key)
    if ours:
        _check_arrays(data, report)
    elif report.unverifiable:
        est = recompute(data, e2els=estimate_e2els(data))
        rel = {
            k: (est[k] - data[k]) / data[k]
            for k in report.unverifiable
            if k in est and isinstance(data[k], int | float) and data[k]
        }
        # Only what the numbers show: a larger stored value means a later end of latency.
        later = any(r < -1e-6 for r in rel.values())
        report.notes.append(
            "the file stores no per-request e2e latency, so "
            + ", ".join(report.unverifiable)
            + " cannot be recomputed exactly; estimated as TTFT + its ITLs (to the last chunk "
            "the file records): "
            + ", ".join(f"{k} {100 * r:+.3f}%" for k, r in rel.items())
            + (
                "; stored values are larger: its client's latency ended after that chunk"
                if later
                else ""
            )
        )
    return report


def _check_arrays(data: dict, report: VerifyReport) -> None:
    """Internal consistency of our per-request arrays."""
    n = len(data["errors"])
    if data.get("num_prompts") != n:
        report.mismatches.append(
            f"num_prompts: stored {data.get('num_prompts')!r}, the arrays have {n} requests"
        )
    usage = data.get("output_lens_usage") or [None] * n
    retok = data.get("output_lens_retokenized") or [None] * n
    for i in range(n):
        ok = data["errors"][i] == ""
        want = (usage[i] if usage[i] is not None else retok[i]) if ok else 0
        if data["output_lens"][i] != want:
            report.mismatches.append(
                f"output_lens[{i}]: {data['output_lens'][i]!r}, expected {want!r} "
                "(usage count when reported, else re-tokenized; 0 when failed)"
            )
        if ok:
            ttft, e2el = data["ttfts"][i], data["e2els"][i]
            rebuilt = ttft + math.fsum(data["itls"][i])
            if not close(rebuilt, e2el):
                report.mismatches.append(
                    f"e2els[{i}]: {e2el!r} but ttft + sum(itls) = {rebuilt!r} "
                    "(E2EL must end at the last content chunk)"
                )
    report.checked.append("per-request arrays")


def verify_result_file(path: str | Path) -> list[str]:
    """Mismatches between a result file's summary fields and its own arrays ([] when none)."""
    data = load_result(path)
    return verify_result(data, path).mismatches
