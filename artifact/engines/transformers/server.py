"""The embedded engine's server process: `transformers serve` plus routing capture.

    python -m artifact.engines.transformers.server --model DIR --port P \
        --experts-implementation grouped_mm --max-num-seqs 8 --max-num-batched-tokens 1024

Runs transformers' own `Serve` (FastAPI, OpenAI-compatible, continuous batching) in this
process so the MoE routers can be hooked, and adds two routes:

- GET  /artifact/provenance: what is really running, read from the live objects (versions,
  experts implementation in the model config, grouped-GEMM path, attention implementation,
  device, dtype, continuous-batching limits as configured and as the live scheduler holds
  them, the hooked routers);
- POST /artifact/routing {"path": FILE | null, "meta": {...}}: write the routing of the
  following forward passes to FILE (a new moe-routing log), or stop and return the stats.
  Only with the engine's token (header X-Moe-Artifact-Token, else 403), and only to a FILE
  inside the capture folder the engine named (else 400): $MOE_ARTIFACT_CONTROL_TOKEN and
  $MOE_ARTIFACT_CAPTURE_DIR, passed by environment so no other user sees them in `ps`.

Continuous-batching settings forced here, and why: prefix sharing off (a shared prefix would
skip prompt tokens, so the routing of repeated prompts would be incomplete); async batching
off (batch N+1 is prepared while N runs, which would misalign the pass layout); CUDA graphs
off (a replayed graph runs no Python forward hooks, so the routers' choices would go unseen;
vLLM's `--enforce-eager` for the same reason). cuDNN's attention kernel off (it builds a
graph per new attention shape, tens of ms on a GPU; see `artifact.engines.transformers.attention`).

Streamed text: transformers' streamers decode incrementally with tokenizers' `DecodeStream`,
which raises "Invalid prefix encountered while decoding stream" on some byte-fallback token
sequences (the Llama decoder strips a leading space, so a sliding prefix can decode
differently); a seeded model's random tokens hit it within a few hundred requests and the
request fails. `install_tolerant_decode_stream` swaps in a stream that uses `DecodeStream`
and, from the token where it raises, decodes the whole sequence instead (in this process
only; transformers and tokenizers are not modified).
SIGTERM or SIGINT stop the server gracefully and close the routing log; so does the death
of the process that started it (artifact.engines.lifeline). A port it cannot bind (taken by
another process) makes it exit at once, with exit code 3.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

from artifact.core.errors import ArtifactError
from artifact.core.io import resolve_within
from artifact.engines.base import CAPTURE_DIR_ENV, CONTROL_TOKEN_ENV, CONTROL_TOKEN_HEADER
from artifact.engines.lifeline import watch_parent
from artifact.engines.transformers.attention import sdpa_kernels, use_shape_independent_attention

BIND_FAILED = 3  # exit code: the HTTP server could not start (uvicorn logged why)

# The study's knobs -> transformers' continuous-batching config (documented in README).
KNOB_MAP = {
    "max_num_seqs": "max_requests_per_batch",
    "max_num_batched_tokens": "max_batch_tokens",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="artifact.engines.transformers.server")
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--experts-implementation", required=True)
    p.add_argument("--max-num-seqs", type=int, required=True)
    p.add_argument("--max-num-batched-tokens", type=int, required=True)
    p.add_argument("--num-blocks", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def install_tolerant_decode_stream() -> None:
    """Make `tokenizers.decoders.DecodeStream`, as the serving streamers import it, fall back
    to full decoding where the incremental decoder fails (see the module docstring)."""
    import tokenizers.decoders

    native = tokenizers.decoders.DecodeStream
    if getattr(native, "_artifact_tolerant", False):
        return

    class TolerantDecodeStream:
        _artifact_tolerant = True

        def __init__(self, ids=None, skip_special_tokens: bool = False):
            self._ids = list(ids or [])
            self._skip = skip_special_tokens
            self._stream: tokenizers.decoders.DecodeStream | None = native(
                self._ids, skip_special_tokens=skip_special_tokens
            )
            self._emitted = ""

        def step(self, tokenizer, token_id: int) -> str | None:
            self._ids.append(token_id)
            if self._stream is not None:
                try:
                    piece = self._stream.step(tokenizer, token_id)
                except Exception:  # tokenizers raises a bare Exception here
                    self._stream = None
                else:
                    self._emitted += piece or ""
                    return piece
            text = tokenizer.decode(self._ids, skip_special_tokens=self._skip)
            if text.endswith("\ufffd"):
                return None  # an incomplete UTF-8 sequence: wait for its next byte
            # What was streamed cannot be taken back: send what lies past it.
            piece = text[len(self._emitted) :]
            self._emitted = text if len(text) > len(self._emitted) else self._emitted
            return piece or None

    # the deliberate runtime swap the module docstring describes
    tokenizers.decoders.DecodeStream = TolerantDecodeStream  # type: ignore[misc, assignment]


def grouped_mm_path(model) -> str:
    """Which grouped GEMM transformers' `grouped_mm` experts would call on this model."""
    import torch

    from transformers.integrations import moe

    weight = next(p for n, p in model.named_parameters() if "experts" in n)
    probe = torch.zeros(1, weight.shape[-1], dtype=weight.dtype, device=weight.device)
    offs = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    if not moe._can_use_grouped_mm(probe, weight, offs):
        return "transformers fallback (per-group loop)"
    return (
        "torch.nn.functional.grouped_mm"
        if hasattr(torch.nn.functional, "grouped_mm")
        else "torch._grouped_mm"
    )


def live_provenance(serve, model, recorder, args) -> dict:
    import torch

    config = model.config.get_text_config()
    cb_config = serve._generation_state._cb_config
    live = {}
    manager = getattr(serve._generation_state, "_cb_manager", None)
    cb = getattr(manager, "_cb", None) if manager is not None else None
    processor = getattr(cb, "batch_processor", None) if cb is not None else None
    if processor is not None:
        live = {
            "max_batch_tokens": int(processor.max_batch_tokens),
            "max_requests_per_batch": int(processor.scheduler.max_requests_per_batch),
            "num_blocks": int(processor.cache.num_blocks),
        }
    return {
        "engine": "transformers",
        "versions": {
            "transformers": metadata.version("transformers"),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        "model": str(args.model),
        "architecture": type(model).__name__,
        "num_layers": int(config.num_hidden_layers),
        "num_experts": int(config.num_local_experts),
        "top_k": int(config.num_experts_per_tok),
        "experts_implementation": model.config._experts_implementation,
        "grouped_mm_path": grouped_mm_path(model),
        "attn_implementation": model.config._attn_implementation,
        "sdpa_kernels": sdpa_kernels(),
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "continuous_batching": {
            "configured": {
                "max_batch_tokens": cb_config.max_batch_tokens,
                "max_requests_per_batch": cb_config.max_requests_per_batch,
                "allow_block_sharing": cb_config.allow_block_sharing,
                "use_async_batching": cb_config.use_async_batching,
                "use_cuda_graph": cb_config.use_cuda_graph,
                "num_blocks": cb_config.num_blocks,
            },
            # Filled in once the first request has created the batching manager.
            "live": live,
        },
        "routers_hooked": len(recorder.routers),
    }


def capture_target(path: object, folder: str | None) -> Path:
    """The routing log a control request names, if it lies inside `folder`; else ValueError."""
    if not folder:
        raise ValueError(f"routing capture is off: ${CAPTURE_DIR_ENV} names no folder")
    if not isinstance(path, str) or not path:
        raise ValueError("'path' must be a file name or null")
    target = resolve_within(path, folder)
    if target is None:
        raise ValueError(f"{path!r} is not inside the capture folder {folder}")
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    watch_parent(os.getppid())
    import torch
    from fastapi import Body, FastAPI, Header, HTTPException

    from artifact.engines.transformers.routing_capture import (
        RoutingRecorder,
        install_batch_layout_probe,
    )
    from transformers.cli.serve import Serve

    torch.manual_seed(args.seed)
    use_shape_independent_attention()
    install_batch_layout_probe()
    install_tolerant_decode_stream()
    # Serve tries every processor class and hides why each failed; loading the tokenizer here
    # first makes a broken tokenizer install fail with its own error in the server log.
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(args.model)
    serve = Serve(
        force_model=args.model,
        continuous_batching=True,
        device=args.device,
        dtype=args.dtype,
        cb_max_batch_tokens=args.max_num_batched_tokens,
        cb_num_blocks=args.num_blocks,
        host=args.host,
        port=args.port,
        log_level="info",
        default_seed=args.seed,
        non_blocking=True,
    )
    # The HTTP server is up, but nothing is sent to it before /artifact/provenance answers,
    # which is registered only after the settings below are in place.
    cb_config = serve._generation_state._cb_config
    if cb_config is None:  # Serve builds one from the cb_* arguments given above
        raise ArtifactError("transformers' Serve made no continuous-batching config")
    cb_config.max_requests_per_batch = args.max_num_seqs
    cb_config.allow_block_sharing = False
    cb_config.use_async_batching = False
    cb_config.use_cuda_graph = False
    (timed_model,) = serve._model_manager.loaded_models.values()
    model = timed_model.model
    model.set_experts_implementation(args.experts_implementation)
    recorder = RoutingRecorder(
        model,
        source="transformers-hooks",
        meta={"experts_implementation": args.experts_implementation},
    )
    recorder.attach()

    app = serve.server.config.app
    if not isinstance(app, FastAPI):
        raise ArtifactError(f"transformers' Serve runs {type(app).__name__}, not a FastAPI app")

    def provenance() -> dict:
        return live_provenance(serve, model, recorder, args)

    token = os.environ.get(CONTROL_TOKEN_ENV, "")
    capture_dir = os.environ.get(CAPTURE_DIR_ENV)

    def routing(
        body: dict = Body(...),  # noqa: B008 - FastAPI's idiom
        given: str = Header("", alias=CONTROL_TOKEN_HEADER),
    ) -> dict:
        if not token or not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(403, f"routing control needs the engine's {CONTROL_TOKEN_HEADER}")
        path = body.get("path")
        if path is None:
            return recorder.stop()
        try:
            target = capture_target(path, capture_dir)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        recorder.start(target, meta=body.get("meta") or {})
        return {"recording": str(target)}

    app.add_api_route("/artifact/routing", routing, methods=["POST"])
    app.add_api_route("/artifact/provenance", provenance, methods=["GET"])
    print("artifact: routing capture and provenance routes ready", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # A timed wait. With an untimed one, every server on an H100/H200 ran out the 15 s grace
    # and was killed (on CPU they stopped at once); likely the signal landed on one of CUDA's
    # threads, and the main thread's lock wait never woke to run the handler. Now ~1 s.
    while not stop.wait(timeout=0.5):
        if not serve._thread.is_alive():  # uvicorn could not bind, or crashed
            print("artifact: the HTTP server stopped; exiting", flush=True)
            recorder.detach()
            os._exit(BIND_FAILED)
    print("artifact: stopping", flush=True)
    t0 = time.perf_counter()
    recorder.detach()  # closes the routing log first: nothing recorded is lost
    serve.server.should_exit = True  # uvicorn stops accepting and finishes open responses
    serve._thread.join(timeout=10)
    serve._generation_state.shutdown()
    print(f"artifact: stopped in {time.perf_counter() - t0:.2f} s", flush=True)
    # Everything is flushed and closed; skip the interpreter's slow teardown of torch threads.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
