"""Options and names of the parallel benchmark: one table drives the parser of `python -m
artifact.gpu.parallel.run` (what torchrun starts on every rank), the `parallel` stage's parser
and the argument list the stage hands to torchrun. Torch-free, so the CLI can import it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from artifact.core.errors import ArtifactError
from artifact.gpu.kernels.loads import LoadSource, read_sources

MODES = ("tp", "ep-agrs", "ep-a2a")
IMPLS = ("grouped_mm", "loop", "triton")  # single-GPU implementations (artifact.gpu.kernels.layer)
# Phases of the layer calls (artifact.gpu.parallel.layer) that communicate; the others compute.
COMM_PHASES = frozenset(
    {"allreduce", "allgather", "reducescatter", "counts", "dispatch", "combine"}
)

# The device machines require NVLink multicast off; set in every environment launched here.
MULTICAST_OFF = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}

# (flag, argparse keywords); every value stays the text given, parsed by parse_options.
OPTIONS: tuple[tuple[str, dict], ...] = (
    ("--shape", {"default": "4096,14336,8,2", "help": "hidden,intermediate,experts,top_k"}),
    ("--tokens", {"default": "32,256,2048,8192", "help": "tokens per rank (T), comma list"}),
    (
        "--routings",
        {"default": "uniform,zipf,replay", "help": "balanced,uniform,zipf,replay or all"},
    ),
    ("--zipf", {"default": "1.2", "help": "Zipf exponents of the skewed routing, comma list"}),
    (
        "--replay",
        {
            "action": "append",
            "default": None,
            "metavar": "[NAME=]PATH",
            "help": "routing logs, gate logs or a moe-expert-loads file to replay (repeatable)",
        },
    ),
    ("--modes", {"default": "tp,ep-agrs,ep-a2a", "help": "tp,ep-agrs,ep-a2a (comma list)"}),
    (
        "--placements",
        {
            "default": "linear,eplb:0,eplb",
            "help": "EP placements: linear, eplb:N (N redundant slots), eplb (N = R)",
        },
    ),
    ("--impl", {"default": "grouped_mm", "help": "per-rank compute: grouped_mm, loop, triton"}),
    (
        "--dtype",
        {
            "default": "bfloat16",
            "choices": ("bfloat16", "float16", "float32", "float64"),
            "help": "weights and activations",
        },
    ),
    (
        "--device",
        {
            "default": None,
            "choices": ("cuda", "cpu"),
            "help": "cuda (NCCL) or cpu (gloo); default cuda where torch sees a GPU",
        },
    ),
    ("--seed", {"default": "0", "help": "seed of weights, inputs and routings"}),
    ("--sets", {"default": "4", "help": "input sets timed per configuration"}),
    ("--reps", {"default": "16", "help": "timed layer calls per input set"}),
    ("--warmup", {"default": "2", "help": "untimed calls per input set first"}),
    ("--tolerance", {"default": "0.01", "help": "relative error limit against float64"}),
)


def add_options(parser: argparse.ArgumentParser) -> None:
    for flag, kwargs in OPTIONS:
        parser.add_argument(flag, **kwargs)


def to_argv(args: argparse.Namespace) -> list[str]:
    """The options of `args` as an argument list for `python -m artifact.gpu.parallel.run`."""
    argv = []
    for flag, kwargs in OPTIONS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        for item in value if kwargs.get("action") == "append" else [value]:
            argv += [flag, str(item)]
    return argv


@dataclass
class ParsedOptions:
    """The options, checked; shape and routings are built where torch is at hand."""

    shape: str
    tokens: tuple[int, ...]
    kinds: str
    zipf: tuple[float, ...]
    sources: list[LoadSource]
    modes: tuple[str, ...]
    placements: str
    impl: str
    dtype: str
    device: str | None
    seed: int
    sets: int
    reps: int
    warmup: int
    tolerance: float


def _numbers(text: str, what: str, kind=int) -> tuple:
    try:
        return tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise ArtifactError(f"--{what} {text!r}: expected a comma list of numbers") from None


def _count(text: str, what: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ArtifactError(f"--{what} {text!r}: expected an integer") from None
    if value < least:
        raise ArtifactError(f"--{what} must be >= {least}, got {value}")
    return value


def parse_options(args: argparse.Namespace) -> ParsedOptions:
    tokens = _numbers(args.tokens, "tokens")
    if min(tokens) < 1:
        raise ArtifactError("--tokens: token counts must be >= 1")
    modes = tuple(m.strip() for m in args.modes.split(","))
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ArtifactError(f"unknown mode {bad[0]!r}; choose from {', '.join(MODES)}")
    if args.impl not in IMPLS:
        raise ArtifactError(f"unknown --impl {args.impl!r}; choose from {', '.join(IMPLS)}")
    sources = [s for spec in args.replay or [] for s in read_sources(spec)]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ArtifactError(f"replay source names repeat ({', '.join(names)}); name them NAME=PATH")
    return ParsedOptions(
        shape=args.shape,
        tokens=tokens,
        kinds=args.routings,
        zipf=_numbers(args.zipf, "zipf", float),
        sources=sources,
        modes=modes,
        placements=args.placements,
        impl=args.impl,
        dtype=args.dtype,
        device=args.device,
        seed=_count(args.seed, "seed", 0),
        sets=_count(args.sets, "sets", 1),
        reps=_count(args.reps, "reps", 1),
        warmup=_count(args.warmup, "warmup", 0),
        tolerance=float(_numbers(args.tolerance, "tolerance", float)[0]),
    )
