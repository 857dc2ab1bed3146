"""`moe-artifact` / `python -m artifact`: the pipeline stages and the standalone tools.

    moe-artifact <stage> [--profile P] [--run-dir D] [--force]   one stage
    moe-artifact reproduce [--profile P] [--run-dir D] [--force] every stage in order
    moe-artifact <tool> ...                                      predict, metrics, ...

Errors caused by input or configuration print one line and exit 2; a failed claim check
exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from rich.markup import escape

from artifact import __version__
from artifact.config.profiles import default_profile_name, load_profile
from artifact.core.console import console
from artifact.core.errors import ArtifactError
from artifact.core.manifest import RunDir
from artifact.core.runner import GPU_STAGES, PIPELINE, StageContext, run_stage
from artifact.stages import load_stage

# Standalone tools: command name -> module with configure_parser(parser) and run_tool(args).
TOOLS = {
    "predict": "artifact.workload.predictor",
    "metrics": "artifact.serving.metrics",
    "bench-client": "artifact.serving.client",
    "imbalance-metrics": "artifact.routing.tool",
    "nsys-summary": "artifact.profiling.nsys",
    "provenance": "artifact.engines.vllm.provenance",
    "kernel-loads": "artifact.gpu.kernels.loads",
    "parallel-loads": "artifact.study.parallel_loads",
}


def _tool_module(module_name: str):
    """The tool's module, or None while it does not exist in this build."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


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
        "--force", action="store_true", help="redo the stage even if its record says complete"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moe-artifact",
        description="Reproducible artifact for the MoE inference performance study.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in PIPELINE + GPU_STAGES:
        stage = load_stage(name)
        if stage is None:
            continue
        kind = "GPU stage" if name in GPU_STAGES else "stage"
        p = sub.add_parser(name, help=f"{kind}: {stage.description}", description=stage.description)
        _common_stage_options(p)
        stage.configure_parser(p)
        p.set_defaults(handler=_run_one_stage, stage_name=name)
    p = sub.add_parser("reproduce", help="run every stage in order (skipping up-to-date ones)")
    _common_stage_options(p)
    p.set_defaults(handler=_run_pipeline)
    for name, module_name in TOOLS.items():
        module = _tool_module(module_name)
        if module is None:
            continue
        p = sub.add_parser(name, help=module.TOOL_HELP, description=module.TOOL_HELP)
        module.configure_parser(p)
        p.set_defaults(handler=module.run_tool)
    return parser


def _context(args: argparse.Namespace) -> StageContext:
    profile = load_profile(args.profile or default_profile_name())
    run_dir = RunDir(args.run_dir or Path("runs") / profile.name)
    return StageContext(profile=profile, run_dir=run_dir, force=args.force, args=args)


def _exit_code(ctx: StageContext, names: list[str]) -> int:
    """The largest exit code the stages recorded (check: 1 when a claim FAILed)."""
    code = 0
    for name in names:
        record = ctx.run_dir.record(name) or {}
        code = max(code, int(record.get("exit_code") or 0))
    return code


def _run_one_stage(args: argparse.Namespace) -> int:
    stage = load_stage(args.stage_name)
    assert stage is not None
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


def _run_pipeline(args: argparse.Namespace) -> int:
    ctx = _context(args)
    missing = [name for name in PIPELINE if load_stage(name) is None]
    if missing:
        console.print(f"[yellow]not built yet[/] (skipped): {', '.join(missing)}")
    for name in PIPELINE:
        stage = load_stage(name)
        if stage is None:
            continue
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
            f"[bold red]reproduce[/]: every built stage ran in {ctx.run_dir.path}, "
            f"but a stage reported failure (exit code {code}; check: a claim FAILed)"
        )
        return code
    console.print(f"[bold green]reproduce[/]: every built stage is complete in {ctx.run_dir.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except ArtifactError as exc:
        # escape: trace names like Perlmutter[baseline_8_2048] are not markup
        console.print(f"[red]error[/]: {escape(str(exc))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]; finished units are kept, rerun to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
