"""expected_results/perlmutter.yaml on a stand-in of a correct new run on 4x A100: the
tables a run with 3 repetitions per point, one vLLM build, EPLB really on in its arm and
Triton's fused_moe would have (the profile's grid, 50 datasets), with the study's questions
answered as it claimed. Every claim PASSes; a run that repeats one of the study's defects
fails the claims that rest on it. (tests/stages/test_perlmutter_pipeline.py runs the real
stages against stand-ins of vLLM and nsys; its timings are too few to judge Experiments 1
and 3.)"""

import itertools
import math

import pytest
from test_checker_rules import tables_of

from artifact.checker import evaluate, load_claims
from artifact.config.profiles import load_profile, project_root

A100 = "nvidia-a100-sxm4-40gb-x4"
SEQS, TOKENS, REPS = (8, 16, 32, 64), (2048, 4096, 8192, 16384), 3
TABLE1 = {
    "fused_moe.total_ms": 5.6,
    "fused_moe.avg_us": 3.9,
    "fused_moe.max_us": -5.9,
    "fused_moe.cv": -4.8,
    "nccl.total_ms": 7.6,
    "nccl.by_collective.AllReduce.total_ms": 51.5,
}


def jitter(rep: int, key: int) -> float:
    """A small, uneven run-to-run spread (no two repetitions alike)."""
    return 1 + 0.01 * math.sin(3.1 * rep + 1.7 * key)


def sweep_rows() -> list[dict]:
    rows = []
    for seqs, tokens, rep in itertools.product(SEQS, TOKENS, range(REPS)):
        j = jitter(rep, seqs + tokens // 1024)
        budget = math.log2(tokens / 2048)
        base = {
            "mean_ttft_ms": 1000 * (tokens / 2048) * math.sqrt(64 / seqs) * j,
            "mean_tpot_ms": (50 + 20 * seqs / 8) * j,
            "output_throughput": 250 * seqs * j,
        }
        a2a = {
            "mean_ttft_ms": 100 + 0.05 * base["mean_ttft_ms"],
            "mean_tpot_ms": (40 + seqs / 8) * j,
            "output_throughput": (2000 + 50 * budget) * j,
        }
        for mode, values in (("baseline", base), ("all2all", a2a)):
            rows.append(
                {
                    "experiment": "config_sweep",
                    "mode": mode,
                    "max_num_seqs": seqs,
                    "max_num_batched_tokens": tokens,
                    "repetition": rep,
                    **values,
                }
            )
    return rows


def imbalance_rows() -> list[dict]:
    rows = []
    for d, rep in itertools.product(range(50), range(REPS)):
        j = jitter(rep, d)
        for mode, ttft, tpot, thr in (("baseline", 350, 46, 590), ("all2all", 420, 73, 400)):
            rows.append(
                {
                    "experiment": "imbalance",
                    "mode": mode,
                    "dataset": f"ds{d:02d}",
                    "repetition": rep,
                    "mean_ttft_ms": ttft * j * (1 + d / 500),
                    "mean_tpot_ms": tpot * j,
                    "output_throughput": thr * j,
                }
            )
    return rows


def provenance_rows(eplb_on: bool = True, flashinfer: bool = False) -> list[dict]:
    rows = []
    for experiment, modes in (
        ("config_sweep", ("baseline", "all2all")),
        ("imbalance", ("baseline", "all2all")),
        ("eplb_ablation", ("all2all-v011", "all2all-eplb")),
    ):
        for mode in modes:
            rows.append(
                {
                    "experiment": experiment,
                    "mode": mode,
                    "engine_version": "0.11.0",
                    "eplb_enabled": mode == "all2all-eplb" and eplb_on,
                    "flashinfer_moe_used": flashinfer and mode == "all2all",
                }
            )
    return rows


def correlation_rows() -> list[dict]:
    return [
        {"group": g, "x": x, "y": y, "method": m, "iqr_filter": iqr, "r": r, "n": 150}
        for g in ("baseline", "all2all")
        for x in ("predicted_score", "imb_cv", "imb_legacy-per-step")
        for y in ("mean_ttft_ms", "mean_tpot_ms", "output_throughput")
        for m, iqr, r in (
            ("spearman", False, 0.06),
            ("pearson", False, 0.9),
            ("spearman", True, 0.9),
        )
    ]


def verdicts(tmp_path, **changed) -> dict:
    tables = {
        "datasets": [{"score": 0.27 + i / 100} for i in range(50)],
        "runs": sweep_rows() + imbalance_rows(),
        "provenance": provenance_rows(),
        "eplb": [{"metric": m, "change_pct": v} for m, v in TABLE1.items()],
        "eplb_runs": [
            {"label": label, "fused_moe.instances": 96_000}
            for label in ("all2all-v011", "all2all-eplb")
        ],
        "correlations": correlation_rows(),
        # the EPLB arm's untimed diagnostic pass (bench/.../diagnostic/balancedness.json)
        "balancedness": [
            {
                "experiment": "eplb_ablation",
                "mode": "all2all-eplb",
                "count": 812,
                "min": 0.71,
                "mean": 0.86,
                "max": 0.97,
            }
        ],
        **changed,
    }
    profile = load_profile("perlmutter")
    claims = load_claims(project_root() / "expected_results" / "perlmutter.yaml")
    results = evaluate(claims, tables_of(tmp_path, **tables), profile, hardware=A100)
    return {r.id: r for r in results}


def test_a_correct_run_passes_every_claim(tmp_path):
    results = verdicts(tmp_path)
    assert {k: r.verdict for k, r in results.items() if r.verdict != "PASS"} == {}
    kinds = {r.kind for r in results.values()}
    assert kinds == {"completeness", "result"}
    # The trends are judged over 4 settings x 3 repetitions, Holm within the sweep's claims.
    falls = results["exp1.baseline_ttft_falls_with_seqs"]
    assert falls.details["p_value"] < 1e-4 and falls.details["family_size"] == 5
    assert "Wilcoxon signed-rank" in results["exp3.all2all_tpot_higher"].observed


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"provenance": provenance_rows(eplb_on=False)}, "exp2.eplb_enabled"),
        ({"provenance": provenance_rows(flashinfer=True)}, "exp3.all2all_not_flashinfer_moe"),
        ({"eplb_runs": [{"label": "x", "fused_moe.instances": 0}]}, "exp2.triton_fused_moe"),
    ],
)
def test_a_run_with_one_of_the_studys_defects_fails(tmp_path, change, failing):
    results = verdicts(tmp_path, **change)
    failed = {k for k, r in results.items() if r.verdict == "FAIL"}
    assert failing in failed
    # Every result claim of that experiment rests on it and fails with it.
    dependants = {k for k, r in results.items() if f"premise {failing} FAILs" in r.reason}
    assert dependants and dependants <= failed


def test_a_run_without_the_balancedness_pass_fails_only_that_claim(tmp_path):
    """The diagnostic pass is no premise of a timing claim: without its record only its own
    completeness claim fails."""
    results = verdicts(tmp_path, balancedness=[])
    failed = {k for k, r in results.items() if r.verdict != "PASS"}
    assert failed == {"exp2.balancedness_recorded"}
    assert not [r for r in results.values() if "exp2.balancedness_recorded" in r.reason]
