"""This project's fused MoE layer in Triton: three kernels and a sum.

1. `_align_kernel` (one program): counts each expert's assignments, pads every expert's run
   to a multiple of BLOCK_M, and scatters the assignment ids (token*top_k + slot) into
   `sorted_ids` in expert order (stable, so rows of one expert stay in token order); padding
   slots hold the sentinel num_ids. It also writes the expert of every BLOCK_M block and the
   padded total. Ids outside 0..E-1 (experts of another EP rank) are left out.
2. `_gate_up_kernel`: one grouped GEMM launch for the gate and up projections. A program
   owns BLOCK_M sorted rows (one expert) x BLOCK_N intermediate columns; it gathers its
   token rows of x, multiplies them by the expert's gate and up tiles into two fp32
   accumulators and writes silu(gate) * up (SwiGLU fused: the 2I-wide projection output
   never reaches memory) to `h`, row for row in sorted order (padding rows get zeros).
3. `_down_kernel`: one grouped GEMM launch for the down projection over the contiguous rows
   of `h`; the epilogue scales each row by its routing weight and scatters it to its
   assignment's row of `out` (T*top_k, H).
4. `out.view(T, top_k, H).sum(1)`: the top-k combine, accumulated in fp32.

Programs are ordered in groups of GROUP_M row blocks per column block, so the programs that
read one expert's weight tile run together and the tile is fetched from HBM once. Blocks
past the padded total exit at once: the grid is sized without a device-to-host sync.
Block sizes and warps are `MoEConfig`s, chosen per token count (artifact.gpu.kernels.bench
times the candidates on the card: `--tune`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

GROUP_M = 8  # row blocks per group in the program order (see the module docstring)


@dataclass(frozen=True)
class GemmConfig:
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    # Weight tiles through the tensor memory accelerator (a host-side TensorDescriptor;
    # Hopper and later) instead of pointer loads.
    tma: bool = False

    def describe(self) -> str:
        tma = "-tma" if self.tma else ""
        return f"n{self.block_n}k{self.block_k}w{self.num_warps}s{self.num_stages}{tma}"


@dataclass(frozen=True)
class MoEConfig:
    block_m: int
    gate_up: GemmConfig
    down: GemmConfig
    group_m: int = GROUP_M

    def describe(self) -> str:
        return f"m{self.block_m} gate_up {self.gate_up.describe()} down {self.down.describe()}"


# Candidates the tuner times: short row blocks stream weights (decode), tall ones are
# compute tiles for Hopper's wgmma. gate_up holds two accumulators (gate and up), so its
# tiles are half as wide as down's.
SMALL_M_CANDIDATES = (
    GemmConfig(64, 128, 4, 4),
    GemmConfig(32, 128, 4, 4),
    GemmConfig(32, 256, 4, 3),
    GemmConfig(128, 128, 4, 3),
    GemmConfig(64, 128, 4, 4, tma=True),
)
LARGE_M_CANDIDATES = {
    "gate_up": (
        GemmConfig(64, 64, 4, 4),
        GemmConfig(128, 64, 8, 3),
        GemmConfig(128, 64, 8, 4),
        GemmConfig(64, 64, 4, 4, tma=True),
        GemmConfig(128, 64, 8, 4, tma=True),
    ),
    "down": (
        GemmConfig(128, 64, 4, 4),
        GemmConfig(128, 64, 8, 4),
        GemmConfig(256, 64, 8, 3),
        GemmConfig(128, 128, 8, 3),
        GemmConfig(128, 64, 8, 4, tma=True),
        GemmConfig(256, 64, 8, 3, tma=True),
    ),
}
# Untuned defaults (the tuner's winners on an H200, docs/kernels.md): for short row blocks
# (streaming weights) and for tall ones (compute tiles).
DEFAULT_GEMM = {
    "short": {"gate_up": GemmConfig(128, 128, 4, 3), "down": GemmConfig(32, 256, 4, 3)},
    "tall": {
        "gate_up": GemmConfig(128, 64, 8, 4, tma=True),
        "down": GemmConfig(256, 64, 8, 3, tma=True),
    },
}


def per_expert(tokens: int, num_experts: int, top_k: int) -> float:
    return tokens * top_k / num_experts


def block_m_candidates(tokens: int, num_experts: int, top_k: int) -> tuple[int, ...]:
    """Row block heights worth timing.

    Up to 64 tokens, the one height that holds any expert's whole load (an expert gets a
    token at most once): however skewed the routing, no expert's weights are streamed by
    two row blocks. Above, the up to three tallest heights no taller than twice an expert's
    mean load.
    """
    cover = max(16, triton.next_power_of_2(tokens))
    if cover <= 64:
        return (cover,)
    load = per_expert(tokens, num_experts, top_k)
    fits = [m for m in (16, 32, 64, 128) if m <= max(16.0, 2 * load)]
    return tuple(fits[-3:])


def gemm_candidates(block_m: int, kernel: str) -> tuple[GemmConfig, ...]:
    """Candidates for `kernel` (gate_up or down) with row blocks of block_m."""
    return SMALL_M_CANDIDATES if block_m <= 32 else LARGE_M_CANDIDATES[kernel]


def default_config(tokens: int, num_experts: int, top_k: int) -> MoEConfig:
    block_m = block_m_candidates(tokens, num_experts, top_k)[-1]
    gemm = DEFAULT_GEMM["short" if block_m <= 32 else "tall"]
    return MoEConfig(block_m, gemm["gate_up"], gemm["down"])


@dataclass
class ConfigTable:
    """Tuned configs by token count. A call with T tokens takes the entry of the smallest
    tuned count >= T (its row blocks are at least as tall: the decode rule of
    `block_m_candidates` still holds), else of the largest; an empty table, the defaults."""

    entries: dict[int, MoEConfig]

    def lookup(self, tokens: int, num_experts: int, top_k: int) -> MoEConfig:
        if not self.entries:
            return default_config(tokens, num_experts, top_k)
        above = [t for t in self.entries if t >= tokens]
        return self.entries[min(above) if above else max(self.entries)]


@triton.jit
def _tile(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    width = GROUP_M * num_pid_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (pid % width) % size_m, (pid % width) // size_m


@triton.jit(do_not_specialize=["num_ids", "max_padded", "max_blocks"])
def _align_kernel(
    ids_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    num_padded_ptr,
    num_ids,
    num_experts,
    max_padded,
    max_blocks,
    BLOCK_M: tl.constexpr,
    E_POW2: tl.constexpr,
    CHUNK: tl.constexpr,
):
    experts = tl.arange(0, E_POW2)
    counts = tl.zeros([E_POW2], dtype=tl.int32)
    for start in range(0, num_ids, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        e = tl.load(ids_ptr + offs, mask=offs < num_ids, other=-1)
        hit = (e[:, None] == experts[None, :]) & (experts[None, :] < num_experts)
        counts += tl.sum(hit.to(tl.int32), axis=0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    tl.store(num_padded_ptr, tl.sum(padded, axis=0))
    for start in range(0, max_padded, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        sentinel = tl.full([CHUNK], 0, tl.int32) + num_ids
        tl.store(sorted_ids_ptr + offs, sentinel, mask=offs < max_padded)
    for start in range(0, max_blocks, CHUNK):
        block = start + tl.arange(0, CHUNK)
        owner = tl.sum((ends[None, :] <= block[:, None] * BLOCK_M).to(tl.int32), axis=1)
        owner = tl.minimum(owner, num_experts - 1)
        tl.store(block_expert_ptr + block, owner, mask=block < max_blocks)
    # The sentinel fill above and the scatter below write the same slots.
    tl.debug_barrier()
    seen = tl.zeros([E_POW2], dtype=tl.int32)
    for start in range(0, num_ids, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        e = tl.load(ids_ptr + offs, mask=offs < num_ids, other=-1)
        hit = ((e[:, None] == experts[None, :]) & (experts[None, :] < num_experts)).to(tl.int32)
        before = tl.cumsum(hit, axis=0) - hit
        dest = tl.sum(((starts + seen)[None, :] + before) * hit, axis=1)
        tl.store(sorted_ids_ptr + dest, offs, mask=tl.sum(hit, axis=1) > 0)
        seen += tl.sum(hit, axis=0)


@triton.jit(do_not_specialize=["num_ids", "max_blocks"])
def _gate_up_kernel(
    x_ptr,
    w_ptr,
    w_desc,
    h_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    num_padded_ptr,
    num_ids,
    top_k,
    hidden,
    intermediate,
    max_blocks,
    stride_xt,
    stride_we,
    stride_wn,
    stride_hm,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    pid_m, pid_n = _tile(tl.program_id(0), max_blocks, tl.cdiv(intermediate, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ids = tl.load(sorted_ids_ptr + offs_m)
    row_ok = ids < num_ids
    token = (ids // top_k).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < intermediate
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + token[:, None] * stride_xt + offs_k[None, :]
    g_ptrs = w_ptr + expert * stride_we + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
    u_ptrs = g_ptrs + intermediate * stride_wn
    # Row of this tile's gate rows in w viewed as (E * 2I, H); its up rows follow I later.
    w_row = (expert * 2 * intermediate + pid_n * BLOCK_N).to(tl.int32)
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(hidden, BLOCK_K)):
        k_ok = offs_k < hidden - k * BLOCK_K
        if EVEN:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
        else:
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if USE_TMA:
            g = w_desc.load([w_row, k * BLOCK_K]).T
            u = w_desc.load([w_row + intermediate, k * BLOCK_K]).T
        elif EVEN:
            g = tl.load(g_ptrs)
            u = tl.load(u_ptrs)
        else:
            g = tl.load(g_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            u = tl.load(u_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc_g = tl.dot(a, g, acc_g)
        acc_u = tl.dot(a, u, acc_u)
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    h_ptrs = h_ptr + offs_m[:, None].to(tl.int64) * stride_hm + offs_n[None, :]
    tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=n_ok[None, :])


@triton.jit(do_not_specialize=["num_ids", "max_blocks"])
def _down_kernel(
    h_ptr,
    w_ptr,
    w_desc,
    out_ptr,
    weights_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    num_padded_ptr,
    num_ids,
    hidden,
    intermediate,
    max_blocks,
    stride_hm,
    stride_we,
    stride_wn,
    stride_ot,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    pid_m, pid_n = _tile(tl.program_id(0), max_blocks, tl.cdiv(hidden, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ids = tl.load(sorted_ids_ptr + offs_m)
    row_ok = ids < num_ids
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < hidden
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = h_ptr + offs_m[:, None].to(tl.int64) * stride_hm + offs_k[None, :]
    b_ptrs = w_ptr + expert * stride_we + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
    # Row of this tile in w viewed as (E * H, I).
    w_row = (expert * hidden + pid_n * BLOCK_N).to(tl.int32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(intermediate, BLOCK_K)):
        k_ok = offs_k < intermediate - k * BLOCK_K
        if EVEN:  # noqa: SIM108 - a compile-time branch of the kernel
            a = tl.load(a_ptrs)
        else:
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
        if USE_TMA:
            b = w_desc.load([w_row, k * BLOCK_K]).T
        elif EVEN:
            b = tl.load(b_ptrs)
        else:
            b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    scale = tl.load(weights_ptr + ids, mask=row_ok, other=0.0)
    acc = acc * scale[:, None]
    out_ptrs = out_ptr + ids[:, None].to(tl.int64) * stride_ot + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@dataclass
class Plan:
    """Assignments sorted by expert and padded to row blocks (the output of `align`)."""

    sorted_ids: torch.Tensor  # (max_blocks * block_m,) int32
    block_expert: torch.Tensor  # (max_blocks,) int32
    num_padded: torch.Tensor  # (1,) int32
    block_m: int
    max_blocks: int
    num_ids: int
    top_k: int


def _weight_desc(w: torch.Tensor, config: GemmConfig):
    """w (E, N, K) as a (E * N, K) TensorDescriptor of (block_n, block_k) tiles, or None.

    A tile past an expert's last row reads the next expert's rows; those columns of the
    result are never stored. Tiles past K are zero-filled.
    """
    if not config.tma:
        return None
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor.from_tensor(w.view(-1, w.shape[-1]), [config.block_n, config.block_k])


def align(ids: torch.Tensor, num_experts: int, block_m: int) -> Plan:
    num_ids = ids.numel()
    # Each expert's padding adds at most one block.
    max_blocks = triton.cdiv(num_ids, block_m) + num_experts
    device = ids.device
    sorted_ids = torch.empty(max_blocks * block_m, dtype=torch.int32, device=device)
    block_expert = torch.empty(max_blocks, dtype=torch.int32, device=device)
    num_padded = torch.empty(1, dtype=torch.int32, device=device)
    _align_kernel[(1,)](
        ids.reshape(-1).contiguous(),
        sorted_ids,
        block_expert,
        num_padded,
        num_ids,
        num_experts,
        sorted_ids.numel(),
        max_blocks,
        BLOCK_M=block_m,
        E_POW2=triton.next_power_of_2(num_experts),
        CHUNK=1024,
        num_warps=4,
    )
    return Plan(sorted_ids, block_expert, num_padded, block_m, max_blocks, num_ids, ids.shape[1])


def gate_up(
    x: torch.Tensor,
    w13: torch.Tensor,
    plan: Plan,
    config: GemmConfig,
    group_m: int,
    *,
    poison: bool = False,
) -> torch.Tensor:
    """silu(x W_gate^T) * (x W_up^T) per sorted row: (max_blocks * block_m, I)."""
    hidden, intermediate = x.shape[1], w13.shape[1] // 2
    size = (plan.sorted_ids.numel(), intermediate)
    if poison:
        h = torch.full(size, float("nan"), dtype=x.dtype, device=x.device)
    else:
        h = torch.empty(size, dtype=x.dtype, device=x.device)
    grid = (plan.max_blocks * triton.cdiv(intermediate, config.block_n),)
    _gate_up_kernel[grid](
        x,
        w13,
        _weight_desc(w13, config),
        h,
        plan.sorted_ids,
        plan.block_expert,
        plan.num_padded,
        plan.num_ids,
        plan.top_k,
        hidden,
        intermediate,
        plan.max_blocks,
        x.stride(0),
        w13.stride(0),
        w13.stride(1),
        h.stride(0),
        BLOCK_M=plan.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        GROUP_M=group_m,
        EVEN=hidden % config.block_k == 0 and intermediate % config.block_n == 0,
        USE_TMA=config.tma,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return h


def down(
    h: torch.Tensor,
    w2: torch.Tensor,
    plan: Plan,
    weights: torch.Tensor,
    config: GemmConfig,
    group_m: int,
    *,
    partial: bool = False,
    poison: bool = False,
) -> torch.Tensor:
    """Per assignment (T*top_k, H): its expert's down projection times its routing weight.

    partial: some assignments go to experts held elsewhere; their rows are zero.
    """
    hidden, intermediate = w2.shape[1], w2.shape[2]
    size = (plan.num_ids, hidden)
    if partial:
        out = torch.zeros(size, dtype=h.dtype, device=h.device)
    elif poison:
        out = torch.full(size, float("nan"), dtype=h.dtype, device=h.device)
    else:
        out = torch.empty(size, dtype=h.dtype, device=h.device)
    grid = (plan.max_blocks * triton.cdiv(hidden, config.block_n),)
    _down_kernel[grid](
        h,
        w2,
        _weight_desc(w2, config),
        out,
        weights.reshape(-1).contiguous(),
        plan.sorted_ids,
        plan.block_expert,
        plan.num_padded,
        plan.num_ids,
        hidden,
        intermediate,
        plan.max_blocks,
        h.stride(0),
        w2.stride(0),
        w2.stride(1),
        out.stride(0),
        BLOCK_M=plan.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        GROUP_M=group_m,
        EVEN=intermediate % config.block_k == 0 and hidden % config.block_n == 0,
        USE_TMA=config.tma,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    *,
    config: MoEConfig | None = None,
    partial: bool = False,
    poison: bool = False,
) -> torch.Tensor:
    """The MoE layer: x (T, H), w13 (E, 2I, H), w2 (E, H, I), ids (T, k), weights (T, k).

    partial: ids may name experts outside 0..E-1 (held by another EP rank): they add nothing.
    poison: fill the intermediate and per-assignment buffers with NaN first, so an element
    the kernels fail to write shows up as NaN in the result.
    """
    tokens, top_k = ids.shape
    num_experts = w13.shape[0]
    config = config or default_config(tokens, num_experts, top_k)
    x, w13, w2 = x.contiguous(), w13.contiguous(), w2.contiguous()
    plan = align(ids, num_experts, config.block_m)
    h = gate_up(x, w13, plan, config.gate_up, config.group_m, poison=poison)
    out = down(h, w2, plan, weights, config.down, config.group_m, partial=partial, poison=poison)
    return out.view(tokens, top_k, -1).sum(1)
