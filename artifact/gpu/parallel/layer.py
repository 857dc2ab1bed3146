"""One MoE layer sharded over the R ranks of a torch.distributed group, three ways.

Every rank holds the same global batch of N = R*T tokens (x, expert ids, routing weights,
drawn from one seed), as the R ranks of a DP+EP engine hold it together: rank r's own
tokens are rows r*T .. (r+1)*T-1. A layer call returns the layer's output for those rows
and the bytes this rank sent, by phase; it marks the end of each phase on `Marks`.

- `tp` (`TensorParallel`): rank r holds slice r of every expert's intermediate dimension
  (gate and up rows r*I/R .. (r+1)*I/R-1 and the same down-projection columns). SwiGLU
  acts elementwise on the intermediate dimension and the down projection sums over it, so
  running all N tokens through all experts on the slice gives a partial sum of the output;
  one all-reduce (sum) of the N x H partials completes it on every rank (vLLM's TP MoE:
  activations replicated). Phases: compute, allreduce.
- `ep-agrs` (`AllGatherReduceScatter`): rank r holds whole experts (its placement's slots).
  Dispatch all-gathers every rank's T rows, each packed with its physical slot ids and
  routing weights; every rank runs the assignments to its own slots over the N gathered
  rows (the rest contribute nothing); the combine reduce-scatters the N x H partial
  outputs, so rank r receives the sum for its own rows. This is vLLM 0.11's
  AgRsAll2AllManager (all_gatherv of hidden states and router logits, reduce_scatterv);
  for Mixtral its 8 bf16 logits and our 2 int32 ids + 2 fp32 weights are both 16 bytes a
  token. Phases: route, allgather, compute, reducescatter.
- `ep-a2a` (`AllToAll`): dispatch sends each token row only to the ranks that hold its
  experts, once per (token, rank) pair, with that rank's local slot ids (-1 for the
  token's slots elsewhere) and the weights: an all_to_all_single of the per-rank row
  counts, read on the host (the split sizes), then one all_to_all_single of the packed
  rows. Each rank runs what it received; the combine sends every row's partial output
  back (all_to_all_single, splits reversed) and the source sums each token's partials.
  Phases: route, counts, pack, dispatch, compute, combine, reduce.

Bytes sent per rank, the payload that leaves the rank (s = itemsize, B = H*s + 8k the
packed row): tp: 2(R-1)/R * N*H*s (ring all-reduce); ep-agrs: (R-1)*T*B (ring all-gather)
+ (R-1)*T*H*s (ring reduce-scatter); ep-a2a: (rows sent to other ranks)*B + (R-1)*8 for
the counts + (rows received from other ranks)*H*s back. NCCL chooses ring or tree itself;
at R = 2 both all-reduce algorithms send N*H*s.

The per-rank compute is one of the single-GPU implementations of artifact.gpu.kernels.layer
(`grouped_mm`, `loop`, `triton`); ids outside a rank's slots contribute nothing there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from artifact.core.errors import ArtifactError
from artifact.gpu.kernels.layer import IMPLEMENTATIONS, MoEFn, MoEWeights, triton_fused
from artifact.gpu.parallel.placement import Placement

ROUTE_BYTES = 8  # per top-k slot in a packed row: int32 slot id + fp32 routing weight

# torch 2.13 renamed the tensor collectives (the old names warn); 2.11 has only the old ones.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def make_impl(name: str, weights: MoEWeights, *, partial: bool) -> MoEFn:
    """A single-GPU implementation over these weights; `partial`: ids may be foreign."""
    if name == "triton":
        return triton_fused(weights, partial=partial)
    return IMPLEMENTATIONS[name](weights)


class Marks:
    """Phase boundaries of one layer call: CUDA events on the current stream (device time,
    read after a synchronize), or the wall clock on CPU (gloo collectives block)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        # (phase, CUDA event or perf_counter seconds); phase None marks a start
        self.points: list[tuple[str | None, Any]] = []

    def mark(self, phase: str | None = None) -> None:
        """End of `phase` (None: the start of the call)."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.points.append((phase, event))
        else:
            self.points.append((phase, time.perf_counter()))

    def durations(self) -> dict[str, float]:
        """Milliseconds per phase, in call order."""
        out: dict[str, float] = {}
        for (_, start), (phase, end) in zip(self.points, self.points[1:], strict=False):
            if phase is not None:
                out[phase] = start.elapsed_time(end) if self.cuda else (end - start) * 1e3
        return out


@dataclass
class Batch:
    """The global batch, identical on every rank; rank r's own rows are r*T .. (r+1)*T-1."""

    x: torch.Tensor  # (N, H)
    ids: torch.Tensor  # (N, k) int64 logical expert ids
    weights: torch.Tensor  # (N, k) float32
    tokens: int  # T, rows per rank

    def own(self, tensor: torch.Tensor, rank: int) -> torch.Tensor:
        return tensor[rank * self.tokens : (rank + 1) * self.tokens]


@dataclass
class SlotTables:
    """A placement's index tables (Placement.tables) as device tensors."""

    replica: torch.Tensor
    count: torch.Tensor
    rank: torch.Tensor
    local: torch.Tensor

    @classmethod
    def of(cls, placement: Placement, device) -> SlotTables:
        return cls(**{k: torch.from_numpy(v).to(device) for k, v in placement.tables.items()})


def deal(ids: torch.Tensor, tables: SlotTables, source: int) -> torch.Tensor:
    """The physical slot of each assignment: each expert's assignments among these tokens,
    in token-major order, go round-robin over its replicas, starting at replica `source`
    (each source rank starts elsewhere, so the remainders spread). vLLM's EPLB picks a
    replica at random instead; both split an expert's load evenly on average."""
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    per_expert = torch.bincount(flat, minlength=tables.count.numel())
    starts = torch.cumsum(per_expert, 0) - per_expert
    occurrence = torch.empty_like(flat)
    occurrence[order] = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
    replica = (occurrence + source) % tables.count[flat]
    return tables.replica[flat, replica].view_as(ids)


def assignments_per_rank(batch: Batch, tables: SlotTables, world: int) -> np.ndarray:
    """(R,) assignments each rank's slots get from the whole batch (every source's deal)."""
    counts = torch.zeros(world, dtype=torch.int64, device=batch.ids.device)
    for source in range(world):
        phys = deal(batch.own(batch.ids, source), tables, source)
        counts += torch.bincount(tables.rank[phys].reshape(-1), minlength=world)
    return counts.cpu().numpy()


def pack(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Rows of bytes: the token's hidden state, then its k int32 ids, then k fp32 weights."""
    parts = (x, ids.to(torch.int32), weights.to(torch.float32))
    return torch.cat([p.contiguous().view(torch.uint8) for p in parts], dim=1)


def unpack(rows: torch.Tensor, like: torch.Tensor, top_k: int):
    """(x, int64 ids, fp32 weights) of packed rows; `like` gives the hidden width and dtype."""
    width = like.shape[1] * like.element_size()
    x = rows[:, :width].contiguous().view(like.dtype)
    ids = rows[:, width : width + 4 * top_k].contiguous().view(torch.int32).long()
    weights = rows[:, width + 4 * top_k :].contiguous().view(torch.float32)
    return x, ids, weights


class TensorParallel:
    mode = "tp"

    def __init__(self, weights: MoEWeights, rank: int, world: int, impl: str):
        inter = weights.w2.shape[2]
        if inter % world:
            raise ArtifactError(
                f"tp: intermediate size {inter} does not split evenly over {world} ranks"
            )
        start, stop = rank * inter // world, (rank + 1) * inter // world
        part = torch.arange(start, stop, device=weights.w13.device)
        w13 = weights.w13.index_select(1, torch.cat([part, part + inter]))
        self.fn = make_impl(impl, MoEWeights(w13, weights.w2.index_select(2, part)), partial=False)
        self.rank, self.world = rank, world

    def __call__(self, batch: Batch, marks: Marks) -> tuple[torch.Tensor, dict[str, int]]:
        marks.mark()
        y = self.fn(batch.x, batch.ids, batch.weights)
        marks.mark("compute")
        dist.all_reduce(y)
        marks.mark("allreduce")
        payload = y.numel() * y.element_size()
        return batch.own(y, self.rank), {"allreduce": 2 * (self.world - 1) * payload // self.world}


class ExpertParallel:
    """Common part of the EP modes: this rank's slots' weights and the placement's tables."""

    mode = ""

    def __init__(self, weights: MoEWeights, placement: Placement, rank: int, impl: str):
        index = torch.tensor(placement.slots[rank], device=weights.w13.device)
        local = MoEWeights(weights.w13.index_select(0, index), weights.w2.index_select(0, index))
        self.fn = make_impl(impl, local, partial=True)
        self.tables = SlotTables.of(placement, weights.w13.device)
        self.rank, self.world = rank, placement.num_ranks


class AllGatherReduceScatter(ExpertParallel):
    mode = "ep-agrs"

    def __call__(self, batch: Batch, marks: Marks) -> tuple[torch.Tensor, dict[str, int]]:
        x, ids = batch.own(batch.x, self.rank), batch.own(batch.ids, self.rank)
        marks.mark()
        send = pack(x, deal(ids, self.tables, self.rank), batch.own(batch.weights, self.rank))
        marks.mark("route")
        gathered = send.new_empty((self.world * batch.tokens, send.shape[1]))
        _all_gather(gathered, send)
        marks.mark("allgather")
        xs, phys, ws = unpack(gathered, x, ids.shape[1])
        local = torch.where(self.tables.rank[phys] == self.rank, self.tables.local[phys], -1)
        y = self.fn(xs, local, ws)
        marks.mark("compute")
        out = torch.empty_like(x)
        _reduce_scatter(out, y)
        marks.mark("reducescatter")
        others = (self.world - 1) * batch.tokens
        return out, {
            "allgather": others * send.shape[1],
            "reducescatter": others * x.shape[1] * x.element_size(),
        }


class AllToAll(ExpertParallel):
    mode = "ep-a2a"

    def __call__(self, batch: Batch, marks: Marks) -> tuple[torch.Tensor, dict[str, int]]:
        x, ids = batch.own(batch.x, self.rank), batch.own(batch.ids, self.rank)
        weights, tables, world = batch.own(batch.weights, self.rank), self.tables, self.world
        top_k = ids.shape[1]
        marks.mark()
        phys = deal(ids, tables, self.rank)
        dest = tables.rank[phys]
        # One row per (token, destination): a slot whose rank an earlier slot has is folded.
        first = torch.ones_like(dest, dtype=torch.bool)
        for j in range(1, top_k):
            first[:, j] = (dest[:, :j] != dest[:, j : j + 1]).all(dim=1)
        key = torch.where(first, dest, world).reshape(-1)
        order = torch.argsort(key, stable=True)
        send_counts = torch.bincount(key, minlength=world + 1)[:world]
        marks.mark("route")
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts)
        sends, recvs = send_counts.tolist(), recv_counts.tolist()
        marks.mark("counts")
        pairs = order[: sum(sends)]
        token = pairs // top_k
        to_rank = key[pairs]
        row_ids = torch.where(dest[token] == to_rank[:, None], tables.local[phys[token]], -1)
        send = pack(x[token], row_ids, weights[token])
        marks.mark("pack")
        recv = send.new_empty((sum(recvs), send.shape[1]))
        dist.all_to_all_single(recv, send, recvs, sends)
        marks.mark("dispatch")
        xr, idr, wr = unpack(recv, x, top_k)
        y = self.fn(xr, idr, wr) if len(xr) else xr
        marks.mark("compute")
        back = y.new_empty((len(token), x.shape[1]))
        dist.all_to_all_single(back, y, sends, recvs)
        marks.mark("combine")
        acc_dtype = torch.promote_types(x.dtype, torch.float32)
        acc = torch.zeros(x.shape, dtype=acc_dtype, device=x.device)
        acc.index_add_(0, token, back.to(acc.dtype))
        out = acc.to(x.dtype)
        marks.mark("reduce")
        return out, {
            "counts": (world - 1) * send_counts.element_size(),
            "dispatch": (sum(sends) - sends[self.rank]) * send.shape[1],
            "combine": (sum(recvs) - recvs[self.rank]) * x.shape[1] * x.element_size(),
        }


EP_LAYERS = {cls.mode: cls for cls in (AllGatherReduceScatter, AllToAll)}
