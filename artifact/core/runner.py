"""The stage runner.

Each stage is a `Stage` subclass (its instance is `STAGE` in `artifact.stages.<name>`). The
runner owns the manifest contract: skip a stage whose record is complete and whose inputs and
profile sections are unchanged; clear and redo it on `--force` or when they changed; otherwise
(an interrupted run) let the stage resume at its first unfinished unit.

Per-experiment stages (serve, bench) run only the experiments that
artifact.config.profiles.selected_experiments chooses ($MOE_ARTIFACT_EXPERIMENTS: one Slurm job per
experiment, all sharing a run directory). Their record lists the experiments done so far; the
stage is up to date only when that list covers the selection, so the next job's experiment
runs (resuming, never clearing what earlier jobs finished), and `--force` clears only the
selected experiments' outputs.
"""

from __future__ import annotations

import argparse
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from artifact.config.profiles import (
    EXPERIMENT_NAMES,
    EXPERIMENTS_ENV,
    Profile,
    selected_experiments,
)
from artifact.core.console import console
from artifact.core.environment import git_commit, host_info, package_versions
from artifact.core.errors import ArtifactError, StageFailed
from artifact.core.layout import RunLayout
from artifact.core.lock import run_dir_lock
from artifact.core.manifest import RunDir, now_iso

# The pipeline, in order. A name without a module yet is reported as not built.
PIPELINE = ("install", "datasets", "serve", "bench", "imbalance", "check", "plots")
# GPU-only stages, run on their own (`moe-artifact kernels`), not by `reproduce`.
GPU_STAGES = ("kernels", "parallel")


@dataclass
class StageContext:
    profile: Profile
    run_dir: RunDir
    force: bool = False
    args: argparse.Namespace = field(default_factory=argparse.Namespace)

    def stage_dir(self, name: str) -> Path:
        return self.run_dir.stage_dir(name)

    @property
    def layout(self) -> RunLayout:
        return self.run_dir.layout


@dataclass
class StageOutcome:
    summary: str
    details: dict = field(default_factory=dict)
    # Non-zero when the stage finished but its verdict is negative (check: a claim FAILed);
    # recorded in the manifest and returned by the CLI, also when the stage is skipped later.
    exit_code: int = 0


class Stage:
    """Base class: set `name`, `upstream`, `profile_sections`; implement run()."""

    name: str = ""
    # Stages whose outputs this stage reads; their files are this stage's hashed inputs.
    upstream: tuple[str, ...] = ()
    # Top-level profile sections whose change invalidates this stage's outputs.
    profile_sections: tuple[str, ...] = ()
    # Stages that must be complete first although this stage reads none of their files.
    requires: tuple[str, ...] = ()
    # Runs the selected experiments only and records which are done (see the module doc).
    per_experiment: bool = False

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        """Add stage-specific options (beyond --profile, --run-dir, --force)."""

    def steps(self, args: argparse.Namespace) -> list[Stage]:
        """The stages `moe-artifact <name>` runs, in order, this one last (plots runs check
        first; --from-study imports the study). May set defaults for --profile and --run-dir
        before they are resolved."""
        return [self]

    def extra_inputs(self, ctx: StageContext) -> dict[str, str]:
        """Hashes of inputs outside the run directory (package data, caches), keyed by name."""
        return {}

    def run(self, ctx: StageContext) -> StageOutcome:
        raise NotImplementedError

    def clear(self, ctx: StageContext, experiments: list[str] | None) -> None:
        """Remove outputs before a redo: those of `experiments`, or all when None.

        Per-experiment stages override it to keep the other experiments' outputs."""
        shutil.rmtree(ctx.stage_dir(self.name), ignore_errors=True)


def _inputs(stage: Stage, ctx: StageContext) -> dict[str, str]:
    inputs = ctx.run_dir.outputs_of(stage.upstream)
    inputs.update({f"external:{k}": v for k, v in stage.extra_inputs(ctx).items()})
    return inputs


def _check_upstream(stage: Stage, ctx: StageContext, selection: list[str] | None) -> None:
    for up in (*stage.upstream, *stage.requires):
        record = ctx.run_dir.stage_record(up)
        if record is None or record.status != "complete":
            raise ArtifactError(
                f"stage '{stage.name}' needs stage '{up}' to be complete first; "
                f"run `moe-artifact {up}` (or `nox -s {up}`)",
                path=ctx.run_dir.manifest_path,
            )
        done = record.experiments
        if done is None:  # not a per-experiment stage
            continue
        missing = [e for e in selection or () if e not in done]
        if missing:
            raise ArtifactError(
                f"stage '{stage.name}' needs stage '{up}' to have run experiment(s) "
                f"{', '.join(missing)} (it ran: {', '.join(done) or 'none'}); run "
                f"`moe-artifact {up}` with {EXPERIMENTS_ENV}={','.join(missing)}",
                path=ctx.run_dir.manifest_path,
            )


def run_stage(stage: Stage, ctx: StageContext) -> str:
    """Run (or skip) one stage under the run directory's lock; returns 'skipped' or
    'complete'. Raises on failure, or when another run holds the lock."""
    with run_dir_lock(ctx.run_dir.path):
        return _run_stage(stage, ctx)


def _run_stage(stage: Stage, ctx: StageContext) -> str:
    run_dir = ctx.run_dir
    run_dir.set_profile(ctx.profile.name, str(ctx.profile.path) if ctx.profile.path else None)
    selection = selected_experiments(ctx.profile) if stage.per_experiment else None
    _check_upstream(stage, ctx, selection)
    inputs = _inputs(stage, ctx)
    profile_hash = ctx.profile.section_hash(*stage.profile_sections)
    record = run_dir.stage_record(stage.name)
    unchanged = (
        record is not None and record.inputs == inputs and record.profile_hash == profile_hash
    )
    done = list(record.experiments or []) if record else []
    covered = selection is None or set(selection) <= set(done)
    if record and record.status == "complete" and unchanged and covered and not ctx.force:
        what = f" for {', '.join(selection)}" if selection else ""
        console.print(
            f"[green]{stage.name}[/]: up to date{what} (completed {record.end}, inputs "
            "and profile unchanged); skipped. Use --force to redo it."
        )
        return "skipped"
    out_dir = ctx.stage_dir(stage.name)
    if record and not unchanged:
        # Outputs made from other inputs are stale: start the stage afresh.
        stage.clear(ctx, None)
        done = []
    elif ctx.force:
        stage.clear(ctx, selection)
    elif record and record.status in ("running", "failed"):
        console.print(f"[yellow]{stage.name}[/]: resuming an unfinished run")
    elif not covered:
        console.print(
            f"[yellow]{stage.name}[/]: running {', '.join(selection or ())} "
            f"(done before: {', '.join(done) or 'none'})"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    experiments = {} if selection is None else {"experiments": done}
    run_dir.update(
        stage.name,
        status="running",
        start=now_iso(),
        end=None,
        error=None,
        inputs=inputs,
        profile_hash=profile_hash,
        profile_sections=list(stage.profile_sections),
        packages=package_versions(),
        git=git_commit(),
        host=host_info(),
        **experiments,
    )
    t0 = time.perf_counter()
    try:
        outcome = stage.run(ctx)
    except BaseException as exc:
        message = (
            str(exc)
            if isinstance(exc, ArtifactError)
            else (
                "interrupted"
                if isinstance(exc, KeyboardInterrupt)
                else "".join(traceback.format_exception_only(type(exc), exc)).strip()
            )
        )
        run_dir.update(
            stage.name,
            status="failed",
            end=now_iso(),
            error=message,
            seconds=round(time.perf_counter() - t0, 3),
        )
        raise
    seconds = time.perf_counter() - t0
    if selection is not None:
        union = set(done) | set(selection)
        experiments = {"experiments": [e for e in EXPERIMENT_NAMES if e in union]}
    run_dir.update(
        stage.name,
        **experiments,
        status="complete",
        end=now_iso(),
        seconds=round(seconds, 3),
        summary=outcome.summary,
        details=outcome.details,
        exit_code=outcome.exit_code,
        outputs=run_dir.outputs_of((stage.name,)),
    )
    console.print(f"[green]{stage.name}[/]: {outcome.summary} ({seconds:.1f} s)")
    return "complete"


__all__ = [
    "GPU_STAGES",
    "PIPELINE",
    "Stage",
    "StageContext",
    "StageFailed",
    "StageOutcome",
    "run_stage",
]
