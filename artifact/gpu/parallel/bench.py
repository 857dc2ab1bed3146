"""The parallel benchmark, run on every rank of a torch.distributed group (torchrun starts
it through artifact.gpu.parallel.run); rank 0 gathers every rank's numbers and writes them.

For each T (tokens per rank), routing (artifact.gpu.kernels.routing: uniform, Zipf-skewed,
replayed logs) and configuration (tp; ep-agrs and ep-a2a under each placement):

1. *inputs*: every rank draws the same global batch of R*T tokens from the shared seed
   (checked: sums of x and ids agree across ranks), a check set and `sets` timing sets;
2. *check*: each rank compares its T output rows with the float64 per-expert loop over the
   same rows (artifact.gpu.kernels.layer.moe_loop); squared errors and norms are summed over
   the ranks: the relative Frobenius error of the whole output. The same implementation on
   one GPU with the full weights gives the error the dtype allows (`single_gpu_err`). Only
   a configuration within the tolerance is timed;
3. *time*: per set, an eplb placement is computed from that set's own expert loads, the
   layer built, `warmup` untimed calls, then `reps` calls, each after a barrier (every rank
   starts idle and together), with device events at every phase boundary;
4. rank 0 reduces the timings (artifact.gpu.parallel.report.config_rows) and rewrites every
   table, the figure and summary.md after each T, so an interrupted run keeps its numbers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from artifact.core.console import console
from artifact.core.errors import ArtifactError
from artifact.core.io import atomic_write_json
from artifact.gpu.kernels.bench import card_info
from artifact.gpu.kernels.layer import MoEShape, MoEWeights, moe_loop
from artifact.gpu.kernels.routing import RoutingSpec, parse_routings, routing_weights
from artifact.gpu.parallel.layer import (
    EP_LAYERS,
    Batch,
    Marks,
    TensorParallel,
    assignments_per_rank,
    make_impl,
)
from artifact.gpu.parallel.options import MULTICAST_OFF, ParsedOptions
from artifact.gpu.parallel.placement import PlacementSpec, parse_placements
from artifact.gpu.parallel.report import config_rows, write_outputs

DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
}


@dataclass
class Plan:
    shape: MoEShape
    routings: list[RoutingSpec]
    configs: list[tuple[str, PlacementSpec | None]]  # (mode, placement; None for tp)


def plan(opts: ParsedOptions, ranks: int) -> Plan:
    """The shape, routings and configurations of a run over `ranks` ranks, checked."""
    shape = MoEShape.parse(opts.shape)
    routings = parse_routings(opts.kinds, list(opts.zipf), opts.sources, shape.experts, shape.top_k)
    if not routings:
        raise ArtifactError(f"--routings {opts.kinds!r} names no routing to run")
    ep_modes = [m for m in opts.modes if m != "tp"]
    placements = parse_placements(opts.placements, shape.experts, ranks) if ep_modes else []
    configs = [
        *([("tp", None)] if "tp" in opts.modes else []),
        *((mode, p) for mode in ep_modes for p in placements),
    ]
    return Plan(shape, routings, configs)


class ParallelBench:
    def __init__(self, opts: ParsedOptions, device: torch.device):
        self.opts = opts
        self.device = device
        self.cuda = device.type == "cuda"
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        checked = plan(opts, self.world)
        self.shape, self.routings, self.configs = checked.shape, checked.routings, checked.configs
        shape = self.shape
        self.dtype = DTYPES[opts.dtype]
        self.weights = MoEWeights.seeded(shape, opts.seed, device, self.dtype)
        self.reference_fn = moe_loop(self.weights.to(torch.float64))
        self.single = make_impl(opts.impl, self.weights, partial=False)
        self.tp = (
            TensorParallel(self.weights, self.rank, self.world, opts.impl)
            if "tp" in opts.modes
            else None
        )
        self.rng = np.random.default_rng(opts.seed)
        self.gen = torch.Generator(device=device).manual_seed(opts.seed)

    # ----------------------------------------------------------------- inputs
    def draw(self, spec: RoutingSpec, tokens: int) -> tuple[Batch, np.ndarray]:
        """The global batch (identical on every rank) and its expert loads."""
        n, shape = tokens * self.world, self.shape
        ids = spec.draw(n, shape.experts, shape.top_k, self.rng)
        weights = routing_weights(n, shape.top_k, self.rng)
        x = torch.randn(n, shape.hidden, generator=self.gen, device=self.device).to(self.dtype)
        batch = Batch(
            x,
            torch.from_numpy(ids).to(self.device),
            torch.from_numpy(weights).to(self.device),
            tokens,
        )
        return batch, np.bincount(ids.ravel(), minlength=shape.experts)

    def same_everywhere(self, batch: Batch) -> None:
        sums = torch.stack([batch.x.double().sum(), batch.ids.double().sum()])
        low, high = sums.clone(), sums.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise ArtifactError(
                "the ranks drew different inputs from the same seed (different torch builds "
                "or devices?); every rank must run the same software"
            )

    # ----------------------------------------------------------------- checks
    def rel_err(self, out: torch.Tensor, ref: torch.Tensor) -> float:
        """Relative Frobenius error of the whole output (all ranks' rows); NaN if any
        rank's rows are not finite."""
        sums = torch.stack(
            [
                (out.double() - ref).square().sum(),
                ref.square().sum(),
                (~torch.isfinite(out)).sum().double(),
            ]
        )
        dist.all_reduce(sums)
        bad, num, den = float(sums[2]), float(sums[0]), float(sums[1])
        return math.nan if bad else math.sqrt(num / den)

    def reference_rows(self, batch: Batch) -> tuple[torch.Tensor, float]:
        """This rank's rows of the float64 reference, and the single-GPU error."""
        own = [batch.own(t, self.rank) for t in (batch.x, batch.ids, batch.weights)]
        ref = self.reference_fn(own[0].double(), own[1], own[2])
        return ref, self.rel_err(self.single(*own), ref)

    # ----------------------------------------------------------------- configurations
    def layer(self, mode: str, spec: PlacementSpec | None, loads: np.ndarray):
        if mode == "tp":
            return self.tp, ""
        if spec is None:
            raise ArtifactError(f"the {mode} mode needs an expert placement")
        placement = spec.build(loads, self.world)
        return EP_LAYERS[mode](self.weights, placement, self.rank, self.opts.impl), placement

    def run_config(self, mode, spec, check, ref, sets) -> tuple[float, dict]:
        """(relative error, this rank's record: phase names and per-set timings)."""
        layer, _ = self.layer(mode, spec, check[1])
        out, _ = layer(check[0], Marks(self.cuda))
        err = self.rel_err(out, ref)
        record: dict = {"phases": [], "sets": []}
        if not err <= self.opts.tolerance:
            return err, record
        for batch, loads in sets:
            layer, placement = self.layer(mode, spec, loads)
            for _ in range(self.opts.warmup):
                layer(batch, Marks(self.cuda))
            calls = []
            for _ in range(self.opts.reps):
                dist.barrier()
                marks = Marks(self.cuda)
                _, sent = layer(batch, marks)
                calls.append(marks)
            if self.cuda:
                torch.cuda.synchronize()
            durations = [m.durations() for m in calls]
            record["phases"] = list(durations[0])
            if placement:
                assignments = assignments_per_rank(batch, layer.tables, self.world)
            else:  # tp: every rank computes every assignment on its slice
                assignments = np.full(self.world, batch.ids.numel())
            record["sets"].append(
                {
                    "ms": np.array([list(d.values()) for d in durations]),
                    "bytes": sent,
                    "assignments": assignments,
                    "loads": loads,
                    "slots": placement.describe() if placement else "",
                }
            )
        return err, record

    def gather(self, record: dict) -> list[dict]:
        records: list = [None] * self.world
        dist.all_gather_object(records, record)
        return records

    # ----------------------------------------------------------------- the run
    def run(self, out_dir: Path) -> dict:
        opts = self.opts
        info = self.info()
        if self.rank == 0:
            console.print(
                f"parallel: {info['card']}, {self.world} ranks on {info['nodes']} node(s), "
                f"{info['backend']}; {len(self.configs)} configurations x "
                f"{len(self.routings)} routings x T={','.join(map(str, opts.tokens))}",
                soft_wrap=True,
            )
        results, set_rows, phase_rows = [], [], []
        for tokens in opts.tokens:
            for spec in self.routings:
                check = self.draw(spec, tokens)
                self.same_everywhere(check[0])
                ref, single_err = self.reference_rows(check[0])
                sets = [self.draw(spec, tokens) for _ in range(opts.sets)]
                for mode, pspec in self.configs:
                    err, record = self.run_config(mode, pspec, check, ref, sets)
                    records = self.gather(record)
                    if self.rank:
                        continue
                    meta = {
                        "ranks": self.world,
                        "tokens": tokens,
                        "global_tokens": tokens * self.world,
                        "routing": spec.name,
                        "mode": mode,
                        "placement": pspec.name if pspec else "",
                        "rel_err": err,
                        "single_gpu_err": single_err,
                        "status": "ok" if err <= opts.tolerance else "incorrect",
                    }
                    row, per_set, per_phase = config_rows(meta, records)
                    results.append(row)
                    set_rows += per_set
                    phase_rows += per_phase
                    console.print(_line(row), soft_wrap=True)
                del check, ref, sets
            if self.rank == 0:
                write_outputs(out_dir, info, results, set_rows, phase_rows)
        summary = {
            "card": info["card"],
            "ranks": self.world,
            "nodes": info["nodes"],
            "configurations": len(results),
            "timed": sum(1 for r in results if r.get("layer_ms")),
            "incorrect": [
                f"T={r['tokens']} {r['routing']} {r['mode']} {r['placement']}".strip()
                for r in results
                if r["status"] != "ok"
            ],
        }
        if self.rank == 0:
            atomic_write_json(out_dir / "summary.json", summary)
        return summary

    def info(self) -> dict:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        nccl = None
        if self.cuda:
            nccl = ".".join(map(str, torch.cuda.nccl.version()))
        opts = self.opts
        return {
            **card_info(self.device),
            "ranks": self.world,
            "nodes": max(1, self.world // local),
            "backend": dist.get_backend(),
            "nccl": nccl,
            "env": {k: os.environ.get(k) for k in MULTICAST_OFF},
            "shape": self.shape.describe(),
            "dtype": opts.dtype,
            "impl": opts.impl,
            "tokens": list(opts.tokens),
            "routings": [spec.name for spec in self.routings],
            "configurations": [
                f"{mode} {spec.name}" if spec else mode for mode, spec in self.configs
            ],
            "seed": opts.seed,
            "sets": opts.sets,
            "reps": opts.reps,
            "warmup": opts.warmup,
            "tolerance": opts.tolerance,
        }


def _line(row: dict) -> str:
    label = f"  T={row['tokens']:<5} {row['routing']:<22} {row['mode']:<8} {row['placement']:<7}"
    if not row.get("layer_ms"):
        return f"{label} {row['status']} (err {row['rel_err']})"
    return (
        f"{label} {row['layer_ms']:9.4f} ms (compute {row['compute_ms']:.4f}, comm "
        f"{row['comm_ms']:.4f}) rank max/mean {row['rank_max_mean']:.3f} err {row['rel_err']:.1e}"
    )
