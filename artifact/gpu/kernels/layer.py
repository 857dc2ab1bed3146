"""One Mixtral MoE layer (SwiGLU experts, top-k routing) and its implementations.

Weights are in the engine's layout (transformers' MixtralExperts): `w13` (E, 2I, H) holds
each expert's gate rows then up rows, `w2` (E, H, I) its down projection. An implementation
is a callable `(x (T, H), ids (T, k), weights (T, k) float32) -> (T, H)` made by a factory
from the weights; an id outside 0..E-1 marks an assignment to an expert held elsewhere (an
EP shard), which contributes nothing.

- `loop`: a loop over experts in torch (this project's; run on float64 copies of the
  inputs it is the reference every implementation is checked against);
- `grouped_mm`: assignments sorted by expert, one `torch._grouped_mm` per projection;
- `hf-eager`, `hf-grouped_mm`, `hf-batched_mm`: the engine's experts implementations
  (transformers' MixtralExperts with `_experts_implementation` set);
- `triton`: this project's fused kernel (artifact.gpu.kernels.triton_moe).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from artifact.core.errors import ArtifactError
from artifact.engines.transformers.engine import EXPERTS_IMPLEMENTATIONS

MoEFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MoEShape:
    hidden: int = 4096
    intermediate: int = 14336
    experts: int = 8
    top_k: int = 2

    @classmethod
    def parse(cls, text: str) -> MoEShape:
        """`H,I,E,K`, e.g. 4096,14336,8,2 (Mixtral-8x7B)."""
        try:
            hidden, intermediate, experts, top_k = (int(v) for v in text.split(","))
        except ValueError:
            raise ArtifactError(
                f"shape {text!r}: expected hidden,intermediate,experts,top_k (four integers)"
            ) from None
        if min(hidden, intermediate, experts, top_k) < 1 or top_k > experts:
            raise ArtifactError(f"shape {text!r}: sizes must be >= 1 and top_k <= experts")
        return cls(hidden, intermediate, experts, top_k)

    def describe(self) -> str:
        return f"{self.hidden},{self.intermediate},{self.experts},{self.top_k}"

    def flops(self, tokens: int) -> float:
        """Multiply-adds x 2 of the three projections over tokens*top_k assignments."""
        return 6.0 * tokens * self.top_k * self.hidden * self.intermediate

    def min_bytes(self, tokens: int, active_experts: float, itemsize: int) -> float:
        """Each active expert's weights read once, the tokens read once, the output written."""
        expert = 3 * self.hidden * self.intermediate
        return (active_experts * expert + 2 * tokens * self.hidden) * itemsize


MIXTRAL_8X7B = MoEShape()


@dataclass
class MoEWeights:
    w13: torch.Tensor  # (E, 2I, H)
    w2: torch.Tensor  # (E, H, I)

    @classmethod
    def seeded(cls, shape: MoEShape, seed: int, device, dtype) -> MoEWeights:
        """Normal weights scaled by 1/sqrt(fan-in), so activations stay near unit size."""
        gen = torch.Generator(device=device).manual_seed(seed)
        e, h, i = shape.experts, shape.hidden, shape.intermediate
        w13 = torch.randn(e, 2 * i, h, generator=gen, device=device, dtype=torch.float32)
        w2 = torch.randn(e, h, i, generator=gen, device=device, dtype=torch.float32)
        return cls((w13 / h**0.5).to(dtype), (w2 / i**0.5).to(dtype))

    @property
    def num_experts(self) -> int:
        return self.w13.shape[0]

    def to(self, dtype: torch.dtype) -> MoEWeights:
        return MoEWeights(self.w13.to(dtype), self.w2.to(dtype))

    def shard(self, first: int, count: int) -> MoEWeights:
        """Experts first..first+count-1 (views: no copy)."""
        return MoEWeights(self.w13[first : first + count], self.w2[first : first + count])


def moe_loop(w: MoEWeights) -> MoEFn:
    def forward(x, ids, weights):
        acc_dtype = torch.promote_types(x.dtype, torch.float32)
        acc = torch.zeros(x.shape, dtype=acc_dtype, device=x.device)
        intermediate = w.w2.shape[2]
        for e in range(w.num_experts):
            token, slot = torch.where(ids == e)
            h = x[token] @ w.w13[e].T
            act = F.silu(h[:, :intermediate]) * h[:, intermediate:]
            y = (act @ w.w2[e].T).to(acc.dtype) * weights[token, slot, None].to(acc.dtype)
            acc.index_add_(0, token, y)
        return acc.to(x.dtype)

    return forward


def moe_grouped_mm(w: MoEWeights) -> MoEFn:
    num_experts = w.num_experts

    def forward(x, ids, weights):
        tokens, top_k = ids.shape
        flat = ids.reshape(-1)
        valid = (flat >= 0) & (flat < num_experts)
        key = torch.where(valid, flat, num_experts)
        order = torch.argsort(key, stable=True)
        counts = torch.zeros(num_experts + 1, dtype=torch.int32, device=x.device)
        counts.index_add_(0, key, torch.ones_like(key, dtype=torch.int32))
        offs = torch.cumsum(counts[:num_experts], 0, dtype=torch.int32)
        h = torch._grouped_mm(x[order // top_k], w.w13.transpose(1, 2), offs=offs)
        intermediate = h.shape[1] // 2
        act = F.silu(h[:, :intermediate]) * h[:, intermediate:]
        y = torch._grouped_mm(act, w.w2.transpose(1, 2), offs=offs)
        scale = weights.reshape(-1)[order, None]
        out = torch.empty(tokens * top_k, x.shape[1], dtype=torch.float32, device=x.device)
        # Rows past offs[-1] (foreign experts) are left unwritten by the GEMM: zero them.
        out[order] = torch.where(valid[order, None], y.float() * scale, 0.0)
        return out.view(tokens, top_k, -1).sum(1).to(x.dtype)

    return forward


def hf_experts(implementation: str) -> Callable[[MoEWeights], MoEFn]:
    """transformers' MixtralExperts over these weights, with the given experts implementation."""

    def make(w: MoEWeights) -> MoEFn:
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralExperts

        experts, two_i, hidden = w.w13.shape
        config = MixtralConfig(
            hidden_size=hidden, intermediate_size=two_i // 2, num_local_experts=experts
        )
        config._experts_implementation = implementation
        with torch.device("meta"):
            module = MixtralExperts(config)
        module.gate_up_proj = torch.nn.Parameter(w.w13, requires_grad=False)
        module.down_proj = torch.nn.Parameter(w.w2, requires_grad=False)
        return module

    return make


def triton_fused(w: MoEWeights, table=None, *, partial=False, poison=False) -> MoEFn:
    """The fused Triton layer; configs from `table` (a triton_moe.ConfigTable) or defaults."""
    from artifact.gpu.kernels.triton_moe import ConfigTable, fused_moe

    table = table or ConfigTable({})

    def forward(x, ids, weights):
        config = table.lookup(ids.shape[0], w.num_experts, ids.shape[1])
        return fused_moe(
            x, w.w13, w.w2, ids, weights, config=config, partial=partial, poison=poison
        )

    return forward


IMPLEMENTATIONS: dict[str, Callable[[MoEWeights], MoEFn]] = {
    "loop": moe_loop,
    "grouped_mm": moe_grouped_mm,
    **{f"hf-{name}": hf_experts(name) for name in EXPERTS_IMPLEMENTATIONS},
    "triton": triton_fused,
}


def gathered_weight_bytes(shape: MoEShape, tokens: int, itemsize: int) -> int:
    """What `hf-batched_mm` materializes: every assignment's own copy of its expert's weights."""
    return tokens * shape.top_k * 3 * shape.hidden * shape.intermediate * itemsize


def parse_implementations(text: str) -> list[str]:
    names = list(IMPLEMENTATIONS) if text == "all" else [n.strip() for n in text.split(",")]
    bad = [n for n in names if n not in IMPLEMENTATIONS]
    if bad:
        raise ArtifactError(
            f"unknown implementation {bad[0]!r}; choose from {', '.join(IMPLEMENTATIONS)}, all"
        )
    return names
