"""The MoE layer benchmark: correctness first, then device-event timings against the card's
measured bounds, the EP slowest-rank view, and the replay of logged routing step by step.

For each token count T and routing (artifact.gpu.kernels.routing):

1. *check*: fresh random inputs (x, ids, routing weights); the float64 per-expert loop is the
   reference; every implementation must land within `tolerance` (relative Frobenius error;
   bf16 operands give 1e-3..1e-2) with no NaN, the Triton kernel with its buffers poisoned
   with NaN first, so an element it fails to write fails the check. Only a correct
   implementation is timed.
2. *time*: `sets` input sets drawn anew (rotating, so no set is served from cache), a
   warm-up, then device events around every call, each block of calls queued while the
   GPU sleeps (so host launch overhead is not timed, as under CUDA graphs); the
   implementations take turns, ROUNDS times; the median over all repeats (enough for
   `target_s` seconds, within min/max) with the 10th and 90th percentiles, and the spread
   of the rounds' medians (max/min).
3. *bound*: the same run measures the card's copy bandwidth (bytes read + written) and
   dense bf16 GEMM rate; an implementation's bound is the larger of min_bytes/bandwidth
   (each active expert's weights and the tokens once) and flops/GEMM rate, and
   `frac_of_bound` = bound / time.
4. *EP view*: experts placed on R ranks in contiguous blocks (vLLM's linear placement);
   each rank's shard (its experts; the tokens routed to them, foreign slots skipped) runs as
   its own Triton layer. Predicted slowdown = max/mean of per-rank assignments; measured =
   max/mean of per-rank times, and the slowest rank against the balanced routing's (each
   the mean over EP_SETS input sets).
5. *replay steps*: logged steps (a sample per source) at their own token count, their loads
   exactly as logged: the TP-style layer (all experts local) and each EP rank, against the
   balanced routing at the same token count: the kernel-level cost of each observed step.
"""

from __future__ import annotations

import math
import platform
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from artifact.core.console import console
from artifact.core.errors import ArtifactError
from artifact.core.io import atomic_write_json, atomic_write_text
from artifact.core.tables import csv_text, markdown_table
from artifact.gpu.kernels.layer import (
    IMPLEMENTATIONS,
    MoEFn,
    MoEShape,
    MoEWeights,
    gathered_weight_bytes,
    moe_loop,
    triton_fused,
)
from artifact.gpu.kernels.loads import LoadSource
from artifact.gpu.kernels.plot import plot_results
from artifact.gpu.kernels.routing import RoutingSpec, ids_from_loads, routing_weights, scale_loads
from artifact.routing.measures import ExpertPlacement, max_mean, rank_loads, rank_max_mean

if TYPE_CHECKING:
    from artifact.gpu.kernels.triton_moe import ConfigTable

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
TP_REPLAY_IMPLS = ("triton", "grouped_mm")
EP_SETS = 4  # input sets the EP view times each rank on
WARMUP_S = 0.01  # least device work before each timing
ROUNDS = 3  # the grid times every implementation in turn, this many times over
QUEUED_CALLS = 16  # calls queued behind one GPU sleep while timing
SLEEP_CYCLES = 10_000_000  # about 5 ms at Hopper clocks: time to queue QUEUED_CALLS calls


@dataclass
class BenchOptions:
    shape: MoEShape
    tokens: tuple[int, ...]
    routings: list[RoutingSpec]
    impls: list[str]
    device: str = "cuda"
    # bfloat16 on the GPU; Triton's CPU interpreter computes tl.dot of bfloat16 wrongly
    # (triton-lang/triton#11584), so CPU smoke runs of the Triton kernel use float16.
    dtype: str = "bfloat16"
    seed: int = 0
    sets: int = 8
    target_s: float = 0.25
    min_reps: int = 16
    max_reps: int = 200
    ep_ranks: int = 4
    tune: bool = True
    replay_steps: int = 96
    max_gather_gib: float = 24.0
    tolerance: float = 1e-2
    copy_mib: int = 2048
    gemm_n: int = 8192
    profile: bool = True


@dataclass
class Inputs:
    x: torch.Tensor
    ids: torch.Tensor
    weights: torch.Tensor
    loads: np.ndarray  # (E,) assignments per expert

    def args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x, self.ids, self.weights


class Clock:
    """Per-call device events (CUDA) or wall clock (CPU) around each of `reps` calls."""

    def __init__(self, device: torch.device, opts: BenchOptions):
        self.cuda = device.type == "cuda"
        self.opts = opts

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _timed(self, fn: Callable, args_list: list[tuple], reps: int) -> np.ndarray:
        if self.cuda:
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            for r in range(reps):
                if r % QUEUED_CALLS == 0:
                    # The GPU waits while the host queues the next calls: an asynchronous
                    # implementation's launch overhead stays out of its event window (as
                    # under a serving engine's CUDA graphs); one that waits for the device
                    # inside a call still pays its host time.
                    torch.cuda._sleep(SLEEP_CYCLES)
                starts[r].record()
                fn(*args_list[r % len(args_list)])
                ends[r].record()
            torch.cuda.synchronize()
            return np.array([s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)])
        times = np.empty(reps)
        for r in range(reps):
            t0 = time.perf_counter()
            fn(*args_list[r % len(args_list)])
            times[r] = (time.perf_counter() - t0) * 1e3
        return times

    def measure(
        self,
        fn: Callable,
        args_list: list[tuple],
        *,
        target_s: float | None = None,
        min_reps: int | None = None,
        max_reps: int | None = None,
    ) -> np.ndarray:
        """Milliseconds per call, after a warm-up: a call on each input set, then more until
        WARMUP_S of device work has run (the card leaves its idle clocks; a transient after
        compilation or host-bound code stays out of the numbers)."""
        t0 = time.perf_counter()
        while True:
            for args in args_list:
                fn(*args)
            self.sync()
            if time.perf_counter() - t0 >= WARMUP_S:
                break
        estimate = float(np.median(self._timed(fn, args_list, 2)))
        target = self.opts.target_s if target_s is None else target_s
        low = self.opts.min_reps if min_reps is None else min_reps
        high = self.opts.max_reps if max_reps is None else max_reps
        reps = int(np.clip(target * 1e3 / max(estimate, 1e-4), low, high))
        return self._timed(fn, args_list, reps)


def card_info(device: torch.device) -> dict:
    info: dict[str, str | int | None] = {"device": device.type, "torch": torch.__version__}
    for package in ("triton", "transformers"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            card=props.name,
            multiprocessors=props.multi_processor_count,
            l2_bytes=props.L2_cache_size,
            memory_bytes=props.total_memory,
            cuda=torch.version.cuda,
        )
    else:
        info.update(card=f"cpu {platform.machine()} {platform.processor()}".strip())
    return info


def probe_bounds(clock: Clock, device: torch.device, opts: BenchOptions) -> dict:
    """Copy bandwidth (GB/s, bytes read + written) and dense bf16 GEMM rate (TFLOP/s)."""
    size = opts.copy_mib << 20
    src = torch.empty(size, dtype=torch.uint8, device=device).fill_(7)
    dst = torch.empty_like(src)
    copy_ms = float(np.median(clock.measure(dst.copy_, [(src,)], min_reps=10, max_reps=50)))
    del src, dst
    n = opts.gemm_n
    gen = torch.Generator(device=device).manual_seed(opts.seed)
    dtype = DTYPES[opts.dtype]
    a = torch.randn(n, n, generator=gen, device=device).to(dtype)
    b = torch.randn(n, n, generator=gen, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    gemm_ms = float(
        np.median(clock.measure(lambda: torch.mm(a, b, out=c), [()], min_reps=10, max_reps=50))
    )
    return {
        "copy_bytes": 2 * size,
        "copy_ms": copy_ms,
        "copy_gbps": 2 * size / copy_ms / 1e6,
        "gemm_n": n,
        "gemm_ms": gemm_ms,
        "gemm_tflops": 2 * n**3 / gemm_ms / 1e9,
    }


class Bench:
    def __init__(self, opts: BenchOptions):
        self.opts = opts
        self.shape = opts.shape
        if opts.device == "cuda" and not torch.cuda.is_available():
            raise ArtifactError(
                "the kernels stage times a CUDA GPU and torch sees none here; run it on a GPU "
                "machine (or pass --device cpu with a small --shape for a smoke run)"
            )
        self.device = torch.device(opts.device)
        self.clock = Clock(self.device, opts)
        self.rng = np.random.default_rng(opts.seed)
        self.dtype = DTYPES[opts.dtype]
        self.weights = MoEWeights.seeded(self.shape, opts.seed, self.device, self.dtype)
        self.reference = moe_loop(self.weights.to(torch.float64))
        self.placement = ExpertPlacement.contiguous(self.shape.experts, opts.ep_ranks)
        self.table: ConfigTable | None = None
        if "triton" in opts.impls:
            from artifact.gpu.kernels.triton_moe import ConfigTable

            self.table = ConfigTable({})  # the defaults until tune() fills it
        self.info = card_info(self.device)
        self.bounds: dict = {}

    # ----------------------------------------------------------------- inputs
    def inputs(self, ids: np.ndarray) -> Inputs:
        tokens, top_k = ids.shape
        gen = torch.Generator(device=self.device).manual_seed(int(self.rng.integers(2**62)))
        x = torch.randn(tokens, self.shape.hidden, generator=gen, device=self.device).to(self.dtype)
        weights = torch.from_numpy(routing_weights(tokens, top_k, self.rng)).to(self.device)
        loads = np.bincount(ids.ravel(), minlength=self.shape.experts)
        return Inputs(x, torch.from_numpy(ids).to(self.device), weights, loads)

    def draw(self, spec: RoutingSpec, tokens: int) -> Inputs:
        return self.inputs(spec.draw(tokens, self.shape.experts, self.shape.top_k, self.rng))

    # ----------------------------------------------------------------- implementations
    def make(self, name: str, *, poison: bool = False) -> MoEFn:
        if name == "triton":
            return triton_fused(self.weights, self.table, poison=poison)
        return IMPLEMENTATIONS[name](self.weights)

    def skip_reason(self, name: str, tokens: int) -> str | None:
        if name == "hf-batched_mm":
            gathered = gathered_weight_bytes(self.shape, tokens, self.dtype.itemsize)
            if gathered > self.opts.max_gather_gib * 2**30:
                return (
                    f"skipped: would gather {gathered / 2**30:.0f} GiB of expert weights "
                    f"(--max-gather-gib {self.opts.max_gather_gib:g})"
                )
        return None

    def free_memory(self) -> None:
        """Give cached blocks back after a failure (an out-of-memory one, say)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def check(self, fn: MoEFn, inputs: Inputs, ref: torch.Tensor) -> tuple[float, str]:
        out = fn(*inputs.args())
        if out.shape != ref.shape:
            return math.nan, f"incorrect: output shape {tuple(out.shape)}"
        err = float(((out.double() - ref).norm() / ref.norm()).item())
        if not bool(torch.isfinite(out).all()) or not err <= self.opts.tolerance:
            return err, "incorrect"
        return err, "ok"

    # ----------------------------------------------------------------- tuning
    def tune(self) -> list[dict]:
        """Time each Triton config candidate per token count (uniform routing); keep the best.

        Per row block height: the fastest gate_up config, then (on its output) the fastest
        down config; the height with the least sum wins.
        """
        from artifact.gpu.kernels.triton_moe import (
            GROUP_M,
            ConfigTable,
            MoEConfig,
            align,
            block_m_candidates,
            down,
            gate_up,
            gemm_candidates,
        )

        w, shape = self.weights, self.shape
        rows: list[dict] = []
        entries: dict[int, MoEConfig] = {}
        for tokens in self.opts.tokens:
            sets = [self.draw(RoutingSpec("uniform"), tokens) for _ in range(2)]
            found = []
            for block_m in block_m_candidates(tokens, shape.experts, shape.top_k):
                plans = [align(s.ids, shape.experts, block_m) for s in sets]
                label = {"tokens": tokens, "block_m": block_m}
                best_gate_up = self._fastest(
                    gate_up,
                    lambda c, plans=plans, sets=sets: [
                        (s.x, w.w13, p, c, GROUP_M) for s, p in zip(sets, plans, strict=True)
                    ],
                    gemm_candidates(block_m, "gate_up"),
                    rows,
                    {**label, "kernel": "gate_up"},
                )
                if best_gate_up is None:
                    continue
                hs = [
                    gate_up(s.x, w.w13, p, best_gate_up[1], GROUP_M)
                    for s, p in zip(sets, plans, strict=True)
                ]
                best_down = self._fastest(
                    down,
                    lambda c, plans=plans, hs=hs, sets=sets: [
                        (h, w.w2, p, s.weights, c, GROUP_M)
                        for h, s, p in zip(hs, sets, plans, strict=True)
                    ],
                    gemm_candidates(block_m, "down"),
                    rows,
                    {**label, "kernel": "down"},
                )
                if best_down is not None:
                    config = MoEConfig(block_m, best_gate_up[1], best_down[1])
                    found.append((best_gate_up[0] + best_down[0], config))
            if not found:
                raise ArtifactError(f"no Triton config compiled and ran at T={tokens}")
            ms, config = min(found, key=lambda item: item[0])
            entries[tokens] = config
            console.print(f"  tuned T={tokens}: {config.describe()} ({ms:.4f} ms)")
            for row in rows:
                if row["tokens"] == tokens:
                    row["chosen"] = config.describe()
        self.table = ConfigTable(entries)
        return rows

    def _fastest(self, kernel, make_args, candidates, rows, label):
        """(median ms, config) of the fastest candidate that runs; a row per candidate."""
        timings = []
        for config in candidates:
            try:
                ms = float(
                    np.median(
                        self.clock.measure(
                            kernel, make_args(config), target_s=0.05, min_reps=5, max_reps=50
                        )
                    )
                )
                status = "ok"
                timings.append((ms, config))
            except Exception as exc:  # a config the card refuses
                ms, status = math.nan, f"error: {_one_line(exc)}"
            rows.append(
                {**label, "config": config.describe(), "time_ms": _round(ms), "status": status}
            )
        return min(timings, key=lambda item: item[0]) if timings else None

    # ----------------------------------------------------------------- EP shards
    def shards(self) -> list[tuple[int, int]]:
        ranks = np.asarray(self.placement.rank_of_expert)
        return [
            (int(np.argmax(ranks == r)), int((ranks == r).sum()))
            for r in range(self.placement.num_ranks)
        ]

    def rank_problem(self, inputs: Inputs, first: int, count: int):
        """(x, local ids, weights, token mask) of one rank's shard, or None without tokens."""
        local = inputs.ids - first
        local = torch.where((local >= 0) & (local < count), local, -1)
        keep = (local >= 0).any(dim=1)
        if not bool(keep.any()):
            return None
        return inputs.x[keep], local[keep], inputs.weights[keep], keep

    def ep_fns(self, *, poison: bool = False) -> list[MoEFn]:
        return [
            triton_fused(self.weights.shard(first, count), self.table, partial=True, poison=poison)
            for first, count in self.shards()
        ]

    def ep_check(self, inputs: Inputs, ref: torch.Tensor) -> tuple[float, str]:
        total = torch.zeros(ref.shape, dtype=torch.float64, device=self.device)
        for fn, shard in zip(self.ep_fns(poison=True), self.shards(), strict=True):
            problem = self.rank_problem(inputs, *shard)
            if problem is not None:
                x, ids, weights, keep = problem
                total[keep] += fn(x, ids, weights).double()
        err = float(((total - ref).norm() / ref.norm()).item())
        ok = bool(torch.isfinite(total).all()) and err <= self.opts.tolerance
        return err, "ok" if ok else "incorrect"

    def ep_times(self, inputs: Inputs, *, target_s: float, max_reps: int) -> np.ndarray:
        """Median ms of each rank's shard on these inputs (0 for a rank with no tokens)."""
        times = []
        for fn, shard in zip(self.ep_fns(), self.shards(), strict=True):
            problem = self.rank_problem(inputs, *shard)
            if problem is None:
                times.append(0.0)
                continue
            ms = self.clock.measure(
                fn, [problem[:3]], target_s=target_s, min_reps=5, max_reps=max_reps
            )
            times.append(float(np.median(ms)))
        return np.asarray(times)

    # ----------------------------------------------------------------- the grid
    def bound(self, tokens: int, active: float) -> tuple[float, str, float]:
        """(bound ms, which bound, min bytes) for T tokens over `active` experts."""
        min_bytes = self.shape.min_bytes(tokens, active, self.dtype.itemsize)
        memory_ms = min_bytes / self.bounds["copy_gbps"] / 1e6
        compute_ms = self.shape.flops(tokens) / self.bounds["gemm_tflops"] / 1e9
        if memory_ms >= compute_ms:
            return memory_ms, "bandwidth", min_bytes
        return compute_ms, "compute", min_bytes

    def grid(self) -> tuple[list[dict], list[dict]]:
        rows, ep_rows = [], []
        shape, opts = self.shape, self.opts
        ep = opts.ep_ranks > 1 and "triton" in opts.impls
        fns: dict[str, MoEFn | None] = dict.fromkeys(opts.impls)
        for tokens in opts.tokens:
            console.print(f"[bold]T={tokens}[/]")
            for spec in opts.routings:
                check_inputs = self.draw(spec, tokens)
                ref = self.reference(
                    check_inputs.x.double(), check_inputs.ids, check_inputs.weights
                )
                sets = [self.draw(spec, tokens) for _ in range(opts.sets)]
                loads = np.stack([s.loads for s in sets])
                active = float((loads > 0).sum(axis=1).mean())
                bound_ms, bound_kind, min_bytes = self.bound(tokens, active)
                common = {
                    "tokens": tokens,
                    "routing": spec.name,
                    "sets": opts.sets,
                    "active_experts": round(active, 3),
                    "expert_max_mean": _round(float(np.mean(max_mean(loads)))),
                    "rank_max_mean": _round(float(np.mean(rank_max_mean(loads, self.placement)))),
                    "bound_ms": _round(bound_ms),
                    "bound": bound_kind,
                }
                timed: dict[str, tuple[dict, list[np.ndarray]]] = {}
                for name in opts.impls:
                    row = {**common, "impl": name}
                    if name == "triton" and self.table is not None:
                        config = self.table.lookup(tokens, shape.experts, shape.top_k)
                        row["config"] = config.describe()
                    rows.append(row)
                    skip = self.skip_reason(name, tokens)
                    if skip:
                        row["status"] = skip
                        continue
                    try:
                        fn = fns[name]
                        if fn is None:
                            fn = fns[name] = self.make(name)
                        checker = self.make(name, poison=True) if name == "triton" else fn
                        row["rel_err"], row["status"] = self.check(checker, check_inputs, ref)
                    except Exception as exc:  # recorded; the grid goes on
                        row["status"] = f"error: {_one_line(exc)}"
                        self.free_memory()
                        continue
                    if row["status"] == "ok":
                        timed[name] = (row, [])
                self.time_in_turns(timed, fns, sets, shape.flops(tokens), bound_ms, min_bytes)
                if ep:
                    ep_rows.append(self.ep_row(spec, tokens, check_inputs, ref, sets))
                del check_inputs, ref, sets
            console.print(_grid_lines(rows, tokens))
        _relative_to_balanced(rows, ep_rows)
        return rows, ep_rows

    def time_in_turns(self, timed, fns, sets, flops, bound_ms, min_bytes) -> None:
        """Time each checked implementation; they take turns, ROUNDS times, so a slow spell
        of the card or the host lands on a part of each one's repeats, not on all of one's.
        Fills each row's timing columns (median and percentiles over all repeats)."""
        opts = self.opts
        for _ in range(ROUNDS):
            for name, (row, parts) in timed.items():
                if row["status"] != "ok":
                    continue
                try:
                    parts.append(
                        self.clock.measure(
                            fns[name],
                            [s.args() for s in sets],
                            target_s=opts.target_s / ROUNDS,
                            min_reps=max(1, opts.min_reps // ROUNDS),
                        )
                    )
                except Exception as exc:  # recorded; the grid goes on
                    row["status"] = f"error: {_one_line(exc)}"
                    self.free_memory()
        for row, parts in timed.values():
            if row["status"] != "ok":
                continue
            ms = np.concatenate(parts)
            median = float(np.median(ms))
            rounds = [float(np.median(p)) for p in parts]
            row.update(
                time_ms=_round(median),
                time_p10_ms=_round(float(np.percentile(ms, 10))),
                time_p90_ms=_round(float(np.percentile(ms, 90))),
                round_spread=_round(max(rounds) / min(rounds)),
                reps=len(ms),
                tflops=_round(flops / median / 1e9),
                gbps=_round(min_bytes / median / 1e6),
                frac_of_bound=_round(bound_ms / median),
            )

    def ep_row(self, spec, tokens, check_inputs, ref, sets) -> dict:
        sets = sets[:EP_SETS]
        loads = np.stack([s.loads for s in sets])
        row = {
            "tokens": tokens,
            "routing": spec.name,
            "ranks": self.placement.num_ranks,
            "impl": "triton",
            "rank_assignments_max": _round(float(rank_loads(loads, self.placement).max(1).mean())),
            "rank_assignments_mean": _round(tokens * self.shape.top_k / self.placement.num_ranks),
            "predicted_slowdown": _round(float(rank_max_mean(loads, self.placement).mean())),
        }
        try:
            row["rel_err"], row["status"] = self.ep_check(check_inputs, ref)
            if row["status"] != "ok":
                return row
            target = self.opts.target_s / 16
            per_set = [self.ep_times(s, target_s=target, max_reps=50) for s in sets]
        except Exception as exc:  # recorded; the grid goes on
            row["status"] = f"error: {_one_line(exc)}"
            return row
        row.update(
            slowest_rank_ms=_round(float(np.mean([t.max() for t in per_set]))),
            mean_rank_ms=_round(float(np.mean([t.mean() for t in per_set]))),
            measured_max_mean=_round(float(np.mean([t.max() / t.mean() for t in per_set]))),
        )
        return row

    # ----------------------------------------------------------------- replay steps
    def replay_steps(self, sources: list[LoadSource]) -> list[dict]:
        shape, rows = self.shape, []
        impls = [name for name in TP_REPLAY_IMPLS if name in self.opts.impls]
        fns = {name: self.make(name) for name in impls}
        balanced: dict[int, dict] = {}
        for source in sources:
            count = min(self.opts.replay_steps, len(source))
            picks = np.sort(self.rng.choice(len(source), count, replace=False))
            console.print(f"replay {source.name}: {count} logged steps at their own size")
            for i in picks:
                tokens = int(source.num_tokens[i])
                counts = logged_counts(source.loads[i], tokens, shape.top_k)
                inputs = self.inputs(ids_from_loads(counts, shape.top_k, self.rng))
                if tokens not in balanced:
                    balanced[tokens] = self.replay_times(
                        fns, self.draw(RoutingSpec("balanced"), tokens)
                    )
                base = balanced[tokens]
                times = self.replay_times(fns, inputs)
                row = {
                    "source": source.name,
                    "run": str(source.run[i]),
                    "layer": int(source.layer[i]),
                    "step": int(source.step[i]),
                    "tokens": tokens,
                    "active_experts": int((counts > 0).sum()),
                    "expert_max_mean": _round(float(max_mean(counts))),
                    "rank_max_mean": _round(float(rank_max_mean(counts, self.placement))),
                }
                for name in impls:
                    row[f"{name}_ms"] = _round(times[name])
                    row[f"{name}_cost"] = _round(times[name] / base[name])
                if "ep" in times:
                    ep = times["ep"]
                    row.update(
                        ep_slowest_ms=_round(float(ep.max())),
                        ep_mean_ms=_round(float(ep.mean())),
                        ep_measured_max_mean=_round(float(ep.max() / ep.mean())),
                        ep_vs_balanced=_round(float(ep.max() / base["ep"].max())),
                    )
                rows.append(row)
        return rows

    def replay_times(self, fns: dict[str, MoEFn], inputs: Inputs) -> dict:
        times: dict = {
            name: float(
                np.median(
                    self.clock.measure(fn, [inputs.args()], target_s=0.01, min_reps=10, max_reps=30)
                )
            )
            for name, fn in fns.items()
        }
        if "triton" in fns and self.opts.ep_ranks > 1:
            times["ep"] = self.ep_times(inputs, target_s=0.005, max_reps=30)
        return times

    # ----------------------------------------------------------------- profiler
    def kernel_breakdown(self) -> list[dict]:
        """Device time per kernel of one layer call (torch profiler), uniform routing."""
        from torch.profiler import ProfilerActivity, profile

        rows, calls = [], 5
        for tokens in self.opts.tokens:
            sets = [self.draw(RoutingSpec("uniform"), tokens) for _ in range(2)]
            for name in (n for n in TP_REPLAY_IMPLS if n in self.opts.impls):
                fn = self.make(name)
                for s in sets:
                    fn(*s.args())
                self.clock.sync()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for r in range(calls):
                        fn(*sets[r % 2].args())
                    self.clock.sync()
                cuda = torch.autograd.DeviceType.CUDA
                events = [e for e in prof.key_averages() if e.device_type == cuda]
                total = sum(e.device_time_total for e in events)
                for e in sorted(events, key=lambda e: -e.device_time_total):
                    rows.append(
                        {
                            "impl": name,
                            "tokens": tokens,
                            "kernel": e.key[:120],
                            "calls_per_layer": e.count / calls,
                            "us_per_layer": _round(e.device_time_total / calls),
                            "share": _round(e.device_time_total / total if total else math.nan),
                        }
                    )
        return rows


def logged_counts(loads: np.ndarray, tokens: int, top_k: int) -> np.ndarray:
    """A logged step's loads as integers, as logged when they form a top-k routing of its
    tokens (whole, summing to top_k*tokens, none above tokens), else scaled to it."""
    counts = np.rint(loads).astype(np.int64)
    if np.allclose(loads, counts) and counts.sum() == top_k * tokens and counts.max() <= tokens:
        return counts
    return scale_loads(loads, tokens, top_k)


def _relative_to_balanced(rows: list[dict], ep_rows: list[dict]) -> None:
    """cost_vs_balanced: time over the balanced routing's at the same T (and impl)."""
    base = {
        (r["tokens"], r["impl"]): r["time_ms"]
        for r in rows
        if r["routing"] == "balanced" and r.get("time_ms")
    }
    for r in rows:
        if r.get("time_ms") and (r["tokens"], r["impl"]) in base:
            r["cost_vs_balanced"] = _round(r["time_ms"] / base[(r["tokens"], r["impl"])])
    ep_base = {
        r["tokens"]: r["slowest_rank_ms"]
        for r in ep_rows
        if r["routing"] == "balanced" and r.get("slowest_rank_ms")
    }
    for r in ep_rows:
        if r.get("slowest_rank_ms") and r["tokens"] in ep_base:
            r["slowdown_vs_balanced"] = _round(r["slowest_rank_ms"] / ep_base[r["tokens"]])


def replay_summary(rows: list[dict]) -> list[dict]:
    """Per source, over all its replayed steps and per observed imbalance level (the
    step's expert max/mean, 2 decimals): the mean of each measured cost."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["source"], "all")].append(row)
        groups[(row["source"], f"{row['expert_max_mean']:.2f}")].append(row)
    measures = [
        *(f"{name}_cost" for name in TP_REPLAY_IMPLS),
        "rank_max_mean",
        "ep_measured_max_mean",
        "ep_vs_balanced",
    ]
    out = []
    for (source, level), members in sorted(
        groups.items(), key=lambda item: (item[0][0], item[0][1] != "all", item[0][1])
    ):
        summary = {
            "source": source,
            "expert_max_mean": level,
            "steps": len(members),
            "tokens_median": float(np.median([m["tokens"] for m in members])),
        }
        for key in measures:
            values = [m[key] for m in members if m.get(key) is not None]
            if values:
                summary[f"mean_{key}"] = _round(float(np.mean(values)))
        out.append(summary)
    return out


def _grid_lines(rows: list[dict], tokens: int) -> str:
    lines = []
    for r in rows:
        if r["tokens"] != tokens:
            continue
        if r.get("time_ms") is None:
            lines.append(f"  {r['routing']:<24} {r['impl']:<14} {r.get('status')}")
            continue
        lines.append(
            f"  {r['routing']:<24} {r['impl']:<14} {r['time_ms']:9.4f} ms "
            f"{r['tflops']:7.1f} TFLOP/s {r['gbps']:7.0f} GB/s "
            f"{r['frac_of_bound']:.2f} of {r['bound']} bound (err {r['rel_err']:.1e})"
        )
    return "\n".join(lines)


def _round(value: float | None, digits: int = 6):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return float(f"{value:.{digits}g}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


RESULT_COLUMNS = (
    "card",
    "impl",
    "tokens",
    "routing",
    "status",
    "rel_err",
    "time_ms",
    "time_p10_ms",
    "time_p90_ms",
    "round_spread",
    "reps",
    "tflops",
    "gbps",
    "bound",
    "bound_ms",
    "frac_of_bound",
    "cost_vs_balanced",
    "active_experts",
    "expert_max_mean",
    "rank_max_mean",
    "sets",
    "config",
)
EP_COLUMNS = (
    "card",
    "tokens",
    "routing",
    "ranks",
    "impl",
    "status",
    "rel_err",
    "rank_assignments_max",
    "rank_assignments_mean",
    "predicted_slowdown",
    "slowest_rank_ms",
    "mean_rank_ms",
    "measured_max_mean",
    "slowdown_vs_balanced",
)
STEP_COLUMNS = (
    "card",
    "source",
    "run",
    "layer",
    "step",
    "tokens",
    "active_experts",
    "expert_max_mean",
    "rank_max_mean",
    *(f"{name}_{what}" for name in TP_REPLAY_IMPLS for what in ("ms", "cost")),
    "ep_slowest_ms",
    "ep_mean_ms",
    "ep_measured_max_mean",
    "ep_vs_balanced",
)
ACCEPTANCE_COLUMNS = ("check", "tokens", "routing", "value", "limit", "passed")
# Acceptance of the Triton kernel: within 1.25x of torch._grouped_mm at T >= 2048 and within
# 1.5x of the bandwidth bound at T <= 32.
VS_GROUPED_MM = (2048, 1.25)
VS_BANDWIDTH = (32, 1.5)


def acceptance_rows(rows: list[dict], tolerance: float) -> list[dict]:
    """Every ratio the acceptance names, one row per (check, T, routing), misses included."""
    time = {(r["impl"], r["tokens"], r["routing"]): r for r in rows}
    out = []
    for r in rows:
        if r["impl"] != "triton":
            continue
        key = (r["tokens"], r["routing"])
        out.append(
            {
                "check": "triton_correct",
                "tokens": key[0],
                "routing": key[1],
                "value": r.get("rel_err"),
                "limit": tolerance,
                "passed": r.get("status") == "ok",
            }
        )
        other = time.get(("grouped_mm", *key), {})
        if r["tokens"] >= VS_GROUPED_MM[0] and r.get("time_ms") and other.get("time_ms"):
            ratio = r["time_ms"] / other["time_ms"]
            out.append(
                {
                    "check": "triton_over_grouped_mm",
                    "tokens": key[0],
                    "routing": key[1],
                    "value": _round(ratio),
                    "limit": VS_GROUPED_MM[1],
                    "passed": ratio <= VS_GROUPED_MM[1],
                }
            )
        if r["tokens"] <= VS_BANDWIDTH[0] and r.get("time_ms"):
            ratio = r["time_ms"] / r["bound_ms"]
            out.append(
                {
                    "check": f"triton_over_{r['bound']}_bound",
                    "tokens": key[0],
                    "routing": key[1],
                    "value": _round(ratio),
                    "limit": VS_BANDWIDTH[1],
                    "passed": ratio <= VS_BANDWIDTH[1],
                }
            )
    return out


def run_kernels(opts: BenchOptions, out_dir: Path) -> dict:
    """Run everything and write the tidy tables, figures and summary.md under out_dir."""
    bench = Bench(opts)
    console.print(f"kernels: {bench.info['card']} (torch {bench.info['torch']})")
    bench.bounds = probe_bounds(bench.clock, bench.device, opts)
    console.print(
        f"  copy {bench.bounds['copy_gbps']:.0f} GB/s, bf16 GEMM "
        f"{bench.bounds['gemm_tflops']:.1f} TFLOP/s"
    )
    tuning = bench.tune() if opts.tune and "triton" in opts.impls else []
    rows, ep_rows = bench.grid()
    sources = [spec.replay_source for spec in opts.routings if spec.kind == "replay"]
    steps = bench.replay_steps(sources) if opts.replay_steps > 0 else []
    profile = bench.kernel_breakdown() if opts.profile and bench.clock.cuda else []
    acceptance = acceptance_rows(rows, opts.tolerance)
    replayed = replay_summary(steps)
    card = bench.info["card"]
    tables = {
        "results": (rows, RESULT_COLUMNS),
        "ep": (ep_rows, EP_COLUMNS),
        "replay_steps": (steps, STEP_COLUMNS),
        "replay_summary": (replayed, None),
        "tuning": (
            tuning,
            ("tokens", "block_m", "kernel", "config", "time_ms", "status", "chosen"),
        ),
        "profile": (
            profile,
            ("impl", "tokens", "kernel", "calls_per_layer", "us_per_layer", "share"),
        ),
        "acceptance": (acceptance, ACCEPTANCE_COLUMNS),
    }
    for name, (table, columns) in tables.items():
        for row in table:
            row.setdefault("card", card)
        if columns is None:
            columns = tuple(dict.fromkeys(k for row in table for k in row))
        atomic_write_text(out_dir / f"{name}.csv", csv_text(table, columns))
    run_info = {
        **bench.info,
        "bounds": bench.bounds,
        "shape": opts.shape.describe(),
        "dtype": opts.dtype,
        "tokens": list(opts.tokens),
        "routings": [spec.name for spec in opts.routings],
        "impls": opts.impls,
        "ep_ranks": opts.ep_ranks,
        "seed": opts.seed,
        "tolerance": opts.tolerance,
        "triton_configs": {
            str(tokens): config.describe() for tokens, config in bench.table.entries.items()
        }
        if bench.table
        else {},
    }
    atomic_write_json(out_dir / "run.json", run_info)
    plot_results(rows, ep_rows, steps, out_dir)
    failures = [r for r in [*rows, *ep_rows] if str(r.get("status", "")).startswith("incorrect")]
    misses = [a for a in acceptance if not a["passed"]]
    atomic_write_text(
        out_dir / "summary.md",
        summary_markdown(run_info, rows, ep_rows, replayed, acceptance),
    )
    return {
        "card": card,
        "copy_gbps": _round(bench.bounds["copy_gbps"]),
        "gemm_tflops": _round(bench.bounds["gemm_tflops"]),
        "timings": sum(1 for r in rows if r.get("time_ms")),
        "incorrect": [f"{r['impl']} T={r['tokens']} {r['routing']}" for r in failures],
        "acceptance_misses": [f"{a['check']} T={a['tokens']} {a['routing']}" for a in misses],
        "acceptance_checks": len(acceptance),
    }


def summary_markdown(info, rows, ep_rows, replay, acceptance) -> str:
    bounds = info["bounds"]
    parts = [
        f"# MoE layer kernels on {info['card']}\n",
        f"torch {info['torch']}, triton {info['triton']}, transformers {info['transformers']}; "
        f"shape H,I,E,k = {info['shape']}; EP ranks {info['ep_ranks']}.\n",
        f"Measured bounds: copy {bounds['copy_gbps']:.0f} GB/s (read + write), "
        f"{info['dtype']} GEMM {bounds['gemm_tflops']:.1f} TFLOP/s ({bounds['gemm_n']}^3).\n",
        "\n## Acceptance ratios (every one, misses included)\n\n",
        markdown_table(
            [a for a in acceptance if a["check"] != "triton_correct"], ACCEPTANCE_COLUMNS
        ),
        "\n## Results (median of the timed repeats)\n\n",
        markdown_table(
            rows,
            (
                "tokens",
                "routing",
                "impl",
                "status",
                "time_ms",
                "tflops",
                "gbps",
                "bound",
                "frac_of_bound",
                "cost_vs_balanced",
                "rel_err",
            ),
        ),
        f"\n## EP view ({info['ep_ranks']} ranks, contiguous placement, Triton shards)\n\n",
        markdown_table(
            ep_rows,
            (
                "tokens",
                "routing",
                "predicted_slowdown",
                "measured_max_mean",
                "slowest_rank_ms",
                "slowdown_vs_balanced",
                "status",
            ),
        ),
    ]
    if replay:
        columns = tuple(dict.fromkeys(k for row in replay for k in row if k != "card"))
        parts += [
            "\n## Replayed logged steps at their own size\n\n",
            markdown_table(replay, columns),
        ]
    return "".join(parts)
