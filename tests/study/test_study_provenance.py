"""Compatibility: `moe-artifact provenance` over every server log of the original study.

Each run's vLLM build and all2all manager are reported; with the mode each directory name
claims, the `_eplbon` run (EPLB asked for, not enabled), every "FlashInfer MoE" claim and
the mix of two builds inside one sweep are flagged, and nothing else is.
"""

from __future__ import annotations

import json
import re

import pytest

from artifact.cli import main

pytestmark = pytest.mark.study

DEV = "0.10.1rc2.dev263+g2f13319f4"
NAME = re.compile(r"\[(?P<mode>\w+?)_(?P<seqs>\d+)_(?P<tokens>\d+)(?:_(?P<eplb>eplb\w+))?\]")


def run_tool(capsys, *argv: str) -> tuple[int, dict]:
    code = main(["provenance", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_every_log_reports_build_and_manager_and_only_real_defects(study_data, capsys):
    logs = sorted(str(p) for p in study_data.glob("trace_collection/*/logs/*.log"))
    assert len(logs) == 22
    code, report = run_tool(capsys, *logs, "--expect", "auto")
    assert code == 1
    builds = {}
    for run in report["runs"]:
        prov = run["provenance"]
        label = NAME.search(run["name"]).group(0)
        assert prov["vllm_version"] in (DEV, "0.11.0"), label
        assert prov["gpu_model"] == "NVIDIA A100-SXM4-40GB"
        assert prov["moe_kernel"] == "triton_fused_moe"
        builds[label] = prov["vllm_build"]
        if run["family"] == "all2all":
            expected = "naive" if prov["vllm_version"] == DEV else "allgather_reducescatter"
            assert prov["all2all_manager"] == expected, label
            assert (prov["moe_config"]["E"], prov["moe_config"]["N"]) == (2, 14336)
        else:
            assert prov["all2all_manager"] is None
            assert (prov["moe_config"]["E"], prov["moe_config"]["N"]) == (8, 3584)
        if label.endswith("_eplbon]"):
            assert len(run["flags"]) == 1, run["flags"]
            assert run["flags"][0].startswith("EPLB: claimed enabled, the log shows not enabled")
            assert "--enable-eplb absent" in run["flags"][0]
        else:
            assert run["flags"] == [], (label, run["flags"])
    # The study's README names these three EP points as the 2f13319f ones.
    dev_ep = sorted(k for k, v in builds.items() if v == "2f13319f" and "all2all" in k)
    assert dev_ep == [
        "[defaultall2all_16_8192]",
        "[defaultall2all_64_8192]",
        "[defaultall2all_8_8192]",
    ]
    sweep = report["sweep_flags"]
    assert len(sweep) == 3 and sweep[0].startswith("the sweep mixes 2 vLLM builds: ")
    assert f"{DEV} (8: " in sweep[0] and "0.11.0 (14: " in sweep[0]
    assert sweep[1].startswith(f"mode all2all ran on 2 builds ({DEV}: 3, 0.11.0: 10)")
    assert sweep[2].startswith(f"mode baseline ran on 2 builds ({DEV}: 5, 0.11.0: 4)")


def test_flashinfer_moe_claims_are_flagged(study_data, capsys):
    card = study_data / "load_imbalance" / "workload.yaml"
    ep_logs = sorted(str(p) for p in study_data.glob("trace_collection/*vllmEP4*/logs/*.log"))
    tp_logs = sorted(str(p) for p in study_data.glob("trace_collection/*vllmTP4*/logs/*.log"))
    code, report = run_tool(capsys, *ep_logs, *tp_logs, "--card", str(card))
    assert code == 1
    # the card's own claim cannot hold on A100 with data parallel 4
    assert len(report["card_flags"]) == 1
    assert "DefaultAll2All (FlashInfer MoE)" in report["card_flags"][0]
    assert "compute capability 8.0" in report["card_flags"][0]
    for run in report["runs"]:
        kernel_flags = [f for f in run["flags"] if f.startswith("MoE kernel")]
        if run["family"] == "all2all":
            assert len(kernel_flags) == 1, run["name"]
            assert "Triton fused_moe" in kernel_flags[0]
            if run["provenance"]["vllm_version"] == "0.11.0":
                assert "FlashInfer CUTLASS MoE unavailable: data parallel" in kernel_flags[0]
            else:
                assert "has no bf16 FlashInfer CUTLASS MoE" in kernel_flags[0]
        else:  # "Baseline (Triton MoE)" holds
            assert kernel_flags == []
    # the card alone, without logs
    code, report = run_tool(capsys, "--card", str(card))
    assert code == 1 and report["runs"] == [] and len(report["card_flags"]) == 1


def test_a_single_matching_run_exits_zero(study_data, capsys):
    log = next(study_data.glob("trace_collection/*vllmTP4*baseline_32_8192]*/logs/*.log"))
    code, report = run_tool(capsys, str(log), "--expect", "auto")
    assert code == 0 and report["runs"][0]["flags"] == [] and report["sweep_flags"] == []
