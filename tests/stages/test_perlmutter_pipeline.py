"""The perlmutter profile's stages end to end against stand-ins (tests/fixtures/standins.py):
launcher bare with the stand-in `vllm` and `nsys` on PATH, the weights already in a scratch Hugging
Face cache. One Slurm job per experiment (MOE_ARTIFACT_EXPERIMENTS) on one run directory:
the EPLB ablation (timed runs, then a profiled pass per mode and launch under nsys), then the
imbalance experiment, then the rest; the imbalance stage turns the nsys reports into the EPLB
table and the checker's exp2 claims test its passes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from standins import install, write_hf_snapshot

from artifact.checker import check_run
from artifact.config.profiles import EXPERIMENTS_ENV, load_profile
from artifact.core.errors import ArtifactError
from artifact.core.manifest import RunDir, hash_tree
from artifact.core.runner import StageContext, run_stage
from artifact.stages import load_stage

A100 = "nvidia-a100-sxm4-40gb-x4"
JOB_STAGES = ("install", "datasets", "serve", "bench")  # reproduce/perlmutter/experiment.sbatch


@pytest.fixture
def pipeline(tmp_path, fake_vllm, monkeypatch):
    """(context, calls file of nsys): a small perlmutter-like profile, weights cached."""
    bin_dir = Path(os.environ["PATH"].split(os.pathsep)[0])
    install(bin_dir, "nsys")
    monkeypatch.setenv("FAKE_NSYS_CALLS", str(tmp_path / "nsys-calls"))
    raw = yaml.safe_load(fake_vllm.read_text())
    raw["engine"]["hf_home"] = "$MOE_TEST_SCRATCH/hf"
    monkeypatch.setenv("MOE_TEST_SCRATCH", str(tmp_path / "scratch"))
    write_hf_snapshot(tmp_path / "scratch" / "hf", raw["model"]["hub_id"])
    # Both ablation arms run the v0.11.0 build; with EPLB it logs "EPLB is enabled" and its
    # kernels take 5.6% longer (stand-in nsys).
    raw["modes"]["all2all-v011"]["env"] = {"FAKE_VLLM_VERSION": "0.11.0"}
    raw["modes"]["all2all-eplb"]["env"] = {
        "FAKE_VLLM_VERSION": "0.11.0",
        "FAKE_KERNEL_SCALE": "1.056",
    }
    raw["datasets"] = {"seed": 3, "count": 3, "prompts_per_dataset": 3}
    bench = {"request_rate": "inf", "output_len": 3, "warmup_requests": 1, "repeat": 2}
    experiments = raw["experiments"]
    experiments["config_sweep"].update(
        modes=["baseline"],
        max_num_seqs=[8],
        max_num_batched_tokens=[2048],
        fixed_max_num_seqs=8,
        fixed_max_num_batched_tokens=2048,
        prompts=3,
        bench=dict(bench, repeat=1),
    )
    # 2 launches of one run, and a profiled pass per launch, per arm
    experiments["eplb_ablation"].update(prompts=4, bench=dict(bench, repeat=1, launches=2))
    experiments["imbalance"].update(datasets=2, bench=dict(bench, repeat=1))
    fake_vllm.write_text(yaml.safe_dump(raw))
    ctx = StageContext(profile=load_profile(fake_vllm), run_dir=RunDir(tmp_path / "run"))
    return ctx, tmp_path / "nsys-calls"


def job(ctx, monkeypatch, experiment: str | None) -> list[str]:
    if experiment is None:
        monkeypatch.delenv(EXPERIMENTS_ENV, raising=False)
    else:
        monkeypatch.setenv(EXPERIMENTS_ENV, experiment)
    return [run_stage(load_stage(name), ctx) for name in JOB_STAGES]


def launch(log: Path) -> dict:
    return json.loads(log.read_text().splitlines()[0].split(": ", 1)[1])


def profiles_run(calls: Path) -> int:
    lines = calls.read_text().splitlines() if calls.exists() else []
    return sum(json.loads(line)[0] == "launch" for line in lines)


def profiled_reports(calls: Path) -> list[str]:
    """The reports the profiled passes collected into, in the order they ran."""
    lines = [json.loads(line) for line in calls.read_text().splitlines()]
    return [
        "/".join(Path(argv[argv.index("--output") + 1]).parts[-3:])
        for argv in lines
        if argv[0] == "start"
    ]


def windows(calls: Path) -> list[list[str]]:
    """The nsys commands of each profiled server's session, in order."""
    sessions: dict[str, list[str]] = {}
    for line in calls.read_text().splitlines():
        argv = json.loads(line)
        for arg in argv:
            if arg.startswith(("--session=", "--session-new=")):
                sessions.setdefault(arg.split("=", 1)[1], []).append(argv[0])
    return list(sessions.values())


def test_experiments_as_separate_jobs_then_the_eplb_table(pipeline, monkeypatch):
    ctx, nsys_calls = pipeline
    run, bench = ctx.run_dir.path, ctx.run_dir.path / "bench"

    # Job 1: the EPLB ablation only.
    assert job(ctx, monkeypatch, "eplb_ablation") == ["complete"] * 4
    model = json.loads((run / "install" / "model.json").read_text())
    assert model["commit"] and set(model["files"]) == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    assert not (run / "install" / "images.json").exists()  # launcher bare: no image
    assert sorted(p.name for p in (run / "serve").iterdir()) == ["all2all-eplb", "all2all-v011"]
    assert sorted(p.name for p in bench.iterdir()) == ["eplb_ablation"]
    assert (run / "datasets" / "eplb_prompts.jsonl").read_text().count("\n") == 4
    for mode in ("all2all-v011", "all2all-eplb"):
        unit = bench / "eplb_ablation" / mode
        record = json.loads((unit / "unit.json").read_text())
        assert [r["result"] for r in record["runs"]] == ["run.rep00.json", "run.rep01.json"]
        assert all(r["assignments_per_layer"] == 2 * r["processed_tokens"] for r in record["runs"])
        assert launch(unit / "server.log")["argv"][:2] == ["vllm", "serve"]  # timed: no nsys
        profile = unit / "profile"
        assert launch(profile / "server.log")["argv"][:2] == ["nsys", "launch"]
        assert launch(profile / "server.launch01.log")["argv"][:2] == ["nsys", "launch"]
        assert (profile / "server.nsys-rep").is_file()
        assert (profile / "server.launch01.nsys-rep").is_file()
        second = json.loads((profile / "profile.launch01.json").read_text())
        assert second["result"] == "profile.rep01.json"
        assert second["report"] == "server.launch01.nsys-rep"
        # the window opens after start-up and warm-up and closes after the pass
        log = (profile / "server.log").read_text()
        assert log.index("moe-artifact nsys start:") < log.index("moe-artifact nsys stop:")
        marker = json.loads((profile / "profile.json").read_text())
        assert marker["completed"] == 4 and marker["result"] == "profile.rep00.json"
        assert not list(profile.glob("*.routing")) and not (profile / "unit.json").exists()
    eplb_prov = json.loads(
        (bench / "eplb_ablation" / "all2all-eplb" / "provenance.json").read_text()
    )
    assert eplb_prov["eplb_enabled"] and eplb_prov["vllm_version"] == "0.11.0"
    # One build and one pinned all2all manager on both arms: EPLB is the only difference.
    off_prov = json.loads(
        (bench / "eplb_ablation" / "all2all-v011" / "provenance.json").read_text()
    )
    assert not off_prov["eplb_enabled"] and off_prov["vllm_version"] == "0.11.0"
    assert off_prov["all2all_manager"] == eplb_prov["all2all_manager"] == "naive"
    assert ctx.run_dir.record("bench")["experiments"] == ["eplb_ablation"]
    assert profiles_run(nsys_calls) == 4
    assert windows(nsys_calls) == [["launch", "start", "stop"]] * 4
    # the arms take turns, pass by pass
    assert profiled_reports(nsys_calls) == [
        f"{arm}/profile/{report}"
        for report in ("server.nsys-rep", "server.launch01.nsys-rep")
        for arm in ("all2all-v011", "all2all-eplb")
    ]
    ablation_files = hash_tree(bench / "eplb_ablation", run)
    timed_done = (bench / "eplb_ablation" / "all2all-v011" / "unit.json").stat().st_mtime_ns

    # Job 2: the imbalance experiment on the same run directory; job 1's units stay.
    assert job(ctx, monkeypatch, "imbalance") == ["skipped", "skipped", "complete", "complete"]
    assert (run / "serve" / "baseline" / "provenance.json").exists()
    assert sorted(p.name for p in bench.iterdir()) == ["eplb_ablation", "imbalance"]
    assert len(list((bench / "imbalance").rglob("unit.json"))) == 2 * 2
    assert hash_tree(bench / "eplb_ablation", run) == ablation_files
    assert ctx.run_dir.record("bench")["experiments"] == ["eplb_ablation", "imbalance"]
    assert ctx.run_dir.record("serve")["experiments"] == ["eplb_ablation", "imbalance"]
    assert job(ctx, monkeypatch, "imbalance") == ["skipped"] * 4

    # An interrupted ablation job resumes at its unfinished pass: only that profiled pass
    # runs again, the arm's finished pass stays as it was.
    eplb_profile = bench / "eplb_ablation" / "all2all-eplb" / "profile"
    first_pass = (eplb_profile / "server.nsys-rep").stat().st_mtime_ns
    (eplb_profile / "profile.launch01.json").unlink()
    ctx.run_dir.update("bench", status="failed")
    assert job(ctx, monkeypatch, "eplb_ablation")[-1] == "complete"
    assert profiles_run(nsys_calls) == 5
    assert profiled_reports(nsys_calls)[-1] == "all2all-eplb/profile/server.launch01.nsys-rep"
    assert (eplb_profile / "server.nsys-rep").stat().st_mtime_ns == first_pass
    assert (eplb_profile / "profile.launch01.json").is_file()
    off_unit = bench / "eplb_ablation" / "all2all-v011" / "unit.json"
    assert off_unit.stat().st_mtime_ns == timed_done

    # No selection: only the experiment not yet run (the config sweep) runs.
    assert job(ctx, monkeypatch, None)[-1] == "complete"
    assert (bench / "config_sweep" / "baseline" / "8_2048" / "unit.json").exists()
    assert ctx.run_dir.record("bench")["experiments"] == [
        "config_sweep",
        "eplb_ablation",
        "imbalance",
    ]

    # Analysis (reproduce/perlmutter/finish.sbatch): an older nsys knows only `gpukernsum`.
    monkeypatch.setenv("FAKE_NSYS_OLD", "1")
    assert run_stage(load_stage("imbalance"), ctx) == "complete"
    stats = [json.loads(x) for x in nsys_calls.read_text().splitlines() if '"stats"' in x]
    assert [c[c.index("--report") + 1] for c in stats] == ["cuda_gpu_kern_sum", "gpukernsum"] * 4
    report = bench / "eplb_ablation" / "all2all-eplb" / "profile" / "server.launch01.nsys-rep"
    csv_path = run / "imbalance" / "nsys" / "eplb_ablation" / "all2all-eplb" / "profile"
    assert stats[1] == [
        "stats",
        "--report",
        "gpukernsum",
        "--format",
        "csv",
        "--sqlite",
        str(csv_path / "server.launch01.kernels.sqlite"),
        "--output",
        str(csv_path / "server.launch01.kernels.nsys"),
        str(report),
    ]
    assert sorted(p.name for p in csv_path.iterdir()) == [
        "server.kernels.csv",
        "server.launch01.kernels.csv",
    ]
    assert not list(bench.rglob("*.sqlite")) and not list(bench.rglob("*.csv"))
    eplb = json.loads((run / "imbalance" / "eplb.json").read_text())
    # a row per arm and pass, the arms taking turns
    assert [(r["label"], r["launch"]) for r in eplb["runs"]] == [
        ("all2all-v011", 0),
        ("all2all-eplb", 0),
        ("all2all-v011", 1),
        ("all2all-eplb", 1),
    ]
    assert eplb["runs"][0]["source"] == (
        "imbalance/nsys/eplb_ablation/all2all-v011/profile/server.kernels.csv"
    )
    change = {c["metric"]: c["change_pct"] for c in eplb["comparison"]}
    total = next(c for c in eplb["comparison"] if c["metric"] == "fused_moe.total_ms")
    assert (total["n_a"], total["n_b"]) == (2, 2)
    assert total["change_low"] <= 5.6 <= total["change_high"]
    assert change["fused_moe.total_ms"] == pytest.approx(5.6, abs=0.01)
    assert change["nccl.by_collective.AllReduce.total_ms"] == pytest.approx(5.6, abs=0.01)
    assert change["attention.total_ms"] == pytest.approx(0.0)
    ablation_rows = [
        r
        for r in json.loads((run / "imbalance" / "runs.json").read_text())
        if r["experiment"] == "eplb_ablation"
    ]
    assert len(ablation_rows) == 2 * 2  # timed runs only: the profiled passes are not runs

    # The checker's EPLB claims are judged on this run's own tables.
    results, _, _ = check_run(run, ctx.profile, hardware=A100)
    exp2 = {r.id: r for r in results if r.id.startswith("exp2.")}
    assert exp2["exp2.eplb_enabled"].verdict == "PASS"
    assert exp2["exp2.fused_moe_total_higher"].verdict == "PASS"
    assert "(n=2 vs n=2)" in exp2["exp2.fused_moe_total_higher"].observed
    assert exp2["exp2.triton_fused_moe"].verdict == "PASS"
    # the stand-in scales every call alike: the longest call grows and the CV stays (up to the
    # CSV's rounding), so those two of the study's directions are not shown
    assert exp2["exp2.fused_moe_max_lower"].verdict == "FAIL"
    assert exp2["exp2.fused_moe_cv_lower"].verdict == "FAIL"
    assert exp2["exp2.balancedness_recorded"].verdict == "PASS"
    assert all(r.observed not in ("", "no data") for r in exp2.values()), exp2

    # A resumed analysis keeps kernel summaries newer than their reports.
    ctx.run_dir.update("imbalance", status="failed")
    assert run_stage(load_stage("imbalance"), ctx) == "complete"
    assert sum('"stats"' in x for x in nsys_calls.read_text().splitlines()) == len(stats)


def eplb_arm_with(ctx, fake_vllm: Path, variable: str) -> StageContext:
    """The context with one more stand-in variable set on the EPLB arm's servers."""
    raw = yaml.safe_load(fake_vllm.read_text())
    raw["modes"]["all2all-eplb"]["env"][variable] = "1"
    fake_vllm.write_text(yaml.safe_dump(raw))
    return StageContext(profile=load_profile(fake_vllm), run_dir=ctx.run_dir)


def any_port(argv: list[str]) -> list[str]:
    """A command with its --port value blanked (every server gets a free port of its own)."""
    at = argv.index("--port") + 1
    return [*argv[:at], "PORT", *argv[at + 1 :]]


def test_balancedness_is_logged_only_by_the_eplb_arms_diagnostic_pass(pipeline, monkeypatch):
    ctx, _ = pipeline
    run = ctx.run_dir.path
    assert job(ctx, monkeypatch, "eplb_ablation") == ["complete"] * 4
    arm = run / "bench" / "eplb_ablation" / "all2all-eplb"
    diagnostic = arm / "diagnostic"
    record = json.loads((diagnostic / "balancedness.json").read_text())
    # vLLM 0.11.0's per-step lines (stand-in: one per request); the probe's and warm-up's
    # came before the pass and are not counted, the 4 prompts' are.
    text = (diagnostic / "server.log").read_text()
    logged = [float(v) for v in re.findall(r"EPLB step: .*balancedness=([\d.]+)", text)]
    pass_values = logged[-4:]
    assert len(logged) > 4 and record["values"] == pass_values
    assert (record["count"], record["completed"], record["log"]) == (4, 4, "server.log")
    assert record["min"] == min(pass_values) and record["max"] == max(pass_values)
    assert record["mean"] == pytest.approx(sum(pass_values) / 4)
    assert (record["experiment"], record["mode"]) == ("eplb_ablation", "all2all-eplb")
    # Its server: the timed arm's command plus exactly --eplb-log-balancedness.
    timed = launch(arm / "server.log")
    assert record["argv"] == launch(diagnostic / "server.log")["argv"]
    assert any_port(record["argv"]) == [*any_port(timed["argv"]), "--eplb-log-balancedness"]
    assert launch(diagnostic / "server.log")["image"] == timed["image"]
    # No other server of the run (serve, timed, profiled) logs balancedness; the EPLB-off arm
    # has no diagnostic pass.
    others = [log for log in run.rglob("server*.log") if log.parent != diagnostic]
    assert len(others) == 2 + 2 * 2 + 2 * 2  # serve; 2 arms x 2 launches, timed and profiled
    for log in others:
        assert "--eplb-log-balancedness" not in launch(log)["argv"], log
        assert "balancedness=" not in log.read_text(), log
    assert not (run / "bench" / "eplb_ablation" / "all2all-v011" / "diagnostic").exists()
    assert not list((run / "bench").rglob("diagnostic.rep*"))  # untimed: no result is kept

    # Resumable: a finished pass is skipped, a lost record redone.
    done = (diagnostic / "balancedness.json").stat().st_mtime_ns
    (arm / "profile" / "profile.json").unlink()
    ctx.run_dir.update("bench", status="failed")
    assert job(ctx, monkeypatch, "eplb_ablation")[-1] == "complete"
    assert (diagnostic / "balancedness.json").stat().st_mtime_ns == done
    (diagnostic / "balancedness.json").unlink()
    ctx.run_dir.update("bench", status="failed")
    assert job(ctx, monkeypatch, "eplb_ablation")[-1] == "complete"
    assert json.loads((diagnostic / "balancedness.json").read_text())["count"] == 4
    assert (diagnostic / "server.log").read_text().count("moe-artifact launch:") == 1


def test_a_diagnostic_pass_without_balancedness_fails_and_stops_its_server(
    pipeline, fake_vllm, monkeypatch
):
    ctx = eplb_arm_with(pipeline[0], fake_vllm, "FAKE_NO_BALANCEDNESS")
    with pytest.raises(ArtifactError, match=r"diagnostic/server\.log: 4 of 4 diagnostic requests "):
        job(ctx, monkeypatch, "eplb_ablation")
    arm = ctx.run_dir.path / "bench" / "eplb_ablation" / "all2all-eplb"
    assert (arm / "unit.json").exists() and (arm / "profile" / "profile.json").exists()
    assert not (arm / "diagnostic" / "balancedness.json").exists()
    assert "Shutting down FastAPI server." in (arm / "diagnostic" / "server.log").read_text()


def test_reports_without_nsys_on_path_fail_clearly(pipeline, monkeypatch, tmp_path):
    ctx, _ = pipeline
    job(ctx, monkeypatch, "eplb_ablation")
    Path(os.environ["PATH"].split(os.pathsep)[0], "nsys").unlink()
    with pytest.raises(ArtifactError, match="module load nsight-systems"):
        run_stage(load_stage("imbalance"), ctx)


def test_a_missing_report_after_the_profiled_server_stopped(pipeline, monkeypatch):
    """An nsys that does not write its report is a StageFailed naming the server log."""
    ctx, _ = pipeline
    nsys = Path(os.environ["PATH"].split(os.pathsep)[0], "nsys")
    nsys.write_text(
        "#!/usr/bin/env bash\n[[ $1 == launch ]] || exit 0\n"
        'while [[ $1 != vllm ]]; do shift; done\nexec "$@"\n'
    )
    with pytest.raises(ArtifactError, match=r"no nsys report .*server\.log"):
        job(ctx, monkeypatch, "eplb_ablation")
    timed = ctx.run_dir.path / "bench" / "eplb_ablation"
    assert (timed / "all2all-v011" / "unit.json").exists() and (
        timed / "all2all-eplb" / "unit.json"
    ).exists()


def test_a_mode_whose_server_dies_in_start_up_is_recorded_and_not_benched(
    pipeline, fake_vllm, monkeypatch
):
    ctx = eplb_arm_with(pipeline[0], fake_vllm, "FAKE_DIE")
    assert job(ctx, monkeypatch, "eplb_ablation") == ["complete"] * len(JOB_STAGES)
    serve = ctx.run_dir.path / "serve" / "all2all-eplb"
    failure = json.loads((serve / "startup-failure.json").read_text())
    assert failure["error"] == "CUDA out of memory (fake)"
    assert not (serve / "provenance.json").exists()
    bench = ctx.run_dir.path / "bench" / "eplb_ablation"
    assert (bench / "all2all-v011" / "unit.json").exists()
    assert not (bench / "all2all-eplb").exists()
