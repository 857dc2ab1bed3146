"""Routing counts of one forward pass, counted where the expert ids are (the GPU).

A capture inside a timed run must not stop the device per MoE layer: boolean-mask indexing,
`torch.bincount` and `.item()` each wait for the GPU, and in eager mode every extra kernel
launch adds host time to the step. So a layer's hook only keeps a reference to its top-k ids
and notes, on the host, where each token's counts go (layer, phase; the phase from the host's
prompt mask, which also gives the token counts). When the pass ends, `rows` counts every
layer at once on the ids' device (one concatenation, one `index_add_` into an int64
[layers x phases x experts] accumulator) and copies the accumulator to the host: a fixed
handful of operations and one host copy per pass, whatever the number of layers.

On a CUDA device that copy does not wait either: `count` launches it into pinned host memory
behind a CUDA event and returns, so the host goes on queueing the rest of the step (the LM
head, sampling) while the layers still run; `PendingSteps` writes each pass's rows, in order,
once its copy has landed (a later pass's end, or `drain` when the capture stops). Elsewhere
(CPU, or `meta` in the tests) the copy is immediate and the rows are ready at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
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
        self._calls: list[tuple[int, np.ndarray | None, int]] = []  # (layer, mask, tokens)
        self._mask: tuple[np.ndarray, np.ndarray, int] | None = None  # mask, phase * E, prefill

    def add(self, layer: int, ids: Any, prompt_mask: np.ndarray | None) -> None:
        """ids: [tokens, top_k] (any device, left unchanged until `rows`); prompt_mask:
        bool[tokens] on the host, True for prompt tokens, or None when the phase is unknown.
        Host bookkeeping only: no device work, no sync."""
        n = int(ids.shape[0])
        if n == 0:
            return
        if prompt_mask is None:
            self._count(layer, PHASE_CODE["unknown"], n)
        else:
            prefill = self._phases(prompt_mask)[2]
            self._count(layer, PHASE_CODE["prefill"], prefill)
            self._count(layer, PHASE_CODE["decode"], n - prefill)
        self._ids.append(ids if ids.dim() == 2 else ids.reshape(n, -1))
        self._calls.append((layer, prompt_mask, n))

    def _count(self, layer: int, phase: int, n: int) -> None:
        if n:
            self.tokens[(layer, phase)] = self.tokens.get((layer, phase), 0) + n

    def _phases(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(mask, phase * experts per token, prompt tokens), made once per mask: the layers
        of a pass share it."""
        if self._mask is None or self._mask[0] is not mask:
            E = self.num_experts
            offsets = np.where(mask, PHASE_CODE["prefill"] * E, PHASE_CODE["decode"] * E)
            self._mask = (mask, offsets.astype(np.int64), int(np.count_nonzero(mask)))
        return self._mask

    def count(self, step: int) -> CountedPass:
        """The pass's counting on the device and its one copy to the host, launched; the
        rows come from the returned pass (on a CUDA device, once its copy has landed)."""
        tokens = sorted(self.tokens.items())
        if not tokens:
            return CountedPass(step, tokens, None, None)
        import torch

        E = self.num_experts
        unknown = PHASE_CODE["unknown"] * E
        layers, masks, sizes = zip(*self._calls, strict=True)
        phases = [
            np.full(n, unknown, dtype=np.int64) if m is None else self._phases(m)[1]
            for m, n in zip(masks, sizes, strict=True)
        ]
        # each token's slot in the flat [layers x phases x experts] accumulator
        slots = np.repeat(np.array(layers) * len(PHASES) * E, sizes) + np.concatenate(phases)
        ids = self._ids[0] if len(self._ids) == 1 else torch.cat(self._ids)
        # non_blocking: the host-to-device copy does not wait for the device's queue
        offsets = torch.from_numpy(slots[:, None]).to(ids.device, non_blocking=True)
        index = (ids + offsets).reshape(-1)
        acc = torch.zeros(self.num_layers * len(PHASES) * E, dtype=torch.int64, device=ids.device)
        acc.index_add_(0, index, torch.ones_like(index))
        self._ids, self._calls = [], []
        shape = (self.num_layers, len(PHASES), E)
        if acc.device.type != "cuda":
            return CountedPass(step, tokens, acc.to("cpu").numpy().reshape(shape), None)
        host = torch.empty(acc.shape, dtype=acc.dtype, pin_memory=True)
        host.copy_(acc, non_blocking=True)
        landed = torch.cuda.Event()
        landed.record()
        return CountedPass(step, tokens, host.numpy().reshape(shape), landed)


class CountedPass:
    """One pass's counts on their way to the host: `ready()` without waiting, `rows()`."""

    def __init__(self, step: int, tokens: list, counts: np.ndarray | None, landed: Any):
        self.step = step
        self.tokens = tokens  # [((layer, phase), num_tokens)], host-side, known at once
        self._counts = counts  # [layers, phases, experts]; valid once `landed` has passed
        self._landed = landed  # a CUDA event after the copy, or None (already on the host)

    def ready(self) -> bool:
        return self._landed is None or bool(self._landed.query())

    def rows(self) -> list[tuple[int, int, int, int, np.ndarray]]:
        """(step, layer, phase, num_tokens, counts) per (layer, phase) with tokens."""
        if self._landed is not None:
            self._landed.synchronize()
            self._landed = None
        counts = self._counts
        return [
            (self.step, layer, phase, n, counts[layer, phase])  # type: ignore[index]
            for (layer, phase), n in self.tokens
        ]


class PendingSteps:
    """Counted passes not yet written, oldest first: rows leave in step order."""

    def __init__(self) -> None:
        self._passes: deque[CountedPass] = deque()

    def push(self, counted: CountedPass) -> None:
        self._passes.append(counted)

    def ready(self) -> Iterator[list[tuple[int, int, int, int, np.ndarray]]]:
        """The rows of every leading pass whose copy has landed (no wait)."""
        while self._passes and self._passes[0].ready():
            yield self._passes.popleft().rows()

    def drain(self) -> Iterator[list[tuple[int, int, int, int, np.ndarray]]]:
        """The rows of every pass, waiting for the copies still under way."""
        while self._passes:
            yield self._passes.popleft().rows()
