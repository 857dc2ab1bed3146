"""The bench stage end to end on a real embedded server: routing checks, a server killed in
the middle of a run, resume at the unfinished unit, and equality with an uninterrupted run."""

import json
import os
import signal

import numpy as np
import pytest
from helpers import tiny_mixtral, tiny_sweep

from artifact.config.profiles import load_profile
from artifact.core.errors import StageFailed
from artifact.core.manifest import RunDir
from artifact.core.records import ResultFile
from artifact.core.runner import StageContext, run_stage
from artifact.engines.base import Server
from artifact.routing.format import layer_totals
from artifact.stages import load_stage

pytestmark = pytest.mark.engine
pytest.importorskip("torch")

TINY = tiny_mixtral(max_position_embeddings=512)


@pytest.fixture
def tiny_profile(write_profile, local_profile_raw, tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_ARTIFACT_CACHE", str(tmp_path / "cache"))
    model = dict(local_profile_raw["model"], architecture=TINY, max_model_len=512)
    experiments = {
        "config_sweep": tiny_sweep(),
        "eplb_ablation": local_profile_raw["experiments"]["eplb_ablation"],
    }
    modes = {"grouped_mm": local_profile_raw["modes"]["grouped_mm"]}
    datasets = {"seed": 3, "count": 4, "prompts_per_dataset": 4}
    return load_profile(
        write_profile(
            {"model": model, "experiments": experiments, "modes": modes, "datasets": datasets}
        )
    )


def run_pipeline(profile, run_dir):
    ctx = StageContext(profile=profile, run_dir=RunDir(run_dir))
    for name in ("install", "datasets", "serve", "bench"):
        run_stage(load_stage(name), ctx)
    return ctx


def observable(run_dir):
    """Everything of the bench outputs but timing."""
    out = {}
    for path in sorted((run_dir / "bench" / "config_sweep").rglob("run.rep*.json")):
        data = json.loads(path.read_text())
        key = str(path.relative_to(run_dir))
        out[key] = (
            data["generated_texts"],
            data["input_lens"],
            data["output_lens"],
            data["total_input_tokens"],
            data["total_output_tokens"],
            layer_totals(path.with_suffix(".routing")).tolist(),
        )
    return out


def test_killed_server_fails_clearly_and_the_rerun_resumes(tiny_profile, tmp_path, monkeypatch):
    clean = run_pipeline(tiny_profile, tmp_path / "clean")
    first_unit = tmp_path / "clean" / "bench" / "config_sweep" / "grouped_mm" / "2_128"
    unit = json.loads((first_unit / "unit.json").read_text())
    assert [r["replay_match"] for r in unit["runs"]] == [True, True]
    assert unit["runs"][0]["assignments_per_layer"] == 2 * unit["runs"][0]["processed_tokens"]

    # Kill the server right after the capture of the second unit's first run begins.
    calls = {"n": 0}
    original = Server.start_routing

    def start_then_kill(self, path, meta=None):
        original(self, path, meta)
        calls["n"] += 1
        if calls["n"] == 3:  # unit 1 has two runs; this is unit 2, run 0
            os.killpg(self.process.pid, signal.SIGKILL)

    monkeypatch.setattr(Server, "start_routing", start_then_kill)
    interrupted = tmp_path / "interrupted"
    with pytest.raises(StageFailed, match="server died during config_sweep/grouped_mm/4_128"):
        run_pipeline(tiny_profile, interrupted)
    record = RunDir(interrupted).record("bench")
    assert record["status"] == "failed" and "server died" in record["error"]
    done = interrupted / "bench" / "config_sweep" / "grouped_mm" / "2_128" / "unit.json"
    assert done.exists()
    kept_mtime = done.stat().st_mtime_ns
    assert not (
        interrupted / "bench" / "config_sweep" / "grouped_mm" / "4_128" / "unit.json"
    ).exists()

    monkeypatch.setattr(Server, "start_routing", original)
    ctx = StageContext(profile=tiny_profile, run_dir=RunDir(interrupted))
    assert run_stage(load_stage("bench"), ctx) == "complete"
    assert done.stat().st_mtime_ns == kept_mtime  # the finished unit was not redone
    assert observable(interrupted) == observable(tmp_path / "clean")
    assert run_stage(load_stage("bench"), clean) == "skipped"


def test_routing_totals_check_catches_a_miscount(tmp_path):
    from artifact.routing.format import RoutingHeader, RoutingWriter
    from artifact.stages.bench import check_routing_totals

    path = tmp_path / "run.routing"
    with RoutingWriter(path, RoutingHeader(num_experts=8, top_k=2, num_layers=1)) as writer:
        writer.write_step([(0, 0, 0, 5, np.array([2, 2, 2, 2, 2, 0, 0, 0]))])
    fields = {"duration": 1.0, "completed": 1, "input_lens": [3], "output_lens": [3]}
    fields.update(ttfts=[0.1], itls=[[0.1, 0.1]], generated_texts=["abc"], errors=[""])
    fields["input_lens_usage"] = [3]
    result = ResultFile.model_validate({**fields, "output_lens_usage": [3]})
    assert check_routing_totals(path, result, 2)["processed_tokens"] == 5
    result = ResultFile.model_validate({**fields, "output_lens_usage": [4]})
    with pytest.raises(StageFailed, match="do not all equal top_k x processed tokens"):
        check_routing_totals(path, result, 2)


def test_replay_mismatch_counts_moved_assignments():
    from artifact.stages.bench import replay_mismatch

    expected = np.array([[4, 2, 0, 2], [2, 2, 2, 2]])
    assert replay_mismatch(expected, expected.copy()) == 0.0
    moved = np.array([[3, 3, 0, 2], [2, 2, 2, 2]])  # one assignment went from expert 0 to 1
    assert replay_mismatch(expected, moved) == 1 / 16
    assert replay_mismatch(expected, expected[:1]) == 1.0  # another layer count: all differ


def test_launches_interleave_modes_and_resume_per_launch(
    write_profile, local_profile_raw, tmp_path, monkeypatch
):
    """Two modes, one sweep point, two launches of one run each: the modes take turns
    (ABAB), a launch killed midway is redone alone, and every run records its launch."""
    monkeypatch.setenv("MOE_ARTIFACT_CACHE", str(tmp_path / "cache"))
    sweep = tiny_sweep()
    sweep.update(modes=["eager", "grouped_mm"], max_num_seqs=[2])
    sweep["bench"] = dict(sweep["bench"], repeat=1, launches=2)
    profile = load_profile(
        write_profile(
            {
                "model": dict(local_profile_raw["model"], architecture=TINY, max_model_len=512),
                "experiments": {
                    "config_sweep": sweep,
                    "eplb_ablation": local_profile_raw["experiments"]["eplb_ablation"],
                },
                "modes": {m: local_profile_raw["modes"][m] for m in sweep["modes"]},
                "datasets": {"seed": 3, "count": 4, "prompts_per_dataset": 4},
            }
        )
    )
    order = []
    original = Server.start_routing

    def spy(self, path, meta=None):
        original(self, path, meta)
        order.append((meta["unit"].split("/")[1], meta["launch"], meta["repetition"]))
        if len(order) == 4 and kill:
            os.killpg(self.process.pid, signal.SIGKILL)

    kill = True
    monkeypatch.setattr(Server, "start_routing", spy)
    with pytest.raises(StageFailed, match="server died during config_sweep/grouped_mm/2_128"):
        run_pipeline(profile, tmp_path)
    assert order == [("eager", 0, 0), ("grouped_mm", 0, 0), ("eager", 1, 1), ("grouped_mm", 1, 1)]
    units = tmp_path / "bench" / "config_sweep"
    assert (units / "eager" / "2_128" / "unit.json").exists()
    grouped = units / "grouped_mm" / "2_128"
    assert not (grouped / "unit.json").exists()
    partial = json.loads((grouped / "unit.partial.json").read_text())
    assert [r["launch"] for r in partial["runs"]] == [0]

    kill, order[:] = False, []
    ctx = StageContext(profile=profile, run_dir=RunDir(tmp_path))
    assert run_stage(load_stage("bench"), ctx) == "complete"
    assert order == [("grouped_mm", 1, 1)]  # only the killed launch ran again
    assert not (grouped / "unit.partial.json").exists()
    for mode in ("eager", "grouped_mm"):
        unit = json.loads((units / mode / "2_128" / "unit.json").read_text())
        assert [(r["launch"], r["repetition"]) for r in unit["runs"]] == [(0, 0), (1, 1)]
        assert [r["result"] for r in unit["runs"]] == ["run.rep00.json", "run.rep01.json"]
        # each launch is a server of its own, with its own log and provenance
        assert (units / mode / "2_128" / "provenance.json").exists()
        assert (units / mode / "2_128" / "provenance.launch01.json").exists()
        assert (units / mode / "2_128" / "server.launch01.log").exists()
    run_stage(load_stage("imbalance"), ctx)
    runs = json.loads((tmp_path / "imbalance" / "runs.json").read_text())
    assert {(r["data_parallel_size"], r["effective_concurrency"]) for r in runs} == {(1, 2)}
    assert sorted((r["mode"], r["launch"]) for r in runs) == [
        ("eager", 0),
        ("eager", 1),
        ("grouped_mm", 0),
        ("grouped_mm", 1),
    ]
