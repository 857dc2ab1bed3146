"""The MoE layer's torch implementations against a float64 reference (CPU, small shapes)."""

import numpy as np
import pytest
import torch

from artifact.core.errors import ArtifactError
from artifact.gpu.kernels.layer import (
    IMPLEMENTATIONS,
    MIXTRAL_8X7B,
    MoEShape,
    MoEWeights,
    gathered_weight_bytes,
    moe_grouped_mm,
    moe_loop,
    parse_implementations,
)
from artifact.gpu.kernels.routing import RoutingSpec, routing_weights

SHAPE = MoEShape(64, 96, 8, 2)
TORCH_IMPLS = [name for name in IMPLEMENTATIONS if name != "triton"]


def dense_reference(x, w, ids, weights):
    """Every expert on every token in float64, masked by the routing: an independent formula."""
    x, w13, w2 = x.double(), w.w13.double(), w.w2.double()
    inter = w2.shape[2]
    h = torch.einsum("th,enh->ten", x, w13)
    act = torch.nn.functional.silu(h[..., :inter]) * h[..., inter:]
    y = torch.einsum("tei,ehi->teh", act, w2)
    gate = torch.zeros(x.shape[0], w13.shape[0], dtype=torch.float64)
    valid = (ids >= 0) & (ids < w13.shape[0])
    gate.scatter_add_(1, ids.clamp(min=0), torch.where(valid, weights.double(), 0.0))
    return torch.einsum("te,teh->th", gate, y)


def draw(shape, tokens, seed, dtype=torch.bfloat16, kind="uniform"):
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(
        RoutingSpec(kind, exponent=1.5).draw(tokens, shape.experts, shape.top_k, rng)
    )
    weights = torch.from_numpy(routing_weights(tokens, shape.top_k, rng))
    x = torch.from_numpy(rng.standard_normal((tokens, shape.hidden))).to(dtype)
    return x, ids, weights


def rel_err(out, ref):
    return float((out.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("tokens", [1, 7, 50])
def test_float64_loop_is_the_reference(tokens):
    w = MoEWeights.seeded(SHAPE, 0, "cpu", torch.float64)
    x, ids, weights = draw(SHAPE, tokens, tokens, torch.float64)
    assert rel_err(moe_loop(w)(x, ids, weights), dense_reference(x, w, ids, weights)) < 1e-12


@pytest.mark.parametrize("name", TORCH_IMPLS)
@pytest.mark.parametrize("tokens", [1, 9, 64])
def test_bf16_implementations_within_the_band(name, tokens):
    w = MoEWeights.seeded(SHAPE, 1, "cpu", torch.bfloat16)
    x, ids, weights = draw(SHAPE, tokens, 100 + tokens, kind="zipf")
    ref = moe_loop(w.to(torch.float64))(x.double(), ids, weights)
    out = IMPLEMENTATIONS[name](w)(x, ids, weights)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    assert 1e-4 < rel_err(out, ref) < 1e-2  # bf16 operands: not exact, within the band


@pytest.mark.parametrize("make", [moe_loop, moe_grouped_mm])
def test_ep_shards_sum_to_the_full_layer(make):
    w = MoEWeights.seeded(SHAPE, 2, "cpu", torch.float32)
    x, ids, weights = draw(SHAPE, 40, 3, torch.float32)
    full = moe_loop(w.to(torch.float64))(x.double(), ids, weights)
    total = torch.zeros_like(full)
    for first in range(0, 8, 2):
        local = torch.where((ids >= first) & (ids < first + 2), ids - first, -1)
        keep = (local >= 0).any(dim=1)
        out = make(w.shard(first, 2))(x[keep], local[keep], weights[keep])
        total[keep] += out.double()
    assert rel_err(total, full) < 1e-5


def test_shape_parse_and_counts():
    assert MoEShape.parse("4096,14336,8,2") == MIXTRAL_8X7B
    assert MIXTRAL_8X7B.flops(1) == 6 * 2 * 4096 * 14336
    # One token reads two experts' weights (bf16) and writes and reads 4096 values.
    assert MIXTRAL_8X7B.min_bytes(1, 2, 2) == (2 * 3 * 4096 * 14336 + 2 * 4096) * 2
    assert gathered_weight_bytes(MIXTRAL_8X7B, 32, 2) == 64 * 3 * 4096 * 14336 * 2
    for bad in ("1,2,3", "a,b,c,d", "8,8,2,4", "0,8,2,1"):
        with pytest.raises(ArtifactError, match="shape"):
            MoEShape.parse(bad)


def test_parse_implementations():
    assert parse_implementations("all") == list(IMPLEMENTATIONS)
    assert parse_implementations("loop, triton") == ["loop", "triton"]
    with pytest.raises(ArtifactError, match="unknown implementation 'cutlass'"):
        parse_implementations("loop,cutlass")
