"""Stage `serve`: start each mode's server once, check it, record what really runs.

For every mode used by a selected experiment (all enabled ones, or those named in
$MOE_ARTIFACT_EXPERIMENTS): start the server at the imbalance experiment's limits,
wait for health, send one short completion (so the batching manager exists), read the
provenance back from the live engine, compare it with the profile and stop the server.
Writes `serve/<mode>/provenance.json` and `serve/<mode>/server.log`. A contradiction between
the profile and the provenance fails the stage and names each one. A server that exits during
start-up (vLLM refusing a mode, or dying in its warm-up) is recorded instead, with the error
its log ended in, in `serve/<mode>/startup-failure.json`; the stage goes on with the other
modes, and the bench stage runs none of that mode's units.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request

from artifact.config.profiles import selected_experiments
from artifact.core.console import console
from artifact.core.errors import ServerRefused, StageFailed
from artifact.core.records import Limits, ServeProvenance, StartupFailure, write_record
from artifact.core.runner import Stage, StageContext, StageOutcome
from artifact.engines.base import ServerLimits
from artifact.stages.install import installed_engine


def experiment_modes(profile, experiments: list[str]) -> list[str]:
    """Modes used by the named experiments, in profile order."""
    used = set()
    for name in experiments:
        used.update(getattr(profile.experiments, name).modes)
    return [m for m in profile.modes if m in used]


def reference_limits(profile) -> ServerLimits:
    """The limits a mode is checked at: the imbalance experiment's, else the sweep's fixed point."""
    imbalance = profile.experiments.imbalance
    if imbalance is not None:
        return ServerLimits(imbalance.max_num_seqs, imbalance.max_num_batched_tokens)
    sweep = profile.experiments.config_sweep
    return ServerLimits(sweep.fixed_max_num_seqs, sweep.fixed_max_num_batched_tokens)


def smoke_completion(base_url: str, model: str) -> dict:
    body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": 2}).encode()
    req = urllib.request.Request(
        base_url + "/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def check_provenance(engine, mode: str, limits: ServerLimits, provenance: dict) -> None:
    problems = engine.check_provenance(mode, limits, provenance)
    if problems:
        raise StageFailed(
            f"mode '{mode}': provenance contradicts the profile: " + "; ".join(problems)
        )


class ServeStage(Stage):
    name = "serve"
    upstream = ("install",)
    profile_sections = ("model", "engine", "modes", "experiments")
    per_experiment = True

    def clear(self, ctx: StageContext, experiments: list[str] | None) -> None:
        if experiments is None:
            return super().clear(ctx, None)
        for mode in experiment_modes(ctx.profile, experiments):
            shutil.rmtree(ctx.layout.serve_mode(mode).path, ignore_errors=True)

    def run(self, ctx: StageContext) -> StageOutcome:
        engine = installed_engine(ctx)
        limits = reference_limits(ctx.profile)
        modes = experiment_modes(ctx.profile, selected_experiments(ctx.profile))
        refused = []
        for mode in modes:
            out = ctx.layout.serve_mode(mode)
            if out.provenance.exists() or out.startup_failure.exists():
                refused += [mode] if out.startup_failure.exists() else []
                continue  # finished unit of an interrupted run
            t0 = time.perf_counter()
            try:
                server = engine.start(mode, limits, out.server_log)
            except ServerRefused as exc:
                seconds = round(time.perf_counter() - t0, 3)
                failure = StartupFailure(
                    mode=mode, error=exc.reason, seconds=seconds, log=str(out.server_log)
                )
                write_record(out.startup_failure, failure)
                console.print(f"  {mode}: exited during start-up after {seconds} s: {exc.reason}")
                refused.append(mode)
                continue
            with server:
                startup_s = time.perf_counter() - t0
                reply = smoke_completion(server.base_url, server.model_id)
                provenance = server.provenance()
            check_provenance(engine, mode, limits, provenance)
            record = ServeProvenance.model_validate(
                {
                    **provenance,
                    "startup_seconds": round(startup_s, 3),
                    "smoke_usage": reply.get("usage"),
                    "limits": Limits(
                        max_num_seqs=limits.max_num_seqs,
                        max_num_batched_tokens=limits.max_num_batched_tokens,
                    ),
                }
            )
            write_record(out.provenance, record)
            console.print(f"  {mode}: healthy in {startup_s:.1f} s, {what_runs(provenance)}")
        served = [m for m in modes if m not in refused]
        summary = f"{len(served)} modes served and checked: {', '.join(served) or 'none'}"
        if refused:
            summary += f"; exited during start-up: {', '.join(refused)}"
        return StageOutcome(summary=summary)


def what_runs(provenance: dict) -> str:
    """One line on what the live server said it runs (its own provenance keys)."""
    if provenance.get("experts_implementation"):
        return f"experts implementation {provenance['experts_implementation']}"
    sizes = [
        f"{name} {provenance[key]}"
        for name, key in (
            ("TP", "tensor_parallel_size"),
            ("DP", "data_parallel_size"),
            ("EP", "expert_parallel_size"),
        )
        if provenance.get(key)
    ]
    versions = provenance.get("versions") or {}
    engine = f"{provenance.get('engine', '?')} {versions.get(provenance.get('engine'), '')}"
    plugin = provenance.get("routing_plugin")
    return ", ".join([engine.strip(), *sizes] + ([f"routing plugin {plugin}"] if plugin else []))


STAGE = ServeStage()
