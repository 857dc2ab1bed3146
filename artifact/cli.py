"""`moe-artifact` / `python -m artifact`: the pipeline stages and the standalone tools.

    moe-artifact <stage> [--profile P] [--run-dir D] [--force]   one stage
    moe-artifact reproduce [--profile P] [--run-dir D] [--force] every stage in order
    moe-artifact <tool> ...                                      predict, metrics, ...

Every command is a `Command` in COMMANDS. Only the chosen command's module is imported, and
only then are its options added, so `moe-artifact --help` loads no stage or tool.

Errors caused by input or configuration print one line and exit 2; a failed claim check
exits 1. SIGTERM (Slurm's scancel, nox after Ctrl-C) unwinds like Ctrl-C: servers are stopped,
finished units kept, the stage recorded as interrupted; exit 143 (Ctrl-C: 130).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from artifact import __version__
from artifact.core.runner import GPU_STAGES, PIPELINE, Stage, StageContext


class Command(Protocol):
    name: str
    help: str

    def configure_parser(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _common_stage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        default=None,
        help="profile name in reproduce/profiles or a YAML path "
        "(default: perlmutter when NERSC_HOST=perlmutter, else local)",
    )
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="run directory (default: runs/<profile>)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="redo the stage even if its record says complete, deleting its outputs first "
        "(without --force nothing is deleted: outputs made from changed inputs, or damaged, are "
        "moved to <run-dir>/<stage>.old-<time>/)",
    )


def _context(args: argparse.Namespace) -> StageContext:
    from artifact.config.profiles import default_profile_name, load_profile
    from artifact.core.manifest import RunDir

    profile = load_profile(args.profile or default_profile_name())
    out = getattr(args, "out", None)  # check/plots: write there, not in the run directory
    elsewhere = {name: out / name for name in ("check", "plots")} if out else None
    run_dir = RunDir(args.run_dir or Path("runs") / profile.name, elsewhere)
    return StageContext(profile=profile, run_dir=run_dir, force=args.force, args=args, out=out)


def _exit_code(ctx: StageContext, names: list[str]) -> int:
    """The largest exit code the stages recorded (check: 1 when a claim FAILed)."""
    code = 0
    for name in names:
        record = ctx.run_dir.record(name) or {}
        code = max(code, ctx.exit_codes.get(name, int(record.get("exit_code") or 0)))
    return code


def _run_one_stage(stage: Stage, args: argparse.Namespace) -> int:
    from artifact.core.console import console
    from artifact.core.runner import run_stage

    # A stage may run others first (plots runs check; --from-study imports the study first).
    stages = stage.steps(args)
    ctx = _context(args)
    status = ""
    for step in stages:
        status = run_stage(step, ctx)
    code = _exit_code(ctx, [stages[-1].name])
    if code and status == "skipped":
        record = ctx.run_dir.record(stages[-1].name) or {}
        console.print(f"[red]{stages[-1].name}[/]: as recorded: {record.get('summary')}")
    return code


@dataclass
class StageCommand:
    """A pipeline stage (or a GPU stage): the STAGE of module `artifact.stages.<name>`."""

    name: str
    help: str

    def load(self) -> Stage:
        from artifact.stages import load_stage

        return load_stage(self.name)

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        _common_stage_options(parser)
        self.load().configure_parser(parser)

    def run(self, args: argparse.Namespace) -> int:
        return _run_one_stage(self.load(), args)


class Tool(Protocol):
    """What a tool's module provides."""

    def configure_parser(self, parser: argparse.ArgumentParser) -> None: ...

    def run_tool(self, args: argparse.Namespace) -> int: ...


@dataclass
class ToolCommand:
    """A standalone tool; `load` imports its module."""

    name: str
    help: str
    load: Callable[[], Tool]

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        self.load().configure_parser(parser)

    def run(self, args: argparse.Namespace) -> int:
        return int(self.load().run_tool(args) or 0)


def _run_pipeline(args: argparse.Namespace) -> int:
    from artifact.core.console import console
    from artifact.core.runner import run_stage

    ctx = _context(args)
    for name in PIPELINE:
        stage = STAGES[name].load()
        # Stage-specific options keep their defaults when the whole pipeline runs.
        stage_parser = argparse.ArgumentParser(add_help=False)
        stage.configure_parser(stage_parser)
        stage_args = stage_parser.parse_args([])
        for key, value in vars(args).items():
            setattr(stage_args, key, value)
        ctx.args = stage_args
        run_stage(stage, ctx)
    code = _exit_code(ctx, list(PIPELINE))
    if code:
        console.print(
            f"[bold red]reproduce[/]: every stage ran in {ctx.run_dir.path}, "
            f"but a stage reported failure (exit code {code}; check: a claim FAILed)"
        )
        return code
    console.print(f"[bold green]reproduce[/]: every stage is complete in {ctx.run_dir.path}")
    return 0


class ReproduceCommand:
    name = "reproduce"
    help = "run every stage in order (skipping up-to-date ones)"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        _common_stage_options(parser)

    def run(self, args: argparse.Namespace) -> int:
        return _run_pipeline(args)


# Each tool loader imports one module, when its command is chosen.


def _predictor() -> Tool:
    from artifact.workload import predictor

    return predictor


def _metrics() -> Tool:
    from artifact.serving import metrics

    return metrics


def _bench_client() -> Tool:
    from artifact.serving import client

    return client


def _routing_tool() -> Tool:
    from artifact.routing import tool

    return tool


def _nsys() -> Tool:
    from artifact.profiling import nsys

    return nsys


def _provenance() -> Tool:
    from artifact.engines.vllm import provenance

    return provenance


def _plan() -> Tool:
    from artifact.stages import plan

    return plan


def _calibrate() -> Tool:
    from artifact.stages import calibrate

    return calibrate


def _kernel_loads() -> Tool:
    from artifact.gpu.kernels import loads

    return loads


def _parallel_loads() -> Tool:
    from artifact.study import parallel_loads

    return parallel_loads


STAGES: dict[str, StageCommand] = {
    c.name: c
    for c in (
        StageCommand(
            "install", "prepare the engine's model and tokenizer (seeded locally, hub/image on HPC)"
        ),
        StageCommand(
            "datasets", "generate the workload datasets and their predicted imbalance scores"
        ),
        StageCommand(
            "serve", "start each mode's server once, check health and record its provenance"
        ),
        StageCommand(
            "bench", "run the experiments (sweep, EPLB ablation, imbalance), capturing routing"
        ),
        StageCommand(
            "imbalance", "routing logs -> imbalance measures and their correlation with performance"
        ),
        StageCommand(
            "check", "judge every claim against the expected results (exit 1 when one FAILs)"
        ),
        StageCommand("plots", "regenerate every figure and table, and report.md / report.html"),
        StageCommand("kernels", "MoE layer kernel microbenchmarks under real routing (one GPU)"),
        StageCommand("parallel", "MoE layer TP vs EP over NCCL on this machine's GPUs (torchrun)"),
    )
}

TOOLS: tuple[ToolCommand, ...] = (
    ToolCommand(
        "predict",
        "predicted expert-load imbalance score of dataset files (JSONL with 'text')",
        _predictor,
    ),
    ToolCommand(
        "metrics",
        "metrics of benchmark traces (ours or the original study's); --verify result files",
        _metrics,
    ),
    ToolCommand(
        "bench-client",
        "benchmark an OpenAI-compatible server with a JSONL dataset (vLLM-format results)",
        _bench_client,
    ),
    ToolCommand(
        "imbalance-metrics",
        "expert-load imbalance of moe-routing logs or the study's gate logs: per-layer measures, "
        "EP rank load, the study's legacy methods",
        _routing_tool,
    ),
    ToolCommand(
        "nsys-summary",
        "summarize nsys CUDA GPU kernel summary CSVs (MoE, NCCL, attention); compare two runs",
        _nsys,
    ),
    ToolCommand(
        "provenance",
        "read a vLLM server log: version, parallel sizes, all2all, MoE kernel, EPLB",
        _provenance,
    ),
    ToolCommand("plan", "what a full run of a vLLM profile does, and its node-hours", _plan),
    ToolCommand(
        "calibrate",
        "A/A: one configuration on several server launches; the launch-to-launch spread sets "
        "the claims' margins (calibrate/calibration.json)",
        _calibrate,
    ),
    ToolCommand(
        "kernel-loads",
        "extract per-step expert loads from routing logs or the study's gate logs into a small "
        "moe-expert-loads file for the kernels stage's replay (e.g. to carry to a GPU machine)",
        _kernel_loads,
    ),
    ToolCommand(
        "parallel-loads",
        "derive the parallel stage's replay sources (study-steps, study-layers) from the original "
        "study's gate logs into a small moe-expert-loads file",
        _parallel_loads,
    ),
)

COMMANDS: tuple[Command, ...] = (
    *(STAGES[name] for name in PIPELINE + GPU_STAGES),
    ReproduceCommand(),
    *TOOLS,
)


def _listed(command: Command) -> str:
    """The command's line in `moe-artifact --help`: stages say that they are."""
    if command.name in GPU_STAGES:
        return f"GPU stage: {command.help}"
    if command.name in PIPELINE:
        return f"stage: {command.help}"
    return command.help


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with the options of the command that `argv` names (if any)."""
    parser = argparse.ArgumentParser(
        prog="moe-artifact",
        description="Reproducible artifact for the MoE inference performance study.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Top-level options take no value, so the first other word is the command.
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=_listed(command), description=command.help)
        if command.name == chosen:
            command.configure_parser(p)
            p.set_defaults(handler=command.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread runs so every `finally` stops its servers."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from rich.markup import escape

    from artifact.core.console import console
    from artifact.core.errors import ArtifactError, disk_error

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.handler(args) or 0)
    except ArtifactError as exc:
        # escape: trace names like Perlmutter[baseline_8_2048] are not markup
        console.print(f"[red]error[/]: {escape(str(exc))}", soft_wrap=True)
        return 2
    except OSError as exc:  # a full, read-only or unwritable disk: one line, no traceback
        if (line := disk_error(exc)) is None:
            raise
        console.print(f"[red]error[/]: {escape(line)}", soft_wrap=True)
        return 2
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        console.print(f"[red]{what}[/]; finished units are kept, rerun to resume")
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
