"""Routing counts of one forward pass, counted where the expert ids are (the GPU).

A capture inside a timed run must not stop the device per MoE layer: boolean-mask indexing,
`torch.bincount` and `.item()` each wait for the GPU, and in eager mode every extra kernel
launch adds host time to the step. So a layer's hook only keeps a reference to its top-k ids
and notes, on the host, where each token's counts go (layer, phase; the phase from the host's
prompt mask, which also gives the token counts). When the pass ends, `rows` counts every
layer at once on the ids' device (one concatenation, one `index_add_` into an int64
[layers x phases x experts] accumulator) and copies the accumulator to the host: a fixed
handful of operations and one host copy per pass, whatever the number of layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from artifact.routing.format import PHASE_CODE, PHASES


class PassCounts:
    """One pass's per (layer, phase) token counts (host) and top-k ids (device)."""

    def __init__(self, num_layers: int, num_experts: int):
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.tokens: dict[tuple[int, int], int] = {}  # (layer, phase) -> tokens, host-side
        self._ids: list[Any] = []  # [tokens, top_k] per call, on the device, not yet counted
        self._slots: list[np.ndarray] = []  # per call and token: (layer * phases + phase) * E
        self._phase_slots: tuple[np.ndarray, np.ndarray] | None = None  # (mask, phase * E)

    def add(self, layer: int, ids: Any, prompt_mask: np.ndarray | None) -> None:
        """ids: [tokens, top_k] (any device, left unchanged until `rows`); prompt_mask:
        bool[tokens] on the host, True for prompt tokens, or None when the phase is unknown."""
        n = int(ids.shape[0])
        if n == 0:
            return
        base = layer * len(PHASES) * self.num_experts
        if prompt_mask is None:
            slots = np.full(n, base + PHASE_CODE["unknown"] * self.num_experts, dtype=np.int64)
            self._count(layer, PHASE_CODE["unknown"], n)
        else:
            slots = self._phase_offsets(prompt_mask) + base
            prefill = int(np.count_nonzero(prompt_mask))
            self._count(layer, PHASE_CODE["prefill"], prefill)
            self._count(layer, PHASE_CODE["decode"], n - prefill)
        self._ids.append(ids.reshape(n, -1))
        self._slots.append(slots)

    def _count(self, layer: int, phase: int, n: int) -> None:
        if n:
            self.tokens[(layer, phase)] = self.tokens.get((layer, phase), 0) + n

    def _phase_offsets(self, mask: np.ndarray) -> np.ndarray:
        """phase * experts per token (made once per mask: the layers of a pass share it)."""
        if self._phase_slots is None or self._phase_slots[0] is not mask:
            E = self.num_experts
            offsets = np.where(mask, PHASE_CODE["prefill"] * E, PHASE_CODE["decode"] * E)
            self._phase_slots = (mask, offsets.astype(np.int64))
        return self._phase_slots[1]

    def rows(self, step: int) -> list[tuple[int, int, int, int, np.ndarray]]:
        """(step, layer, phase, num_tokens, counts) per (layer, phase) with tokens, in that
        order: the pass's counting on the device and its one copy to the host."""
        if not self.tokens:
            return []
        import torch

        ids = self._ids[0] if len(self._ids) == 1 else torch.cat(self._ids)
        slots = np.concatenate(self._slots)[:, None]
        # non_blocking: the host-to-device copy does not wait for the device's queue
        index = (ids + torch.from_numpy(slots).to(ids.device, non_blocking=True)).reshape(-1)
        size = self.num_layers * len(PHASES) * self.num_experts
        acc = torch.zeros(size, dtype=torch.int64, device=ids.device)
        acc.index_add_(0, index, torch.ones_like(index))
        counts = acc.to("cpu").numpy().reshape(self.num_layers, len(PHASES), self.num_experts)
        self._ids, self._slots = [], []
        return [
            (step, layer, phase, n, counts[layer, phase])
            for (layer, phase), n in sorted(self.tokens.items())
        ]
