"""`moe-artifact plan`: the counts of a full perlmutter run and its node-hours from the study's
measured durations (recomputed from the study's own files when $MOE_ARTIFACT_STUDY_DATA is set)."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from artifact.config.profiles import load_profile
from artifact.stages.plan import IMBALANCE_RUN_S, START_UP_S, SWEEP_RUN_S, plan

REPO = Path(__file__).resolve().parents[2]


def test_the_perlmutter_plan_counts_every_server_run_and_pass():
    plans = {p.experiment: p for p in plan(load_profile("perlmutter"))}
    sweep, ablation, imbalance = plans["config_sweep"], plans["eplb_ablation"], plans["imbalance"]
    # the cross of 4 x 4 through (32, 8192): 7 points per mode, 3 launches of one run each
    assert (sweep.serve_starts, sweep.timed_servers, sweep.measured_runs) == (2, 42, 42)
    # one profiled pass per launch of each EPLB arm: 3 a side, the kernel tables' repetitions
    assert (ablation.timed_servers, ablation.measured_runs, ablation.profiled_passes) == (6, 6, 6)
    # the EPLB arm's untimed balancedness pass: one more server start
    assert ablation.diagnostic_passes == 1
    # modes served by the sweep are not served again; one server per mode and launch for 50
    # datasets
    assert (imbalance.serve_starts, imbalance.timed_servers, imbalance.measured_runs) == (0, 6, 300)
    assert ablation.server_starts == 15


def test_the_estimate_is_the_studys_durations_summed(tmp_path):
    raw = yaml.safe_load((REPO / "reproduce" / "profiles" / "perlmutter.yaml").read_text())
    raw["experiments"]["config_sweep"]["enabled"] = False
    raw["experiments"]["imbalance"]["enabled"] = False
    ablation = raw["experiments"]["eplb_ablation"]
    ablation.update(prompts=100, nsys=False)
    ablation["bench"].update(repeat=2, warmup_requests=0, launches=2)
    path = tmp_path / "perlmutter.yaml"
    path.write_text(yaml.safe_dump(raw))
    (only,) = plan(load_profile(path))
    ep, start = SWEEP_RUN_S["expert_parallel"], START_UP_S["expert_parallel"]
    # 2 serve starts + 2 modes x 2 launches, each a start and 2 runs of 100 prompts (2x a
    # 50-prompt sweep run), + the EPLB arm's diagnostic pass: a start and one run
    assert only.diagnostic_passes == 1
    assert only.seconds == pytest.approx(
        2 * start + 2 * 2 * (start + 2 * (2 * ep)) + (start + 2 * ep)
    )
    # with nsys: a pass (start-up and one run) per launch of each arm
    ablation["nsys"] = True
    path.write_text(yaml.safe_dump(raw))
    (profiled,) = plan(load_profile(path))
    assert profiled.profiled_passes == 2 * 2
    assert profiled.seconds - only.seconds == pytest.approx(2 * 2 * (start + 2 * ep))


def test_plan_cli_prints_json_and_refuses_a_profile_without_vllm():
    out = subprocess.run(
        [sys.executable, "-m", "artifact", "plan", "--profile", "perlmutter", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.stdout)
    assert data["budget_node_hours"] == 1.5 and 1.0 < data["node_hours"] < 3.0
    bad = subprocess.run(
        [sys.executable, "-m", "artifact", "plan", "--profile", "local"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "a vLLM profile only" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_constants_are_the_studys_own_medians(study_data):
    stamp = re.compile(r"(\d\d-\d\d \d\d:\d\d:\d\d)")
    starts: dict[str, list[float]] = {"tensor_parallel": [], "expert_parallel": []}
    for log in sorted((study_data / "trace_collection").glob("*/logs/*.log")):
        if "eplb" in log.parent.parent.name:
            continue  # the two v0.11.0 logs of the EPLB runs
        first = ready = None
        for line in log.read_text(errors="replace").splitlines():
            if m := stamp.search(line):
                t = datetime.strptime("2025-" + m.group(1), "%Y-%m-%d %H:%M:%S")
                first = first or t
                if "Starting vLLM API server" in line:
                    ready = t
                    break
        kind = "expert_parallel" if "EP4" in log.parent.parent.name else "tensor_parallel"
        starts[kind].append((ready - first).total_seconds())
    assert {k: statistics.median(v) for k, v in starts.items()} == START_UP_S
    runs: dict[str, list[float]] = {"tensor_parallel": [], "expert_parallel": []}
    for result in (study_data / "trace_collection").glob("*/results_json/*.json"):
        if "eplb" in result.parent.parent.name:
            continue
        kind = "expert_parallel" if "EP4" in result.parent.parent.name else "tensor_parallel"
        runs[kind].append(json.loads(result.read_text())["duration"])
    for kind, values in runs.items():
        assert statistics.median(values) == pytest.approx(SWEEP_RUN_S[kind], abs=0.05)
    for kind, folder in (("tensor_parallel", "baseline"), ("expert_parallel", "default_all2all")):
        files = (study_data / "load_imbalance" / f"{folder}_results_json").glob("*.json")
        values = [json.loads(f.read_text())["duration"] for f in files]
        assert statistics.median(values) == pytest.approx(IMBALANCE_RUN_S[kind], abs=0.005)
