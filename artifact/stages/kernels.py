"""Stage `kernels` (GPU only, run on its own: `moe-artifact kernels`, `nox -s kernels`).

One Mixtral-8x7B MoE layer (H 4096, I 14336, 8 experts, top-2, bf16) under each
implementation (per-expert loop, torch grouped GEMM, the engine's experts
implementations, this project's Triton kernel) for token counts from decode to large
prefill and routings drawn uniform, Zipf-skewed and replayed from routing logs: correctness
against float64 first, then device-event timings against the card's bandwidth and GEMM
rate measured in the same run, the EP slowest-rank view, and the replay of logged steps at
their own size. See artifact.gpu.kernels.bench and docs/kernels.md.

Replay sources (`--replay [NAME=]PATH`, repeatable): moe-routing logs, gate-log folders or
a loads file from `moe-artifact kernel-loads`. Without --replay the stage replays this run's
bench routing logs (as `ours`) when they exist, and the original study's gate logs when
$MOE_ARTIFACT_STUDY_DATA is set (`study-baseline`, `study-all2all`).

Outputs under `kernels/`: results.csv (tidy: impl x T x routing), ep.csv, replay_steps.csv,
replay_summary.csv, acceptance.csv (every ratio the acceptance names), tuning.csv,
profile.csv (device time per kernel), run.json (card, bounds, options), summary.md,
kernels.png, replay.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

from artifact.core.errors import ArtifactError, StageFailed
from artifact.core.runner import Stage, StageContext, StageOutcome
from artifact.study import STUDY_ENV

OPTION_KEYS = (
    "shape",
    "tokens",
    "routings",
    "zipf",
    "replay",
    "impls",
    "ep_ranks",
    "device",
    "dtype",
    "seed",
    "sets",
    "target_s",
    "min_reps",
    "max_reps",
    "replay_steps",
    "tune",
    "profile_kernels",
    "max_gather_gib",
    "tolerance",
    "copy_mib",
    "gemm_n",
)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError("token counts must be >= 1")
    return values


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


class KernelsStage(Stage):
    name = "kernels"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--shape", default="4096,14336,8,2", help="hidden,intermediate,experts,top_k"
        )
        parser.add_argument(
            "--tokens", type=_ints, default=(1, 32, 256, 2048, 8192, 16384), help="token counts"
        )
        parser.add_argument(
            "--routings", default="all", help="balanced,uniform,zipf,replay (comma list) or all"
        )
        parser.add_argument(
            "--zipf", type=_floats, default=(0.5, 1.0, 1.5, 2.0), help="Zipf exponents"
        )
        parser.add_argument(
            "--replay",
            action="append",
            default=None,
            metavar="[NAME=]PATH",
            help="a routing log (folder), gate-log folder or loads file to replay (repeatable)",
        )
        parser.add_argument(
            "--impls",
            default="all",
            help="loop,grouped_mm,hf-eager,hf-grouped_mm,hf-batched_mm,triton or all",
        )
        parser.add_argument("--ep-ranks", type=int, default=4, help="EP ranks of the EP view")
        parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
        parser.add_argument(
            "--dtype",
            choices=("bfloat16", "float16", "float32"),
            default="bfloat16",
            help="weights and activations (float16 for CPU runs of the Triton interpreter)",
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--sets", type=int, default=8, help="rotating input sets per timing")
        parser.add_argument(
            "--target-s", type=float, default=0.25, help="seconds of repeats per timing"
        )
        parser.add_argument(
            "--min-reps", type=int, default=16, help="fewest timed repeats per timing"
        )
        parser.add_argument(
            "--max-reps", type=int, default=200, help="most timed repeats per timing"
        )
        parser.add_argument(
            "--replay-steps", type=int, default=96, help="logged steps replayed per source"
        )
        parser.add_argument(
            "--no-tune",
            dest="tune",
            action="store_false",
            help="use the Triton kernel's default configs instead of timing the candidates",
        )
        parser.add_argument(
            "--no-profile",
            dest="profile_kernels",
            action="store_false",
            help="skip the per-kernel device-time breakdown (torch profiler)",
        )
        parser.add_argument(
            "--max-gather-gib",
            type=float,
            default=24.0,
            help="skip hf-batched_mm where it would gather more expert weights than this",
        )
        parser.add_argument(
            "--tolerance", type=float, default=1e-2, help="relative error limit vs float64"
        )
        parser.add_argument(
            "--copy-mib", type=int, default=None, help="copy-bandwidth probe size (MiB)"
        )
        parser.add_argument("--gemm-n", type=int, default=None, help="GEMM-rate probe size")

    def _replay_specs(self, ctx: StageContext) -> list[str]:
        from artifact.gpu.kernels.loads import replay_specs

        return replay_specs(ctx.args.replay, ctx.layout, study=os.environ.get(STUDY_ENV))

    def extra_inputs(self, ctx: StageContext) -> dict[str, str]:
        from artifact.gpu.kernels.loads import fingerprint

        options = {k: getattr(ctx.args, k, None) for k in OPTION_KEYS}
        inputs = {"options": hashlib.sha256(json.dumps(options, default=str).encode()).hexdigest()}
        for spec in self._replay_specs(ctx):
            path = Path(spec.partition("=")[2] or spec)
            if path.exists():
                inputs[f"replay:{spec}"] = fingerprint(path)
        return inputs

    def run(self, ctx: StageContext) -> StageOutcome:
        from artifact.gpu.kernels.bench import BenchOptions, run_kernels
        from artifact.gpu.kernels.layer import MoEShape, parse_implementations
        from artifact.gpu.kernels.loads import read_sources
        from artifact.gpu.kernels.routing import parse_routings

        args = ctx.args
        shape = MoEShape.parse(args.shape)
        sources = [s for spec in self._replay_specs(ctx) for s in read_sources(spec)]
        routings = parse_routings(
            args.routings, list(args.zipf), sources, shape.experts, shape.top_k
        )
        if args.ep_ranks < 1 or args.ep_ranks > shape.experts:
            raise ArtifactError(f"--ep-ranks must be 1..{shape.experts}, got {args.ep_ranks}")
        cpu = args.device == "cpu"
        opts = BenchOptions(
            shape=shape,
            tokens=tuple(args.tokens),
            routings=routings,
            impls=parse_implementations(args.impls),
            device=args.device,
            dtype=args.dtype,
            seed=args.seed,
            sets=args.sets,
            target_s=args.target_s,
            min_reps=args.min_reps,
            max_reps=args.max_reps,
            ep_ranks=args.ep_ranks,
            tune=args.tune,
            replay_steps=args.replay_steps if sources else 0,
            max_gather_gib=args.max_gather_gib,
            tolerance=args.tolerance,
            copy_mib=args.copy_mib or (64 if cpu else 2048),
            gemm_n=args.gemm_n or (256 if cpu else 8192),
            profile=args.profile_kernels,
        )
        details = run_kernels(opts, ctx.stage_dir(self.name))
        if details["incorrect"]:
            raise StageFailed(
                f"{len(details['incorrect'])} correctness check(s) failed (outputs kept in "
                f"{ctx.stage_dir(self.name)}): {', '.join(details['incorrect'][:5])}"
            )
        misses = details["acceptance_misses"]
        return StageOutcome(
            summary=f"{details['card']}: {details['timings']} timings, "
            f"{len(routings)} routings x T={','.join(map(str, opts.tokens))}; "
            f"{details['acceptance_checks'] - len(misses)}/{details['acceptance_checks']} "
            "acceptance ratios within their limits",
            details=details,
        )


STAGE = KernelsStage()
