"""The stage runner.

Each stage is a `Stage` subclass (its instance is `STAGE` in `artifact.stages.<name>`). The
runner owns the manifest contract:

- skip a stage whose record is complete, whose inputs and profile sections are unchanged and
  whose outputs still have the hashes it recorded;
- outputs missing or damaged since then (a file cut short, a deleted folder): say which, move
  the damaged files aside and run the stage, which redoes only what is gone (finished units
  are kept);
- inputs or profile sections changed: say which (file, recorded and current hash), move the
  old outputs aside to `<stage>.old-<time>/` and redo the stage afresh; nothing is deleted
  unless `--force` asks for it;
- an upstream stage whose recorded outputs are damaged: one error line naming the file and
  the stage to run (never read a half file);
- otherwise (an interrupted run) let the stage resume at its first unfinished unit.

Per-experiment stages (serve, bench) run only the experiments that
artifact.config.profiles.selected_experiments chooses ($MOE_ARTIFACT_EXPERIMENTS: one Slurm job per
experiment, all sharing a run directory). Their record lists the experiments done so far; the
stage is up to date only when that list covers the selection, so the next job's experiment
runs (resuming, never clearing what earlier jobs finished), and `--force` clears only the
selected experiments' outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    # Outputs set aside in this run go to `<stage>.old-<stamp>/`.
    stamp: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))
    # check/plots with --out: outputs elsewhere, the (read-only) run directory is not written.
    out: Path | None = None
    exit_codes: dict[str, int] = field(default_factory=dict)

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

    def redo_targets(self, ctx: StageContext) -> list[Path]:
        """Outputs the user asked to redo (bench --redo UNIT): set aside, then the stage runs."""
        return []

    def run(self, ctx: StageContext) -> StageOutcome:
        raise NotImplementedError

    def clear(self, ctx: StageContext, experiments: list[str] | None) -> None:
        """Remove outputs before a redo: those of `experiments`, or all when None.

        Per-experiment stages override it to keep the other experiments' outputs."""
        shutil.rmtree(ctx.stage_dir(self.name), ignore_errors=True)


def _inputs(stage: Stage, ctx: StageContext) -> dict[str, str]:
    inputs = ctx.run_dir.outputs_of(
        tuple(u for u in stage.upstream if u not in ctx.layout.elsewhere)
    )
    inputs.update({f"external:{k}": v for k, v in stage.extra_inputs(ctx).items()})
    return inputs


def differences(recorded: dict[str, str], current: dict[str, str], *, added: bool) -> list[str]:
    """Files whose hash differs from the recorded one, or that are gone (and new ones when
    `added`), in path order."""
    keys = set(recorded) | (set(current) if added else set())
    return sorted(k for k in keys if recorded.get(k) != current.get(k))


def describe(keys: list[str], recorded: dict[str, str], current: dict[str, str]) -> str:
    """`file (sha256 ab12... recorded, now cd34...)` for the first few, then a count."""

    def one(key: str) -> str:
        old, new = recorded.get(key), current.get(key)
        if new is None:
            return f"{key} (missing)"
        if old is None:
            return f"{key} (new)"
        return f"{key} (sha256 {old[:12]}... recorded, now {new[:12]}...)"

    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return ", ".join(one(k) for k in keys[:3]) + more


def set_aside(ctx: StageContext, stage: str, paths: Iterable[Path]) -> Path:
    """Move `paths` (inside the stage's folder) to `<stage>.old-<stamp>/`, keeping their paths
    relative to that folder; returns it. Outputs are moved, never deleted silently."""
    base = ctx.stage_dir(stage)
    target = ctx.layout.set_aside(stage, ctx.stamp)
    for path in paths:
        if not path.exists():
            continue
        if not path.resolve().is_relative_to(base.resolve()):
            raise ArtifactError(f"refusing to move {path}: not inside {base}", path=path)
        dest = target / path.relative_to(base)
        while dest.exists():  # set aside twice in one run: keep both
            dest = dest.with_name(dest.name + "~")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
    return target


def _check_upstream(
    stage: Stage, ctx: StageContext, selection: list[str] | None, inputs: dict[str, str]
) -> None:
    for up in (*stage.upstream, *stage.requires):
        if up in ctx.layout.elsewhere:  # written by this very run (--out)
            continue
        record = ctx.run_dir.stage_record(up)
        if record is None or record.status != "complete":
            raise ArtifactError(
                f"stage '{stage.name}' needs stage '{up}' to be complete first; "
                f"run `moe-artifact {up}` (or `nox -s {up}`)",
                path=ctx.run_dir.manifest_path,
            )
        damaged = differences(record.outputs, inputs, added=False) if up in stage.upstream else []
        if damaged:
            raise ArtifactError(
                f"stage '{stage.name}' reads stage '{up}''s files, and {len(damaged)} changed "
                f"since '{up}' completed: {describe(damaged, record.outputs, inputs)}; run "
                f"`moe-artifact {up}` to redo what is missing or damaged",
                path=ctx.run_dir.path,
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


def _run_elsewhere(stage: Stage, ctx: StageContext) -> str:
    """check/plots with --out: read the run directory, write only under ctx.out."""
    profile = ctx.run_dir.manifest().profile
    if profile and profile != ctx.profile.name:
        raise ArtifactError(
            f"run directory belongs to profile '{profile}', not '{ctx.profile.name}'",
            path=ctx.run_dir.path,
        )
    if stage.name not in ctx.layout.elsewhere:
        raise ArtifactError(f"--out applies to check and plots, not to stage '{stage.name}'")
    _check_upstream(stage, ctx, None, _inputs(stage, ctx))
    outcome = stage.run(ctx)
    ctx.exit_codes[stage.name] = outcome.exit_code
    console.print(
        f"[green]{stage.name}[/]: {outcome.summary} (written to {ctx.stage_dir(stage.name)}; "
        "the run directory is not changed)",
        soft_wrap=True,
    )
    return "complete"


def run_stage(stage: Stage, ctx: StageContext) -> str:
    """Run (or skip) one stage under the run directory's lock; returns 'skipped' or
    'complete'. Raises on failure, or when another run holds the lock. With an output
    folder (`--out`) nothing is written to the run directory, and no lock is taken."""
    if ctx.out is not None:
        return _run_elsewhere(stage, ctx)
    with run_dir_lock(ctx.run_dir.path):
        return _run_stage(stage, ctx)


def _run_stage(stage: Stage, ctx: StageContext) -> str:
    run_dir = ctx.run_dir
    run_dir.set_profile(ctx.profile.name, str(ctx.profile.path) if ctx.profile.path else None)
    selection = selected_experiments(ctx.profile) if stage.per_experiment else None
    inputs = _inputs(stage, ctx)
    _check_upstream(stage, ctx, selection, inputs)
    profile_hash = ctx.profile.section_hash(*stage.profile_sections)
    record = run_dir.stage_record(stage.name)
    changed = differences(record.inputs, inputs, added=True) if record else []
    unchanged = record is not None and not changed and record.profile_hash == profile_hash
    done = list(record.experiments or []) if record else []
    covered = selection is None or set(selection) <= set(done)
    out_dir = ctx.stage_dir(stage.name)
    name = stage.name
    redo = stage.redo_targets(ctx)
    if redo:
        where = set_aside(ctx, name, redo)
        console.print(
            f"[yellow]{name}[/]: redoing {', '.join(str(p.relative_to(out_dir)) for p in redo)} "
            f"as asked; its files are moved to {where}",
            soft_wrap=True,
        )
    damaged: list[str] = []
    if record and record.status == "complete" and unchanged and not ctx.force:
        current = run_dir.outputs_of((name,))
        damaged = differences(record.outputs, current, added=False)
        if damaged:
            where = set_aside(ctx, name, [run_dir.path / k for k in damaged])
            console.print(
                f"[yellow]{name}[/]: {len(damaged)} output file(s) missing or damaged since it "
                f"completed: {describe(damaged, record.outputs, current)}; damaged ones moved "
                f"to {where}; redoing only what they belong to",
                soft_wrap=True,
            )
        elif covered and not redo:
            what = f" for {', '.join(selection)}" if selection else ""
            console.print(
                f"[green]{name}[/]: up to date{what} (completed {record.end}, inputs, profile "
                "and outputs unchanged); skipped. Use --force to redo it."
            )
            return "skipped"
    if record and not unchanged:
        # Outputs made from other inputs are stale: set them aside and start afresh.
        why = (
            f"input(s) changed since it ran: {describe(changed, record.inputs, inputs)}"
            if changed
            else f"profile section(s) {', '.join(stage.profile_sections)} changed since it ran"
        )
        where = set_aside(ctx, name, [out_dir])
        console.print(
            f"[yellow]{name}[/]: {why}; its earlier outputs are moved to {where}; redoing it",
            soft_wrap=True,
        )
        done = []
    elif ctx.force:
        what = f"experiment(s) {', '.join(selection)}" if selection else "all"
        console.print(f"[yellow]{name}[/]: --force: removing its outputs ({what}) and redoing")
        stage.clear(ctx, selection)
    elif record and record.status in ("running", "failed"):
        console.print(f"[yellow]{name}[/]: resuming an unfinished run")
    elif not covered and not damaged:
        console.print(
            f"[yellow]{name}[/]: running {', '.join(selection or ())} "
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
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(out_dir)  # a write() that failed names no file: name the stage's
        message = (
            str(exc)
            if isinstance(exc, ArtifactError)
            else (
                "interrupted"
                if isinstance(exc, KeyboardInterrupt)
                else "".join(traceback.format_exception_only(type(exc), exc)).strip()
            )
        )
        # A full or read-only disk cannot take the record either; the error itself is reported.
        with contextlib.suppress(OSError):
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
