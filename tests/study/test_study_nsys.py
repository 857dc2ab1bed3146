"""Compatibility: `nsys-summary` reproduces the study's Table 1 and its kernel summary JSON."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.study

# Table 1 of the study, as printed: (key path, EPLB off, EPLB on, rounding of the print).
TABLE_1 = (
    ("fused_moe.total_ms", 102_664, 108_419, 0.5),
    ("fused_moe.avg_us", 383.68, 398.68, 0.005),
    ("fused_moe.max_us", 239_809, 225_736, 0.5),
    ("fused_moe.cv", 6.44, 6.14, 0.005),
    ("nccl.total_ms", 85_965, 92_534, 0.5),
    ("nccl.by_collective.AllReduce.total_ms", 1_272, 1_928, 0.5),
)


def get(summary, key):
    for part in key.split("."):
        summary = summary[part]
    return summary


@pytest.fixture
def payload(study_data):
    eplb = study_data / "eplb"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "artifact",
            "nsys-summary",
            eplb / "EPLBOFF.csv",
            eplb / "EPLBON.csv",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_table_1(payload):
    off, on = payload["runs"]
    for key, expected_off, expected_on, rounding in TABLE_1:
        assert abs(get(off, key) - expected_off) <= rounding, key
        assert abs(get(on, key) - expected_on) <= rounding, key
    changes = {row["metric"]: row["change_pct"] for row in payload["comparison"]}
    assert changes["fused_moe.total_ms"] == pytest.approx(5.6, abs=0.05)
    assert changes["nccl.total_ms"] == pytest.approx(7.6, abs=0.05)
    assert changes["nccl.by_collective.AllReduce.total_ms"] == pytest.approx(51.5, abs=0.05)


def test_every_number_of_the_study_summary(payload, study_data):
    study = json.loads((study_data / "eplb" / "kernel_comparison_results.json").read_text())
    for ours, theirs in zip(payload["runs"], (study["baseline"], study["eplb"]), strict=True):
        exact = {
            "moe.total_ms": "moe_total_time_ms",
            "moe.instances": "moe_instances",
            "nccl.total_ms": "nccl_total_time_ms",
            "nccl.instances": "nccl_instances",
            "nccl.by_collective.AllReduce.total_ms": "allreduce_total_ms",
            "nccl.by_collective.AllReduce.instances": "allreduce_instances",
            "attention.total_ms": "attention_total_ms",
            "total_kernel_time_ms": "total_kernel_time_ms",
            "kernel_instances": "total_kernel_instances",
            **{
                f"fused_moe.{k}": f"fused_moe_{k}"
                for k in ("total_ms", "instances", "avg_us", "med_us", "min_us", "max_us")
            },
            "fused_moe.std_us": "fused_moe_std_us",
            "fused_moe.cv": "fused_moe_cv",
            "fused_moe.max_min": "fused_moe_max_min_ratio",
            "fused_moe.med_mean": "fused_moe_med_mean_ratio",
        }
        for key, field in exact.items():
            assert get(ours, key) == pytest.approx(theirs[field], rel=1e-9), key
        # The study summed the file's Time column (0.1% steps); we divide the totals.
        for key, field, kernels in (
            ("moe.time_pct", "moe_time_pct", 6),
            ("nccl.time_pct", "nccl_time_pct", 5),
            ("attention.time_pct", "attention_time_pct", 8),
        ):
            assert abs(get(ours, key) - theirs[field]) <= 0.05 * kernels, key
        names = {k["name"] for k in ours["moe_aux"]["kernels"]} | {"fused_moe_kernel"}
        assert names == set(theirs["moe_kernels"])
        assert sum(c["kernels"] for c in ours["nccl"]["by_collective"].values()) == len(
            theirs["nccl_kernels"]
        )
        for mine, top in zip(ours["top_kernels"], theirs["top5_kernels"], strict=True):
            assert mine["name"] == top["name"] and mine["instances"] == top["instances"]
            assert mine["total_ms"] == pytest.approx(top["total_ms"], abs=0.5)
            assert mine["time_pct"] == pytest.approx(top["pct"], abs=0.05)
