"""The sharded layer on several CPU processes with gloo, launched by torchrun as on GPUs:
2 ranks through the `parallel` stage (float64, exact against the reference) and a dry run
of the 4-rank launch of the study's EP=4 configuration (bf16, the grouped GEMM)."""

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from artifact.config.profiles import load_profile
from artifact.core.errors import ArtifactError
from artifact.core.manifest import RunDir
from artifact.core.runner import StageContext, run_stage
from artifact.gpu.kernels.loads import LoadSource, write_loads_file
from artifact.gpu.parallel.options import MULTICAST_OFF
from artifact.stages.parallel import REPO, STAGE

HIDDEN, INTER = 32, 64


def loads_file(tmp_path: Path) -> Path:
    """A logged source of 6 steps with a hot expert 0 and a cold expert 5."""
    rng = np.random.default_rng(1)
    loads = rng.integers(1, 20, size=(6, 8)).astype(float)
    loads[:, 0] += 40
    loads[:, 5] = 0
    path = tmp_path / "loads.json"
    steps = np.arange(6)
    write_loads_file(
        path,
        [LoadSource("logged", "test", 2, np.full(6, "r"), steps % 2, steps, np.full(6, 50), loads)],
    )
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def stage_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    STAGE.configure_parser(parser)
    return parser.parse_args(list(argv))


def run_parallel_stage(tmp_path: Path, *argv: str) -> Path:
    ctx = StageContext(
        profile=load_profile("local"), run_dir=RunDir(tmp_path / "run"), args=stage_args(*argv)
    )
    run_stage(STAGE, ctx)
    return ctx.stage_dir("parallel")


def test_two_ranks_match_the_float64_reference_through_the_stage(tmp_path):
    out = run_parallel_stage(
        tmp_path,
        *("--device", "cpu", "--nproc-per-node", "2", "--shape", f"{HIDDEN},{INTER},8,2"),
        *("--tokens", "3,16", "--dtype", "float64", "--impl", "loop"),
        *("--routings", "uniform,zipf,replay", "--replay", str(loads_file(tmp_path))),
        *("--sets", "2", "--reps", "2", "--warmup", "1"),
    )
    results = read_csv(out / "results.csv")
    assert len(results) == 2 * 3 * 7  # T x routings x (tp + 2 EP modes x 3 placements)
    assert {(r["mode"], r["placement"]) for r in results} == {
        ("tp", ""),
        *((m, p) for m in ("ep-agrs", "ep-a2a") for p in ("linear", "eplb:0", "eplb:2")),
    }
    assert {r["routing"] for r in results} == {"uniform", "zipf-1.2", "replay:logged"}
    assert all(r["status"] == "ok" and float(r["rel_err"]) < 1e-12 for r in results)
    assert all(float(r["layer_ms"]) > 0 and r["vs_tp"] for r in results)

    # Bytes sent per rank (float64: 8-byte elements; packed rows carry 16 bytes of routing).
    phases = read_csv(out / "phases.csv")
    sent = {(p["tokens"], p["mode"], p["phase"], p["rank"]): int(p["bytes"]) for p in phases}
    tokens = 16
    assert sent[("16", "tp", "allreduce", "0")] == 2 * tokens * HIDDEN * 8  # 2(R-1)/R * N*H*s
    assert sent[("16", "ep-agrs", "allgather", "1")] == tokens * (HIDDEN * 8 + 16)
    assert sent[("16", "ep-agrs", "reducescatter", "1")] == tokens * HIDDEN * 8
    assert 0 < sent[("16", "ep-a2a", "dispatch", "0")] <= tokens * (HIDDEN * 8 + 16)

    # Rebalancing: the oracle placement never leaves the replayed hot expert's rank worse.
    by_key = {(r["tokens"], r["routing"], r["mode"], r["placement"]): r for r in results}
    replay = [k for k in by_key if k[1] == "replay:logged" and k[3] == "linear"]
    for key in replay:
        linear = float(by_key[key]["rank_max_mean"])
        assert float(by_key[(*key[:3], "eplb:2")]["rank_max_mean"]) <= linear

    sets = read_csv(out / "sets.csv")
    assert len(sets) == 2 * 3 * 7 * 2
    fits = read_csv(out / "fit.csv")
    assert {f["mode"] for f in fits} == {"tp", "ep-agrs", "ep-a2a"}
    for name in ("crossover.csv", "eplb.csv", "summary.md", "parallel.png", "run.json"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["incorrect"] == []
    run = json.loads((out / "run.json").read_text())
    assert run["backend"] == "gloo" and run["env"] == MULTICAST_OFF


def test_four_rank_launch_of_the_study_configuration(tmp_path):
    """The R = 4 command as the device runs it (torchrun -m artifact.gpu.parallel.run), on CPU."""
    out = tmp_path / "out"
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"),
        *("4", "-m", "artifact.gpu.parallel.run", "--out", str(out), "--device", "cpu"),
        *("--shape", "64,128,8,2", "--tokens", "8", "--routings", "uniform,replay"),
        *("--replay", str(loads_file(tmp_path)), "--placements", "linear,eplb"),
        *("--sets", "1", "--reps", "1", "--warmup", "0"),
    ]
    env = {**os.environ, **MULTICAST_OFF, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = read_csv(out / "results.csv")
    assert len(results) == 2 * 5 and {r["ranks"] for r in results} == {"4"}
    for r in results:  # bf16 on CPU: within the band of the single-device bf16 layer
        assert r["status"] == "ok"
        assert 0 < float(r["rel_err"]) <= 2 * float(r["single_gpu_err"]) + 1e-3
    linear = {r["slots"] for r in read_csv(out / "sets.csv") if r["placement"] == "linear"}
    assert linear == {"0,1|2,3|4,5|6,7"}  # the study's EP=4: two experts per rank


def test_an_option_the_ranks_refuse_is_one_line(tmp_path):
    with pytest.raises(ArtifactError, match="must divide evenly over 2 ranks"):
        run_parallel_stage(
            tmp_path,
            *("--device", "cpu", "--nproc-per-node", "2", "--shape", f"{HIDDEN},{INTER},8,2"),
            *("--routings", "uniform", "--placements", "eplb:1", "--tokens", "2"),
        )
