"""vLLM general plugin: per-rank, per-step, per-layer expert routing in moe-routing logs.

vLLM loads every `vllm.general_plugins` entry point once in each of its processes (API
server, engine cores, workers). `register` does nothing unless the server was started with
`MOE_ARTIFACT_ROUTING_CONTROL` (the vLLM engine sets it), so an image with the artifact
installed serves unchanged otherwise. When asked, it wraps, without changing vLLM's source:

- `FusedMoE.select_experts` (a staticmethod returning `(topk_weights, topk_ids)` before 0.11
  and `(topk_weights, topk_ids, zero_expert_result)` at 0.11): reads the ids, returns the
  result untouched;
- `FusedMoE.forward_impl` (and `forward_impl_chunked`): which layer is running and how many
  tokens this rank brought to it (before the all2all dispatch gathers the others');
- the model runner's `execute_model` and `_dummy_run`: step boundaries (one record block per
  step, flushed), and which passes are the dummy batches an idle data-parallel rank runs.

Hooks need eager execution (`--enforce-eager`): CUDA graphs would replay kernels without
running Python. See `hooks.py` for what each rank records.
"""

from __future__ import annotations

import logging
import os

CONTROL_ENV = "MOE_ARTIFACT_ROUTING_CONTROL"

# Under `vllm.`: vLLM's own handler prints it (with the process tag) into the server log.
logger = logging.getLogger("vllm.moe_artifact_routing")


def register() -> None:
    """Entry point (group `vllm.general_plugins`); idempotent, never raises into vLLM."""
    if not os.environ.get(CONTROL_ENV):
        return
    try:
        from artifact.engines.vllm.plugin.hooks import install

        install()
    except Exception as exc:  # a broken capture must not take the server down
        logger.warning("moe-artifact routing plugin not installed: %s", exc)
