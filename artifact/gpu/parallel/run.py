"""Entry point that torchrun starts on every rank: one Mixtral MoE layer, TP vs EP.

    torchrun --nproc-per-node 2 -m artifact.gpu.parallel.run --out OUT [options]

CUDA + NCCL where torch sees a GPU (rank i of a node on GPU LOCAL_RANK), else CPU + gloo
(`--device cpu`: a functional run; its timings are only a smoke test). Several nodes go
through torchrun's rendezvous (--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT).
Rank 0 writes the outputs under --out (see artifact.gpu.parallel.bench and report), last
summary.json (or, on a usage or input error, summary.json holding only that `error`).
Exit status: 0 when every configuration matched the reference, 1 when one did not, 2 on a
usage or input error (printed as one line by rank 0); torchrun itself exits 1 on any
worker's failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from artifact.core.console import console
from artifact.core.errors import ArtifactError
from artifact.core.io import atomic_write_json
from artifact.gpu.parallel.options import MULTICAST_OFF, add_options, parse_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchrun ... -m artifact.gpu.parallel.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (rank 0)")
    add_options(parser)
    return parser


def _device(choice: str | None):
    import torch

    cuda = torch.cuda.is_available() if choice is None else choice == "cuda"
    if not cuda:
        return torch.device("cpu"), "gloo"
    if not torch.cuda.is_available():
        raise ArtifactError("--device cuda: torch sees no GPU here (use --device cpu)")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise ArtifactError(
            f"local rank {local} but only {torch.cuda.device_count()} GPU(s): lower "
            "--nproc-per-node"
        )
    torch.cuda.set_device(local)
    return torch.device("cuda", local), "nccl"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for key, value in MULTICAST_OFF.items():
        os.environ.setdefault(key, value)
    rank = int(os.environ.get("RANK", "0"))
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        console.print("[red]error[/]: start this with torchrun (RANK and WORLD_SIZE unset)")
        return 2
    import torch.distributed as dist

    from artifact.gpu.parallel.bench import ParallelBench

    try:
        opts = parse_options(args)
        device, backend = _device(opts.device)
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
        summary = ParallelBench(opts, device).run(args.out)
    except ArtifactError as exc:
        if rank == 0:
            console.print(f"[red]error[/]: {exc}", soft_wrap=True)
            atomic_write_json(args.out / "summary.json", {"error": str(exc)})
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if summary["incorrect"] and rank == 0:
        console.print(f"[red]incorrect[/]: {', '.join(summary['incorrect'])}", soft_wrap=True)
    return 1 if summary["incorrect"] else 0


if __name__ == "__main__":
    sys.exit(main())
