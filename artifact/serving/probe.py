"""The readiness probe: before the measured phase, learn what the server accepts.

Health, model list and one short streamed request; a field the server rejects (such as
`ignore_eos` on `transformers serve`) is dropped and recorded. The probe counts in no metric.
"""

from __future__ import annotations

import dataclasses

import aiohttp

from artifact.core.errors import ArtifactError
from artifact.serving.config import BenchConfig, PromptSpec
from artifact.serving.request import (
    RequestRecord,
    ServerCapabilities,
    one_line,
    request_body,
    stream_request,
)

# Request fields a server may reject; the probe drops each one that it names in a 4xx reply.
OPTIONAL_FIELDS = ("ignore_eos", "stream_options")
PROBE_TIMEOUT_S = 60.0


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
                f"cannot reach the server at {base}: {one_line(str(exc)) or type(exc).__name__}"
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
        body = request_body(probe_config, model, prompt, 2, 0, caps)
        await stream_request(session, probe_config, body, rec)
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
