"""This project's Triton MoE kernel on the CPU, under Triton's interpreter (small shapes).

The interpreter computes `tl.dot` of bfloat16 on the raw bits (triton-lang/triton#11584;
its docs say bfloat16 is unsupported there), so these tests run float16 and float32; the
stage checks bfloat16 on the GPU against the float64 reference before every timing.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from artifact.gpu.kernels.layer import MoEShape, MoEWeights, moe_loop, triton_fused
from artifact.gpu.kernels.routing import RoutingSpec, routing_weights
from artifact.gpu.kernels.triton_moe import (
    ConfigTable,
    GemmConfig,
    MoEConfig,
    align,
    block_m_candidates,
    default_config,
    fused_moe,
)

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 (CPU)"
    ),
    # The interpreter turns a runtime loop bound into a Python int the deprecated way.
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]

SMALL = MoEConfig(16, GemmConfig(32, 32, 4, 1), GemmConfig(32, 32, 4, 1))
CONFIGS = {
    "pointer": SMALL,
    "tma": MoEConfig(16, GemmConfig(32, 32, 4, 1, tma=True), GemmConfig(32, 32, 4, 1, tma=True)),
    "tall": MoEConfig(32, GemmConfig(16, 64, 4, 1), GemmConfig(64, 16, 4, 1, tma=True)),
}


def problem(shape, tokens, seed, dtype, kind="zipf"):
    rng = np.random.default_rng(seed)
    spec = RoutingSpec(kind, exponent=1.5)
    ids = torch.from_numpy(spec.draw(tokens, shape.experts, shape.top_k, rng))
    weights = torch.from_numpy(routing_weights(tokens, shape.top_k, rng))
    x = torch.from_numpy(rng.standard_normal((tokens, shape.hidden), dtype=np.float32)).to(dtype)
    return x, ids, weights


def rel_err(out, ref):
    return float((out.double() - ref).norm() / ref.norm())


def test_align_sorts_pads_and_skips_foreign_ids():
    ids = torch.tensor([[3, 1], [1, 0], [7, 3], [-1, 9]])
    plan = align(ids, 8, 4)
    sentinel = ids.numel()
    padded = int(plan.num_padded[0])
    assert padded == 16  # experts 0, 1, 3, 7: one block of 4 each; -1 and 9 are left out
    rows = plan.sorted_ids[:padded].reshape(-1, 4).tolist()
    assert rows == [[3, sentinel, sentinel, sentinel], [1, 2, sentinel, sentinel],
                    [0, 5, sentinel, sentinel], [4, sentinel, sentinel, sentinel]]  # fmt: skip
    assert plan.block_expert[:4].tolist() == [0, 1, 3, 7]
    assert (plan.sorted_ids[padded:] == sentinel).all()


@pytest.mark.parametrize("dtype,band", [(torch.float16, 2e-3), (torch.float32, 1e-5)])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize(
    "shape", [MoEShape(64, 64, 8, 2), MoEShape(80, 72, 8, 2), MoEShape(64, 32, 6, 3)]
)
@pytest.mark.parametrize("tokens", [1, 5, 40])
def test_fused_moe_matches_float64(dtype, band, config, shape, tokens):
    w = MoEWeights.seeded(shape, 0, "cpu", dtype)
    x, ids, weights = problem(shape, tokens, tokens, dtype)
    ref = moe_loop(w.to(torch.float64))(x.double(), ids, weights)
    # Poisoned buffers: an element the kernels do not write would surface as NaN.
    out = fused_moe(x, w.w13, w.w2, ids, weights, config=CONFIGS[config], poison=True)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert rel_err(out, ref) < band


@pytest.mark.parametrize("kind", ["balanced", "uniform", "zipf"])
def test_ep_shard_skips_foreign_experts(kind):
    shape = MoEShape(64, 64, 8, 2)
    w = MoEWeights.seeded(shape, 1, "cpu", torch.float16)
    x, ids, weights = problem(shape, 33, 7, torch.float16, kind)
    local = torch.where((ids >= 2) & (ids < 4), ids - 2, -1)
    ref = moe_loop(w.shard(2, 2).to(torch.float64))(x.double(), local, weights)
    fn = triton_fused(w.shard(2, 2), ConfigTable({64: SMALL}), partial=True, poison=True)
    out = fn(x, local, weights)
    assert torch.isfinite(out).all() and rel_err(out, ref) < 2e-3


def test_config_choice():
    assert block_m_candidates(1, 8, 2) == (16,)
    assert block_m_candidates(32, 8, 2) == (32,)  # an expert's whole load fits one block
    assert block_m_candidates(64, 8, 2) == (64,)
    assert block_m_candidates(256, 8, 2) == (32, 64, 128)
    assert block_m_candidates(16384, 8, 2) == (32, 64, 128)
    assert default_config(32, 8, 2).block_m == 32
    assert default_config(4096, 8, 2).gate_up.tma
    table = ConfigTable({32: SMALL, 2048: CONFIGS["tall"]})
    assert table.lookup(30, 8, 2) is SMALL
    assert table.lookup(33, 8, 2) is CONFIGS["tall"]
    assert table.lookup(10**6, 8, 2) is CONFIGS["tall"]
    assert ConfigTable({}).lookup(1, 8, 2) == default_config(1, 8, 2)
    assert SMALL.describe() == "m16 gate_up n32k32w4s1 down n32k32w4s1"
