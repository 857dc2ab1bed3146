"""Routing capture for transformers MoE models: forward hooks on every top-k router.

Per forward pass the recorder writes, for each MoE layer, the number of tokens and the
per-expert counts of the top-k choice into a moe-routing log (artifact.routing.format), split by
phase: prompt tokens (prefill) and generated tokens fed back (decode). A router's hook only
keeps its ids; the pass's end counts them on the device and copies the counts to the host once,
without waiting for the device (artifact.routing.counting): no host sync per layer or per pass.

How prompt and generated tokens are told apart under continuous batching: transformers'
`ContinuousBatchingIOs.prepare_batch_tensors` lays the pass out request by request; for each
request it knows the position offset already in the cache, the query length of this pass and
the prompt length. A token at position < prompt length is a prompt token, any other is a
generated token being fed back. `install_batch_layout_probe` wraps that method (at runtime,
in our own server process; transformers' source is not modified) to publish this layout for
the next forward pass. Outside continuous batching (offline replay) every token of a pass is
a prompt token. Passes without a published layout (the engine's warm-up passes) are counted
and skipped. Padding tokens (static shapes) lie past the published length and are ignored.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from artifact.routing.counting import PassCounts, PendingSteps
from artifact.routing.format import PHASES, RoutingHeader, RoutingWriter

if TYPE_CHECKING:
    from torch.nn import Module
    from torch.utils.hooks import RemovableHandle

_layout_local = threading.local()
_probe_installed = False


@dataclass
class PassLayout:
    """For one forward pass: which of its (unpadded) tokens are prompt tokens."""

    prompt_mask: np.ndarray  # bool[num_tokens]


def _publish_layout(requests_in_batch) -> None:
    masks = []
    for future_state in requests_in_batch:
        state = future_state.state
        past = state.position_offset
        query = future_state.query_length
        # _true_initial_tokens survives a soft reset (offloading), initial_tokens may not.
        prompt_len = getattr(state, "_true_initial_tokens", 0) or len(state.initial_tokens)
        positions = np.arange(past, past + query)
        masks.append(positions < prompt_len)
    mask = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
    _layout_local.pending = PassLayout(prompt_mask=mask)


def install_batch_layout_probe() -> None:
    """Wrap transformers' continuous-batching batch preparation to publish pass layouts."""
    global _probe_installed
    if _probe_installed:
        return
    from transformers.generation.continuous_batching.input_outputs import ContinuousBatchingIOs

    original = ContinuousBatchingIOs.prepare_batch_tensors

    @functools.wraps(original)
    def prepare_batch_tensors(self, requests_in_batch, *args, **kwargs):
        _publish_layout(requests_in_batch)  # before the call: it advances position_offset
        return original(self, requests_in_batch, *args, **kwargs)

    # the deliberate runtime wrap the module docstring describes
    ContinuousBatchingIOs.prepare_batch_tensors = prepare_batch_tensors  # type: ignore[method-assign]
    _probe_installed = True


def find_routers(model: Module) -> list[tuple[str, Module]]:
    """(name, module) of every top-k router, in layer order."""
    routers = []
    for name, module in model.named_modules():
        if type(module).__name__.endswith("TopKRouter") and hasattr(module, "top_k"):
            routers.append((name, module))
    if not routers:
        raise ValueError(f"no MoE top-k routers found in {type(model).__name__}")
    return routers


class RoutingRecorder:
    """Hooks every router of `model`; writes one step per forward pass to the current log.

    `prefill_only=True` treats every pass as prompt tokens (offline replay without a
    continuous-batching layout).
    """

    def __init__(self, model, *, source: str, prefill_only: bool = False, meta: dict | None = None):
        self.model = model
        self.routers = find_routers(model)
        self.layer_index = {id(m): i for i, (_, m) in enumerate(self.routers)}
        config = model.config.get_text_config()
        self.num_experts = int(config.num_local_experts)
        self.top_k = int(config.num_experts_per_tok)
        self.source = source
        self.prefill_only = prefill_only
        self.meta = meta or {}
        self._lock = threading.Lock()
        self._writer: RoutingWriter | None = None
        self._counts: PassCounts | None = None
        self._unwritten = PendingSteps()  # counted passes whose copy to the host may be under way
        self._routed = False  # a router ran in this pass
        self._all_prompt = np.ones(0, dtype=bool)  # offline replay's mask, reused across layers
        self._layout: PassLayout | None = None
        self._handles: list[RemovableHandle] = []
        self.step = 0
        self.skipped_passes = 0
        self.tokens_recorded = {"prefill": 0, "decode": 0}

    # --- lifecycle -----------------------------------------------------------------------
    def attach(self) -> RoutingRecorder:
        top = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model
        self._handles.append(top.register_forward_pre_hook(self._begin_pass))
        self._handles.append(top.register_forward_hook(self._end_pass))
        for _, module in self.routers:
            self._handles.append(module.register_forward_hook(self._on_router))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.stop()

    def start(self, path: str | Path, meta: dict | None = None) -> None:
        """Write the following passes to a new log at `path` (closing any current one)."""
        header = RoutingHeader(
            num_experts=self.num_experts,
            top_k=self.top_k,
            num_layers=len(self.routers),
            layer_names=tuple(name for name, _ in self.routers),
            source=self.source,
            meta={**self.meta, **(meta or {})},
        )
        with self._lock:
            self._close_writer()
            self._writer = RoutingWriter(path, header)
            self.step = 0
            self.skipped_passes = 0
            self.tokens_recorded = {"prefill": 0, "decode": 0}

    def stop(self) -> dict:
        with self._lock:
            self._close_writer()
            return self.stats()

    def _close_writer(self) -> None:
        """Writes the passes still on their way to the host, then closes the log."""
        if self._writer is not None:
            for rows in self._unwritten.drain():
                self._writer.write_step(rows)
            self._writer.close()
            self._writer = None

    def stats(self) -> dict:
        return {
            "steps": self.step,
            "skipped_passes": self.skipped_passes,
            "tokens": dict(self.tokens_recorded),
        }

    # --- hooks ---------------------------------------------------------------------------
    def _begin_pass(self, module, args, kwargs=None) -> None:
        self._layout = getattr(_layout_local, "pending", None)
        _layout_local.pending = None
        self._counts = PassCounts(len(self.routers), self.num_experts)
        self._routed = False

    def _on_router(self, module, inputs, output) -> None:
        if self._writer is None or self._counts is None:
            return
        self._routed = True
        layout = self._layout
        if layout is None and not self.prefill_only:
            return  # a warm-up pass of the engine (counted as skipped when it ends)
        indices = output[-1].detach()  # (router_logits, scores, indices[num_tokens, top_k])
        indices = indices.reshape(-1, indices.shape[-1])
        if layout is None:  # offline replay: every token is a prompt token
            if self._all_prompt.size != indices.shape[0]:
                self._all_prompt = np.ones(indices.shape[0], dtype=bool)
            mask = self._all_prompt
        else:  # padding lies past the published tokens
            mask = layout.prompt_mask
            indices = indices[: mask.size]
        # counted on the device when the pass ends, with one host copy (none per layer)
        self._counts.add(self.layer_index[id(module)], indices, mask)

    def _end_pass(self, module, inputs, output) -> None:
        with self._lock:
            counts, self._counts = self._counts, None
            if self._writer is None or counts is None or not self._routed:
                return
            if self._layout is None and not self.prefill_only:
                self.skipped_passes += 1  # warm-up pass of the engine, not a request
                return
            counted = counts.count(self.step)
            for (layer, phase), ntok in counted.tokens:
                if layer == 0:
                    self.tokens_recorded[PHASES[phase]] += ntok
            self._unwritten.push(counted)
            for rows in self._unwritten.ready():
                self._writer.write_step(rows)
            self.step += 1
