"""Offline routing replay: run the model over texts without a server and record the routing.

Each text is tokenized as the server does (the model's own tokenizer, with BOS) and run as
one forward pass on its own, so every token is a prompt token. Used to check that the
prompt-token routing a server captured equals the model's routing of the same prompts.
"""

from __future__ import annotations

from pathlib import Path

from artifact.engines.transformers.attention import use_shape_independent_attention
from artifact.engines.transformers.routing_capture import RoutingRecorder


def load_model(model_dir: str | Path, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer); choose the experts implementation with set_experts_implementation."""
    import torch

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    use_shape_independent_attention()  # the server's attention kernels (and no graph builds)
    logging.disable_progress_bar()  # a bar per load in the bench stage's output
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=getattr(torch, dtype), device_map=device
    )
    return model.eval(), AutoTokenizer.from_pretrained(str(model_dir))


def replay(
    model,
    tokenizer,
    texts: list[str],
    log_path: str | Path,
    meta: dict | None = None,
) -> dict:
    """Write the routing of `texts` (one pass per text) to a moe-routing log; return stats."""
    import torch

    recorder = RoutingRecorder(
        model, source="offline-replay", prefill_only=True, meta=meta
    ).attach()
    recorder.start(log_path)
    try:
        with torch.inference_mode():
            for text in texts:
                ids = tokenizer(text, return_tensors="pt")["input_ids"].to(model.device)
                model(input_ids=ids, use_cache=False)
        return recorder.stats()
    finally:
        recorder.detach()
