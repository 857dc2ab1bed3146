"""expected_results/perlmutter.yaml on a stand-in of a correct new run on 4x A100: the
tables a run with 3 repetitions per point, one vLLM build, EPLB really on in its arm and
Triton's fused_moe would have (the profile's grid, 50 datasets, 3 profiled passes per EPLB
arm), with the study's questions answered as it claimed. Every claim PASSes; a run that
repeats one of the study's defects fails the claims that rest on it, and an EPLB change
inside the pass-to-pass noise (the study's Table 1) is no result.
(tests/stages/test_perlmutter_pipeline.py runs the real stages against stand-ins of vLLM and
nsys; its timings are too few to judge Experiments 1 and 3.)"""

import itertools
import math

import pytest
from test_checker_rules import tables_of

from artifact.checker import evaluate, load_claims
from artifact.checker.tables import flatten
from artifact.config.profiles import load_profile, project_root
from artifact.profiling.nsys import compare

A100 = "nvidia-a100-sxm4-40gb-x4"
SEQS, TOKENS, REPS = (8, 16, 32, 64), (2048, 4096, 8192, 16384), 3
# Table 1: EPLB off, and the change with EPLB "on" in % (one pass each, one configuration)
TABLE1 = {
    "fused_moe.total_ms": (102_664, 5.6),
    "fused_moe.avg_us": (383.68, 3.9),
    "fused_moe.max_us": (239_809, -5.9),
    "fused_moe.cv": (6.44, -4.8),
    "nccl.total_ms": (85_965, 7.6),
    "nccl.by_collective.AllReduce.total_ms": (1_272, 51.5),
}
ARMS = ("all2all-v011", "all2all-eplb")  # EPLB off, on


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


def kernel_tables(launches: int = 3, noise: float | None = None) -> dict[str, list[dict]]:
    """`eplb_runs` (a row per arm and profiled pass, the arms taking turns) and `eplb` (the
    change of the arms' medians, the real `compare`) as the imbalance stage writes them.

    EPLB on changes each metric by Table 1's %; pass k deviates from its arm's value by the
    factor 1 + s x_k: a correct run's s = 0.5% and x_k an uneven sine in [-1, 1]; with `noise`,
    s = noise x the metric's Table 1 change and x_k = -1, 0, 1 (off), 1, 0, -1 (on), so the
    medians differ by exactly Table 1's change."""
    passes = []
    for launch, arm in itertools.product(range(launches), ARMS):
        on = arm == ARMS[1]
        summary: dict = {"label": arm, "launch": launch, "fused_moe": {"instances": 96_000}}
        for metric, (off, change) in TABLE1.items():
            if noise is None:
                deviation = 0.005 * math.sin(3.1 * launch + 1.7 * len(metric) + on)
            else:
                deviation = noise * abs(change) / 100 * (launch - 1) * (-1 if on else 1)
            *path, leaf = metric.split(".")
            node = summary
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = off * (1 + change / 100 if on else 1) * (1 + deviation)
        passes.append(summary)
    sides = [[p for p in passes if p["label"] == arm] for arm in ARMS]
    return {"eplb": compare(*sides), "eplb_runs": [flatten(p) for p in passes]}


def verdicts(tmp_path, **changed) -> dict:
    tables = {
        "datasets": [{"score": 0.27 + i / 100} for i in range(50)],
        "runs": sweep_rows() + imbalance_rows(),
        "provenance": provenance_rows(),
        **kernel_tables(),
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
    # Experiment 2 over 3 passes a side: Welch's t, Holm over the experiment's 6 tests
    total = results["exp2.fused_moe_total_higher"]
    assert total.details["test"] == "Welch t" and total.details["family_size"] == 6
    assert "n=3 vs n=3" in total.observed


def exp2_results(results: dict) -> dict:
    return {
        k: r for k, r in results.items() if r.experiment == "eplb_ablation" and r.kind == "result"
    }


def test_an_eplb_change_inside_the_pass_to_pass_noise_is_no_result(tmp_path):
    """The arms' medians differ by exactly Table 1's changes, but the passes of each arm
    spread wider than that (spread 1.2 x the change): not one of the study's Table 1
    directions is shown, whatever the change of medians says."""
    noisy = kernel_tables(noise=-1.2)
    change = {r["metric"]: r["change_pct"] for r in noisy["eplb"] if r["metric"] in TABLE1}
    assert change == pytest.approx({m: c for m, (_, c) in TABLE1.items()})
    results = exp2_results(verdicts(tmp_path, **noisy))
    assert len(results) == 6
    assert {k: r.verdict for k, r in results.items()} == dict.fromkeys(results, "FAIL")
    assert all("does not support it" in r.reason for r in results.values())


def test_one_profiled_pass_per_arm_is_refused(tmp_path):
    """One pass a side has no spread to test a change against: SKIP, saying so."""
    results = exp2_results(verdicts(tmp_path, **kernel_tables(launches=1)))
    assert len(results) == 6
    assert {r.verdict for r in results.values()} == {"SKIP"}
    assert all("a has 1 value and b has 1 value" in r.reason for r in results.values())


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"provenance": provenance_rows(eplb_on=False)}, "exp2.eplb_enabled"),
        ({"provenance": provenance_rows(flashinfer=True)}, "exp3.all2all_not_flashinfer_moe"),
        (
            {"eplb_runs": [{**r, "fused_moe.instances": 0} for r in kernel_tables()["eplb_runs"]]},
            "exp2.triton_fused_moe",
        ),
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
