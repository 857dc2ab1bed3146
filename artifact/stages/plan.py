"""`moe-artifact plan`: what a full run of a vLLM profile will do, and its node-hours.

    moe-artifact plan --profile perlmutter [--json] [--budget 1.5]

Per experiment: the server starts (the serve stage's provenance check of each mode not served
by an earlier experiment, one timed server per unit's server and launch, one per profiled
pass, one per diagnostic pass of an EPLB arm), the measured runs (repetitions) and the
untimed passes, then an estimate of the wall time from the
original study's own measurements on the same node (4x A100, Mixtral-8x7B):

- START_UP_S: median seconds from a server log's first line to "Starting vLLM API server" in
  the study's 22 server logs (trace_collection/*/logs/*.log): tensor parallel 58 s (9 logs,
  53-119 s), data + expert parallel 71 s (11 logs, 44-92 s);
- RUN_S: median "duration" of the study's vLLM result files, per prompt: the sweep's 50-prompt
  runs (trace_collection/*/results_json/*.json, the EPLB runs left out: TP 64.8 s, EP 48.0 s,
  11 files each),
  the imbalance runs' 30-prompt datasets with 128 output tokens
  (load_imbalance/*_results_json/*.json: baseline 2.42 s, all2all 3.82 s, 30 files each).

A run's time scales with its prompts (the ablation's 200 prompts: 4x a sweep run); warm-up
requests count as that many prompts; a profiled pass (one per launch of each EPLB arm) counts
as one run plus a start-up and its warm-up, as does the EPLB arm's one diagnostic pass. Not in
the estimate: pulling or starting a container, the job's queue wait, the routing checks and
offline replays (seconds per run), nsys's own overhead and report writing. The node-hours are
wall hours of the one GPU node the experiment jobs hold.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

from artifact.config.profiles import Mode, Profile, default_profile_name, load_profile
from artifact.core.console import console
from artifact.core.errors import ArtifactError
from artifact.engines.base import ServerLimits
from artifact.stages.bench import sweep_points

# The study's measurements (see the module docstring for the files and counts).
START_UP_S = {"tensor_parallel": 58.0, "expert_parallel": 71.0}
SWEEP_PROMPTS = 50
SWEEP_RUN_S = {"tensor_parallel": 64.8, "expert_parallel": 48.0}
IMBALANCE_PROMPTS = 30
IMBALANCE_RUN_S = {"tensor_parallel": 2.42, "expert_parallel": 3.82}
BUDGET_NODE_HOURS = 1.5


def kind(mode: Mode) -> str:
    return "expert_parallel" if mode.enable_expert_parallel else "tensor_parallel"


@dataclass
class ExperimentPlan:
    experiment: str
    serve_starts: int  # the serve stage's provenance checks
    timed_servers: int
    measured_runs: int
    profiled_passes: int
    diagnostic_passes: int  # the EPLB arms' balancedness passes
    seconds: float

    @property
    def server_starts(self) -> int:
        untimed = self.profiled_passes + self.diagnostic_passes
        return self.serve_starts + self.timed_servers + untimed


def run_seconds(mode: Mode, prompts: int, output_len: int | None) -> float:
    """One run of `prompts` prompts: the study's per-prompt duration of its kind of run."""
    if output_len is not None:  # the imbalance runs fix the output length
        return IMBALANCE_RUN_S[kind(mode)] * prompts / IMBALANCE_PROMPTS
    return SWEEP_RUN_S[kind(mode)] * prompts / SWEEP_PROMPTS


def plan(profile: Profile) -> list[ExperimentPlan]:
    if profile.engine.kind != "vllm":
        raise ArtifactError(
            "plan estimates from the study's vLLM measurements: a vLLM profile only",
            path=profile.path,
            where="field 'engine.kind'",
        )
    exps = profile.experiments
    served: set[str] = set()
    out = []
    for name in ("config_sweep", "eplb_ablation", "imbalance"):
        exp = getattr(exps, name)
        if exp is None or not exp.enabled:
            continue
        # (mode, limits, prompts per run, units of that server, profiled, diagnostic)
        if name == "config_sweep":
            points = sweep_points(profile)
            units = [(m, p, exp.prompts, 1, False, False) for m in exp.modes for p in points]
        elif name == "eplb_ablation":
            limits = ServerLimits(exp.max_num_seqs, exp.max_num_batched_tokens)
            units = [
                (m, limits, exp.prompts, 1, exp.nsys, exp.balancedness_pass and mode.enable_eplb)
                for m, mode in ((m, profile.modes[m]) for m in exp.modes)
            ]
        else:
            count = profile.datasets.count if exp.datasets == "all" else int(exp.datasets)
            per = profile.datasets.prompts_per_dataset
            limits = ServerLimits(exp.max_num_seqs, exp.max_num_batched_tokens)
            # one server per mode
            units = [(m, limits, per, count, False, False) for m in exp.modes]
        bench = exp.bench
        seconds = 0.0
        new = [m for m in dict.fromkeys(exp.modes) if m not in served]
        served.update(new)
        for mode_name in new:
            seconds += START_UP_S[kind(profile.modes[mode_name])]
        runs = passes = diagnostics = 0
        launches = bench.launches  # each unit's server started that many times
        for mode_name, _limits, prompts, datasets, profiled, diagnostic in units:
            mode = profile.modes[mode_name]
            one = run_seconds(mode, prompts, bench.output_len)
            warm = run_seconds(mode, bench.warmup_requests, bench.output_len)
            seconds += launches * (START_UP_S[kind(mode)] + datasets * (warm + bench.repeat * one))
            runs += launches * datasets * bench.repeat
            # an untimed pass: its own server, warm-up, one pass of the prompts; the ablation
            # profiles each launch of each arm, the EPLB arm has one diagnostic pass
            untimed = launches * int(profiled) + int(diagnostic)
            seconds += untimed * (START_UP_S[kind(mode)] + warm + one)
            passes += launches * int(profiled)
            diagnostics += int(diagnostic)
        out.append(
            ExperimentPlan(
                name, len(new), launches * len(units), runs, passes, diagnostics, seconds
            )
        )
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=None, help="profile name or YAML path")
    parser.add_argument("--budget", type=float, default=BUDGET_NODE_HOURS, help="node-hours")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run_tool(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile or default_profile_name())
    plans = plan(profile)
    total_h = sum(p.seconds for p in plans) / 3600
    if args.json:
        rows = [{**asdict(p), "server_starts": p.server_starts} for p in plans]
        print(
            json.dumps(
                {
                    "profile": profile.name,
                    "experiments": rows,
                    "node_hours": total_h,
                    "budget_node_hours": args.budget,
                },
                indent=1,
            )
        )
        return 0
    from rich.table import Table

    table = Table(title=f"plan: {profile.name} (one node; the study's measured durations)")
    columns = (
        "experiment",
        "serve starts",
        "timed servers",
        "profiled passes",
        "diagnostic passes",
        "measured runs",
    )
    for column in (*columns, "hours"):
        first = column == "experiment"
        table.add_column(column, justify="left" if first else "right", no_wrap=first)
    for p in plans:
        counts = (
            p.serve_starts,
            p.timed_servers,
            p.profiled_passes,
            p.diagnostic_passes,
            p.measured_runs,
        )
        table.add_row(p.experiment, *map(str, counts), f"{p.seconds / 3600:.2f}")
    console.print(table)
    verdict = "within" if total_h <= args.budget else "over"
    console.print(
        f"estimated {total_h:.2f} node-hours, {verdict} the budget of {args.budget:g} "
        "(excluded: container start, queue wait, routing checks, nsys overhead)"
    )
    return 0
