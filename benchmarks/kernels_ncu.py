"""Run this project's Triton MoE layer a few times at one size and routing, for a profiler.

    ncu --clock-control none -k regex:'_gate_up|_down' --section SpeedOfLight \
        python3 benchmarks/kernels_ncu.py --tokens 32 --routing replay:study-all2all \
        --loads .devdata/loads.json

The layer uses the Triton kernel's default configs (artifact.gpu.kernels.triton_moe) and the
stage's seeded Mixtral-8x7B weights; routing names as in the kernels stage's results.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from artifact.gpu.kernels.layer import MoEShape, MoEWeights
from artifact.gpu.kernels.loads import read_sources
from artifact.gpu.kernels.routing import RoutingSpec, routing_weights
from artifact.gpu.kernels.triton_moe import default_config, fused_moe


def routing_spec(name: str, loads: str | None) -> RoutingSpec:
    if name.startswith("zipf-"):
        return RoutingSpec("zipf", exponent=float(name[5:]))
    if name.startswith("replay:"):
        sources = {s.name: s for s in read_sources(loads)} if loads else {}
        return RoutingSpec("replay", source=sources[name[7:]])
    return RoutingSpec(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--routing", default="uniform")
    parser.add_argument("--loads", default=None, help="loads file for replay:NAME routings")
    parser.add_argument("--shape", default="4096,14336,8,2")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shape = MoEShape.parse(args.shape)
    rng = np.random.default_rng(args.seed)
    w = MoEWeights.seeded(shape, args.seed, "cuda", torch.bfloat16)
    ids = routing_spec(args.routing, args.loads).draw(args.tokens, shape.experts, shape.top_k, rng)
    weights = torch.from_numpy(routing_weights(args.tokens, shape.top_k, rng)).cuda()
    x = torch.randn(args.tokens, shape.hidden, device="cuda").to(torch.bfloat16)
    config = default_config(args.tokens, shape.experts, shape.top_k)
    print(f"T={args.tokens} {args.routing} loads {np.bincount(ids.ravel(), minlength=8)}")
    print(f"config {config.describe()}")
    for _ in range(args.calls):
        fused_moe(x, w.w13, w.w2, torch.from_numpy(ids).cuda(), weights, config=config)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
