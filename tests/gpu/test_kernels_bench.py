"""The kernels benchmark harness and stage on the CPU: checks, tables, acceptance ratios.

The stage is GPU-only in earnest; `--device cpu` with a small shape runs the same code
end to end (the Triton kernel under TRITON_INTERPRET=1, in float16).
"""

import argparse
import csv
import json
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

from artifact.config.profiles import load_profile
from artifact.core.errors import ArtifactError, StageFailed
from artifact.core.manifest import RunDir
from artifact.core.runner import StageContext, run_stage
from artifact.gpu.kernels.bench import (
    Bench,
    BenchOptions,
    acceptance_rows,
    logged_counts,
    replay_summary,
)
from artifact.gpu.kernels.layer import IMPLEMENTATIONS, MoEShape
from artifact.gpu.kernels.loads import LoadSource, write_loads_file
from artifact.gpu.kernels.routing import RoutingSpec
from artifact.stages.kernels import STAGE

SHAPE = MoEShape(32, 32, 4, 2)


def options(**changes):
    base = {
        "shape": SHAPE,
        "tokens": (1, 6),
        "routings": [RoutingSpec("balanced"), RoutingSpec("uniform")],
        "impls": ["loop", "grouped_mm"],
        "device": "cpu",
        "sets": 2,
        "target_s": 0.001,
        "min_reps": 3,
        "max_reps": 5,
        "copy_mib": 1,
        "gemm_n": 64,
    }
    return BenchOptions(**{**base, **changes})


def test_check_flags_wrong_and_nan_outputs():
    bench = Bench(options())
    inputs = bench.draw(RoutingSpec("uniform"), 6)
    ref = bench.reference(inputs.x.double(), inputs.ids, inputs.weights)
    good = bench.make("grouped_mm")
    err, status = bench.check(good, inputs, ref)
    assert status == "ok" and 1e-4 < err < 1e-2
    assert bench.check(lambda x, i, w: good(x, i, w) * 1.1, inputs, ref)[1] == "incorrect"
    nan = lambda x, i, w: torch.full_like(x, float("nan"))  # noqa: E731
    assert bench.check(nan, inputs, ref)[1] == "incorrect"
    assert bench.check(lambda x, i, w: x[:1], inputs, ref)[1].startswith("incorrect: output")


def test_clock_and_bounds_on_cpu():
    bench = Bench(options())
    times = bench.clock.measure(lambda: None, [()], target_s=0.0, min_reps=4, max_reps=4)
    assert len(times) == 4 and (times >= 0).all()
    bench.bounds = {"copy_gbps": 1000.0, "gemm_tflops": 100.0}
    ms, kind, nbytes = bench.bound(1, 2.0)
    assert kind == "bandwidth" and nbytes == SHAPE.min_bytes(1, 2.0, 2)
    assert ms == pytest.approx(nbytes / 1e12 * 1e3)


def test_cuda_required_unless_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ArtifactError, match="needs|sees none"):
        Bench(options(device="cuda"))


def test_acceptance_ratios_include_the_misses():
    rows = [
        {"impl": "triton", "tokens": 1, "routing": "u", "status": "ok", "rel_err": 3e-3,
         "time_ms": 0.3, "bound_ms": 0.1, "bound": "bandwidth"},
        {"impl": "triton", "tokens": 4096, "routing": "u", "status": "ok", "rel_err": 3e-3,
         "time_ms": 12.0, "bound_ms": 9.0, "bound": "compute"},
        {"impl": "grouped_mm", "tokens": 4096, "routing": "u", "time_ms": 10.0},
        {"impl": "triton", "tokens": 256, "routing": "u", "status": "incorrect"},
    ]  # fmt: skip
    out = {(a["check"], a["tokens"]): a for a in acceptance_rows(rows, 1e-2)}
    assert out[("triton_over_bandwidth_bound", 1)]["value"] == pytest.approx(3.0)
    assert not out[("triton_over_bandwidth_bound", 1)]["passed"]
    assert out[("triton_over_grouped_mm", 4096)]["value"] == pytest.approx(1.2)
    assert out[("triton_over_grouped_mm", 4096)]["passed"]
    assert not out[("triton_correct", 256)]["passed"]


def test_logged_counts_and_replay_summary():
    assert logged_counts(np.array([8.0, 15, 8, 0, 14, 0, 15, 0]), 30, 2).tolist() == [
        8, 15, 8, 0, 14, 0, 15, 0
    ]  # fmt: skip
    # Not a top-2 routing of 1 token (a rank's share of an EP log, say): scaled to one.
    assert logged_counts(np.array([3.0, 0, 0, 1]), 1, 2).tolist() == [1, 0, 0, 1]
    steps = [
        {"source": "s", "tokens": 30, "expert_max_mean": 2.0, "triton_cost": 1.0,
         "rank_max_mean": 1.5, "ep_vs_balanced": 1.2},
        {"source": "s", "tokens": 30, "expert_max_mean": 1.6, "triton_cost": 0.9,
         "rank_max_mean": 1.1, "ep_vs_balanced": 1.0},
    ]  # fmt: skip
    summary = {row["expert_max_mean"]: row for row in replay_summary(steps)}
    assert summary["all"]["steps"] == 2
    assert summary["all"]["mean_triton_cost"] == pytest.approx(0.95)
    assert summary["1.60"]["mean_ep_vs_balanced"] == pytest.approx(1.0)


def stage_args(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    STAGE.configure_parser(parser)
    return parser.parse_args(
        [
            "--device", "cpu", "--dtype", "float16", "--shape", "32,32,4,2", "--tokens", "1,6",
            "--sets", "2", "--target-s", "0.001", "--min-reps", "2", "--max-reps", "3",
            "--ep-ranks", "2", "--zipf", "1.5", "--replay-steps", "2", *extra,
        ]
    )  # fmt: skip


def loads_file(tmp_path):
    source = LoadSource(
        "study",
        "mem",
        2,
        np.array(["r"] * 3),
        np.array([0, 1, 2]),
        np.array([5, 5, 5]),
        np.array([3, 3, 1]),
        np.array([[3, 3, 0, 0], [2, 1, 2, 1], [1, 0, 1, 0]], dtype=float),
    )
    path = tmp_path / "loads.json"
    write_loads_file(path, [source])
    return path


@pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
def test_stage_end_to_end_on_cpu(tmp_path):
    pytest.importorskip("triton")
    args = stage_args(tmp_path, "--replay", str(loads_file(tmp_path)))
    args.impls = "loop,grouped_mm,triton"
    ctx = StageContext(load_profile("local"), RunDir(tmp_path / "run"), args=args)
    assert run_stage(STAGE, ctx) == "complete"
    out = tmp_path / "run" / "kernels"
    rows = list(csv.DictReader((out / "results.csv").open()))
    routings = {r["routing"] for r in rows}
    assert routings == {"balanced", "uniform", "zipf-1.5", "replay:study"}
    assert {r["impl"] for r in rows} == {"loop", "grouped_mm", "triton"}
    assert all(r["status"] == "ok" and float(r["time_ms"]) > 0 for r in rows)
    assert all(float(r["cost_vs_balanced"]) > 0 for r in rows)
    assert {r["tokens"] for r in rows if r["impl"] == "triton" and r["config"]} == {"1", "6"}
    ep = list(csv.DictReader((out / "ep.csv").open()))
    assert len(ep) == 8 and all(r["status"] == "ok" for r in ep)
    steps = list(csv.DictReader((out / "replay_steps.csv").open()))
    assert len(steps) == 2 and {r["tokens"] for r in steps} <= {"3", "1"}
    tuning = list(csv.DictReader((out / "tuning.csv").open()))
    assert tuning and all(r["chosen"] for r in tuning)
    info = json.loads((out / "run.json").read_text())
    assert info["dtype"] == "float16" and set(info["triton_configs"]) == {"1", "6"}
    for name in ("kernels.png", "replay.png", "summary.md", "acceptance.csv"):
        assert (out / name).stat().st_size > 0
    record = ctx.run_dir.record("kernels")
    assert record["details"]["incorrect"] == []
    # Same options and inputs: skipped; other options: redone.
    assert run_stage(STAGE, ctx) == "skipped"
    ctx.args.tokens = (2,)
    assert STAGE.extra_inputs(ctx)["options"] != record["inputs"]["external:options"]


def test_stage_fails_on_an_incorrect_implementation(tmp_path, monkeypatch):
    wrong = lambda w: lambda x, ids, weights: x * 0.5  # noqa: E731
    monkeypatch.setitem(IMPLEMENTATIONS, "grouped_mm", wrong)
    args = stage_args(tmp_path, "--routings", "balanced", "--impls", "loop,grouped_mm")
    ctx = StageContext(load_profile("local"), RunDir(tmp_path / "run"), args=args)
    with pytest.raises(StageFailed, match="correctness check"):
        run_stage(STAGE, ctx)
    rows = list(csv.DictReader((tmp_path / "run" / "kernels" / "results.csv").open()))
    assert {r["status"] for r in rows if r["impl"] == "grouped_mm"} == {"incorrect"}
    assert not any(r["time_ms"] for r in rows if r["impl"] == "grouped_mm")
    assert all(r["status"] == "ok" for r in rows if r["impl"] == "loop")
