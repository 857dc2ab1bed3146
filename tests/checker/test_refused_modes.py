"""Claims on modes whose server died during start-up are SKIP, quoting the server's error."""

from __future__ import annotations

from artifact.checker import evaluate, load_claims
from artifact.checker.tables import RunTables
from artifact.config.profiles import load_profile, project_root
from artifact.core.layout import RunLayout
from artifact.core.records import StartupFailure, write_record

EPLB = "ValidationError: Expert parallelism load balancing is only supported on CUDA devices now."


def test_claims_on_refused_modes_skip_with_the_error(tmp_path):
    layout = RunLayout(tmp_path)
    for mode, error in (("all2all", "RuntimeError: Class values"), ("all2all-eplb", EPLB)):
        record = StartupFailure(mode=mode, error=error, seconds=1.0, log="server.log")
        layout.serve_mode(mode).path.mkdir(parents=True)
        write_record(layout.serve_mode(mode).startup_failure, record)
    claims = load_claims(project_root() / "expected_results" / "vllm-cpu.yaml")
    results = {r.id: r for r in evaluate(claims, RunTables(tmp_path), load_profile("vllm-cpu"))}
    assert results["exp2.eplb_enabled"].verdict == "SKIP"
    assert results["exp2.eplb_enabled"].reason == (
        f"mode all2all-eplb: the server died during start-up: {EPLB}"
    )
    assert "RuntimeError: Class values" in results["exp2.all2all_served"].reason
    assert results["bench.sweep_runs"].verdict == "FAIL"  # no data: its modes were not refused
