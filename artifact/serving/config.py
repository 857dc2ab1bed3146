"""What a benchmark sends and how: `BenchConfig` (one server's load) and the dataset's prompts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artifact.core.errors import ArtifactError
from artifact.core.io import read_jsonl
from artifact.serving.results import DEFAULT_PERCENTILES

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")
MIXTRAL_TOKENIZER_ID = "mistralai/Mixtral-8x7B-v0.1 (mistral-common tokenizer.model.v1)"


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
        if rate != "inf":
            try:
                rate = float(rate)
            except ValueError:
                raise bad("request_rate", f"{rate!r} is not 'inf' or a number") from None
            if math.isinf(rate) or not rate > 0:
                raise bad("request_rate", "must be 'inf' or a positive number of requests/s")
        object.__setattr__(self, "request_rate", rate)
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
