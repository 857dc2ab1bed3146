"""Stage `parallel` (GPU only, run on its own: `moe-artifact parallel`, `nox -s parallel`).

One Mixtral-8x7B MoE layer (bf16) sharded over R GPUs of this machine with torch.distributed
and NCCL, launched by torchrun: tensor parallel (intermediate dimension split, all-reduce)
against expert parallel with all-gather + reduce-scatter (vLLM 0.11's AgRs manager) and
with all-to-all dispatch and combine, under uniform, Zipf-skewed and replayed routing, with
vLLM's linear expert placement and an EPLB-style rebalanced one. Outputs checked against
the float64 single-GPU reference, then timed per phase (compute vs communication) on every
rank; bytes moved, per-rank load max/mean, the imbalance cost model, where EP beats TP and
what rebalancing recovers. See artifact.gpu.parallel and docs/parallel.md.

Replay sources (`--replay [NAME=]PATH`, repeatable): routing logs, gate-log folders or a
moe-expert-loads file. Without --replay the stage replays this run's bench routing logs
(`ours`) when they exist and the original study's TP-run gate logs (`study-steps`,
`study-layers`, artifact.study.parallel_loads) when $MOE_ARTIFACT_STUDY_DATA is set,
written to `parallel/replay_loads.json` first. `--device cpu` runs the same code on CPU
with gloo (a functional smoke run; use a small --shape).

Outputs under `parallel/`: results.csv (per T x routing x mode x placement), sets.csv (per
timed input set: the cost model's points), phases.csv (per rank and phase: ms and bytes),
fit.csv, crossover.csv, eplb.csv, run.json, summary.json, summary.md, parallel.png,
torchrun.log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from artifact.core.console import console
from artifact.core.errors import ArtifactError, StageFailed
from artifact.core.io import read_json
from artifact.core.runner import Stage, StageContext, StageOutcome
from artifact.gpu.parallel.options import (
    MULTICAST_OFF,
    OPTIONS,
    add_options,
    parse_options,
    to_argv,
)
from artifact.study import STUDY_ENV, STUDY_GATE_LOGS

REPO = Path(__file__).resolve().parents[2]


class ParallelStage(Stage):
    name = "parallel"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        add_options(parser)
        parser.add_argument(
            "--nproc-per-node",
            type=int,
            default=None,
            help="ranks (GPUs) to use; default every GPU torch sees (2 with --device cpu)",
        )

    def _replay_specs(self, ctx: StageContext) -> list[str]:
        """Explicit --replay, else this run's bench logs (the study's are added apart)."""
        from artifact.gpu.kernels.loads import replay_specs

        return replay_specs(ctx.args.replay, ctx.layout)

    def extra_inputs(self, ctx: StageContext) -> dict[str, str]:
        from artifact.gpu.kernels.loads import fingerprint

        options = {flag: getattr(ctx.args, flag[2:].replace("-", "_"), None) for flag, _ in OPTIONS}
        options["nproc_per_node"] = getattr(ctx.args, "nproc_per_node", None)
        inputs = {"options": hashlib.sha256(json.dumps(options, default=str).encode()).hexdigest()}
        paths = [Path(spec.partition("=")[2] or spec) for spec in self._replay_specs(ctx)]
        if ctx.args.replay is None and os.environ.get(STUDY_ENV):
            paths.append(Path(os.environ[STUDY_ENV]) / STUDY_GATE_LOGS["study-baseline"])
        for path in paths:
            if path.exists():
                inputs[f"replay:{path}"] = fingerprint(path)
        return inputs

    def _replay_file(self, ctx: StageContext, shape) -> Path | None:
        """The default replay sources of the layer's shape, written into one loads file."""
        from artifact.gpu.kernels.loads import read_sources, write_loads_file
        from artifact.study.parallel_loads import study_sources

        sources = [s for spec in self._replay_specs(ctx) for s in read_sources(spec)]
        study = os.environ.get(STUDY_ENV)
        if study:
            sources += study_sources(Path(study), max_rows=2000, seed=0)
        for s in sources:
            if (s.num_experts, s.top_k) != (shape.experts, shape.top_k):
                console.print(
                    f"parallel: not replaying '{s.name}' (top-{s.top_k} of {s.num_experts} "
                    f"experts; the layer is top-{shape.top_k} of {shape.experts})"
                )
        sources = [s for s in sources if (s.num_experts, s.top_k) == (shape.experts, shape.top_k)]
        if not sources:
            return None
        path = ctx.layout.parallel_replay_loads
        write_loads_file(path, sources)
        return path

    def _ranks(self, args: argparse.Namespace) -> int:
        if args.nproc_per_node is not None:
            if args.nproc_per_node < 1:
                raise ArtifactError("--nproc-per-node must be >= 1")
            return args.nproc_per_node
        if args.device == "cpu":
            return 2
        import torch

        count = torch.cuda.device_count()
        if count < 2:
            raise ArtifactError(
                f"the parallel stage needs at least 2 GPUs and torch sees {count}; run it on a "
                "multi-GPU machine (or pass --device cpu with a small --shape for a smoke run)"
            )
        return count

    def run(self, ctx: StageContext) -> StageOutcome:
        args = ctx.args
        out = ctx.stage_dir(self.name)
        from artifact.gpu.parallel.bench import plan

        ranks = self._ranks(args)
        checked = plan(parse_options(args), ranks)  # one-line errors here, not from each rank
        argv = to_argv(args)
        kinds = {k.strip() for k in args.routings.split(",")}
        if args.replay is None and kinds & {"all", "replay"}:
            replay = self._replay_file(ctx, checked.shape)
            if replay is not None:
                argv += ["--replay", str(replay)]
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(ranks),
            "-m",
            "artifact.gpu.parallel.run",
            "--out",
            str(out),
            *argv,
        ]
        env = {**os.environ, **MULTICAST_OFF}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        summary_path = ctx.layout.parallel_summary
        summary_path.unlink(missing_ok=True)
        console.print(f"parallel: {' '.join(command[2:])}", soft_wrap=True)
        with (
            open(ctx.layout.parallel_log, "w", encoding="utf-8") as log,
            subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ) as proc,
        ):
            assert proc.stdout is not None  # stdout=PIPE
            for line in proc.stdout:  # to the terminal as it comes, and to the log
                log.write(line)
                sys.stderr.write(line)
        if not summary_path.exists():
            raise StageFailed(
                f"torchrun exited with status {proc.returncode} before the benchmark finished; "
                f"log: {ctx.layout.parallel_log}"
            )
        summary = read_json(summary_path)
        if "error" in summary:
            raise ArtifactError(summary["error"])
        if summary["incorrect"]:
            raise StageFailed(
                f"{len(summary['incorrect'])} configuration(s) did not match the reference "
                f"(outputs kept in {out}): {', '.join(summary['incorrect'][:5])}"
            )
        return StageOutcome(
            summary=f"{summary['card']}: {summary['ranks']} ranks, {summary['timed']} "
            f"configurations timed, all within the reference's tolerance",
            details=summary,
        )


STAGE = ParallelStage()
