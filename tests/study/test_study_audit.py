"""Compatibility: the audit judges the study's claims on its own raw data
(`moe-artifact check --profile perlmutter --from-study DIR`)."""

import json

import pytest

from artifact.cli import main

pytestmark = pytest.mark.study

# The verdict on each of the study's claims, on its own data (see reproduce/CLAIMS.md).
VERDICTS = {
    "exp1.one_engine_build": "FAIL",
    "exp1.baseline_ttft_falls_with_seqs": "PASS",
    "exp1.baseline_ttft_rises_with_tokens": "FAIL",
    "exp1.all2all_ttft_lower": "PASS",
    "exp1.all2all_ttft_steadier": "PASS",
    "exp1.all2all_tpot_lower": "FAIL",
    "exp1.all2all_tpot_steadier": "PASS",
    "exp1.all2all_throughput_smoother": "PASS",
    "exp1.all2all_throughput_rises_with_tokens": "FAIL",
    "exp2.eplb_enabled": "FAIL",
    "exp2.flashinfer_moe_kernel": "FAIL",
    "exp2.fused_moe_total_change": "FAIL",
    "exp2.fused_moe_avg_change": "FAIL",
    "exp2.fused_moe_max_change": "FAIL",
    "exp2.fused_moe_cv_change": "FAIL",
    "exp2.nccl_total_change": "FAIL",
    "exp2.allreduce_change": "FAIL",
    "exp3.predicted_score_low": "PASS",
    "exp3.predicted_score_high": "PASS",
    "exp3.no_link_baseline": "PASS",
    "exp3.no_link_all2all": "FAIL",
    "exp3.all2all_ttft_higher": "FAIL",
    "exp3.all2all_tpot_higher": "PASS",
    "exp3.all2all_throughput_lower": "PASS",
    "exp3.all2all_is_flashinfer_moe": "FAIL",
}


@pytest.fixture(scope="module")
def audit(tmp_path_factory, study_data):
    study = study_data
    run = tmp_path_factory.mktemp("audit") / "run"
    code = main(
        ["check", "--profile", "perlmutter", "--from-study", str(study), "--run-dir", str(run)]
    )
    return code, json.loads((run / "check" / "claims.json").read_text())


def test_a_verdict_for_every_claim_of_the_study(study_data, audit):
    code, data = audit
    assert code == 1  # some of the study's claims fail on its own data
    assert {c["id"]: c["verdict"] for c in data["claims"]} == VERDICTS
    assert data["hardware"] == "nvidia-a100-x4"
    by_id = {c["id"]: c for c in data["claims"]}
    # The Table 1 numbers are in the data; the claim fails on its premise.
    total = by_id["exp2.fused_moe_total_change"]
    assert total["observed"] == "5.606 %"
    assert total["reason"].startswith("premise exp2.eplb_enabled FAILs")
    # The per-step measure is the constant sqrt(3) on all2all: it cannot support the claim.
    assert "undefined (constant input)" in by_id["exp3.no_link_all2all"]["reason"]


def test_provenance_findings_from_the_server_logs(study_data, audit):
    _, data = audit
    findings = {f["id"]: f for f in data["findings"]}
    eplb = findings["eplb_not_enabled"]
    assert "did not enable EPLB" in eplb["finding"] and "same configuration" in eplb["finding"]
    assert "eplbon" in eplb["evidence"]
    assert "No FlashInfer MoE kernel ran" in findings["no_flashinfer_moe_kernel"]["finding"]
    assert "FlashInfer" in findings["log.moe_kernel"]["finding"]
    assert any("mixes 2 vLLM builds" in f["finding"] for f in data["findings"])
    assert "constant_measures.all2all" in findings
