"""Routing counts of one forward pass, accumulated where the expert ids are (the GPU).

A capture inside a timed run must not stop the device per MoE layer: boolean-mask indexing,
`torch.bincount` and `.item()` each wait for the GPU. Here every layer adds its top-k ids into
one int64 accumulator [layers x phases x experts] with `index_add_` (no host sync); the phase of
each token comes from a host-side prompt mask (also the source of the token counts), sent to
the device once per pass. `rows` copies the accumulator to the host once per pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from artifact.routing.format import PHASE_CODE, PHASES


class PassCounts:
    """One pass's per (layer, phase) token counts (host) and expert counts (device)."""

    def __init__(self, num_layers: int, num_experts: int):
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.tokens: dict[tuple[int, int], int] = {}  # (layer, phase) -> tokens, host-side
        self._acc: Any = None
        self._offsets: tuple[np.ndarray, Any] | None = None  # (mask, device phase offsets)

    def add(self, layer: int, ids: Any, prompt_mask: np.ndarray | None) -> None:
        """ids: [tokens, top_k] (any device); prompt_mask: bool[tokens] on the host, True for
        prompt tokens, or None when the phase is unknown."""
        import torch

        n = int(ids.shape[0])
        if n == 0:
            return
        flat = ids.reshape(n, -1)
        if self._acc is None:
            size = self.num_layers * len(PHASES) * self.num_experts
            self._acc = torch.zeros(size, dtype=torch.int64, device=flat.device)
        index = flat.to(torch.int64) + layer * len(PHASES) * self.num_experts  # a new tensor
        if prompt_mask is None:
            index += PHASE_CODE["unknown"] * self.num_experts
            self._count(layer, PHASE_CODE["unknown"], n)
        else:
            index += self._phase_offsets(prompt_mask, flat.device)
            prefill = int(np.count_nonzero(prompt_mask))
            self._count(layer, PHASE_CODE["prefill"], prefill)
            self._count(layer, PHASE_CODE["decode"], n - prefill)
        index = index.reshape(-1)
        self._acc.index_add_(0, index, torch.ones_like(index))

    def _count(self, layer: int, phase: int, n: int) -> None:
        if n:
            self.tokens[(layer, phase)] = self.tokens.get((layer, phase), 0) + n

    def _phase_offsets(self, mask: np.ndarray, device: Any) -> Any:
        """phase * experts per token, [tokens, 1] on `device` (built once per mask)."""
        if self._offsets is None or self._offsets[0] is not mask:
            import torch

            E = self.num_experts
            codes = np.where(mask, PHASE_CODE["prefill"] * E, PHASE_CODE["decode"] * E)
            # non_blocking: a host-to-device copy that does not wait for the device's queue
            offsets = torch.from_numpy(codes.astype(np.int64)[:, None]).to(
                device, non_blocking=True
            )
            self._offsets = (mask, offsets)
        return self._offsets[1]

    def rows(self, step: int) -> list[tuple[int, int, int, int, np.ndarray]]:
        """(step, layer, phase, num_tokens, counts) per (layer, phase) with tokens, in that
        order: the pass's one copy to the host."""
        if not self.tokens:
            return []
        shape = (self.num_layers, len(PHASES), self.num_experts)
        counts = self._acc.to("cpu").numpy().reshape(shape)
        return [
            (step, layer, phase, n, counts[layer, phase])
            for (layer, phase), n in sorted(self.tokens.items())
        ]
