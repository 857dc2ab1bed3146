"""Compatibility: the study's legacy imbalance numbers, and the default measures on its logs."""

import json
import math
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from artifact.core.errors import ArtifactError
from artifact.routing.aggregate import analyze_gate_log_run, analyze_path
from artifact.study.legacy import compare_default_vs_legacy

pytestmark = pytest.mark.study

# Gate-log tree -> (legacy-per-step summary, legacy-aggregated summary), keyed gates_logs_NN.
MODES = {
    "baseline_gates_logs": ("baseline_real_imbalance.json", "new_baseline_results.json"),
    "default_all2all_gates_logs": (
        "default_all2all_real_imbalance.json",
        "new_default_results.json",
    ),
}


@cache
def analyzed(tree: Path):
    # skip_bad so that a damaged copy of the data is reported whole (every bad file, not
    # only the first); the copy this was built against has none, see the test below.
    return analyze_path(tree, skip_bad=True)


@pytest.mark.parametrize("tree", sorted(MODES))
def test_legacy_methods_reproduce_the_study(study_data, tree):
    root = study_data / "load_imbalance"
    results, left_out = analyzed(root / tree)
    skipped = [*left_out, *(s for r in results for s in r.skipped)]
    # Every gate log of the study parses and every run has its 32 layers: the study's
    # numbers were computed from all of them, so nothing may be left out to reproduce them.
    assert skipped == [], f"damaged gate logs in this copy of the study data: {skipped}"
    per_step, aggregated = (json.loads((root / name).read_text()) for name in MODES[tree])
    by_run = {r.run.split("/")[-1]: r for r in results}
    assert set(by_run) == set(per_step) == set(aggregated)
    for run, result in by_run.items():
        assert result.num_layers == 32 and result.num_experts == 8
        assert result.legacy["legacy-per-step"] == pytest.approx(per_step[run], rel=1e-9)
        assert result.legacy["legacy-aggregated"] == pytest.approx(aggregated[run], rel=1e-9)


def test_default_measures_per_layer_and_how_far_from_legacy(study_data):
    root = study_data / "load_imbalance"
    baseline, _ = analyzed(root / "baseline_gates_logs")
    all2all, _ = analyzed(root / "default_all2all_gates_logs")
    for result in (*baseline, *all2all):
        totals = [r for r in result.per_layer if r["view"] == "layer_total"]
        assert {r["layer"] for r in totals} == set(range(32))
    for row in compare_default_vs_legacy(baseline):
        # Per layer, the CV is 3-8x what the sum over layers shows ...
        assert 3 < row["layer_cv_over_legacy_aggregated"] < 8
        # ... and the per-step CV of the ~30-token steps sits just above the uniform-routing
        # floor sqrt(6/60) (a few steps have 29 tokens).
        assert row["per_step_cv_floor"] == pytest.approx(math.sqrt(0.1), rel=0.01)
        assert row["per_step_cv_over_floor"] > 1
    for row in compare_default_vs_legacy(all2all):
        # One decode token per step: the per-step CV is sqrt(3) whatever the routing.
        assert row["per_step_cv"] == pytest.approx(math.sqrt(3), rel=1e-12)
        assert row["per_step_cv_floor"] == pytest.approx(math.sqrt(3), rel=1e-12)
        assert row["layer_cv_over_legacy_aggregated"] > 4


def test_cli_on_the_study_tree(study_data, tmp_path):
    tree = study_data / "load_imbalance" / "default_all2all_gates_logs"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "artifact",
            "imbalance-metrics",
            tree,
            "--json",
            "--out",
            tmp_path / "tables",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    expected = json.loads((tree.parent / "new_default_results.json").read_text())
    for run in payload["runs"]:
        key = run["run"].split("/")[-1]
        assert run["legacy"]["legacy-aggregated"] == pytest.approx(expected[key], rel=1e-9)
    assert len(payload["default_vs_legacy"]) == 30 and payload["skipped"] == []
    assert (tmp_path / "tables" / "per_layer.csv").is_file()


def test_a_damaged_copy_is_reported(study_data, tmp_path):
    # A copy (outside the repository) of one run with one file cut short, as the study's
    # concurrent writers could have left it.
    run = tmp_path / "gates_logs_05"
    shutil.copytree(study_data / "load_imbalance" / "baseline_gates_logs" / "gates_logs_05", run)
    cut = run / "gate_logs_7.json"
    cut.write_bytes(cut.read_bytes()[:300])
    with pytest.raises(ArtifactError, match=r"gate_logs_7.json: truncated JSON at byte 300"):
        analyze_gate_log_run(run)
    result = analyze_gate_log_run(run, skip_bad=True)
    assert [s.path for s in result.skipped] == [str(cut)]
    assert {r["layer"] for r in result.per_layer} == set(range(32)) - {7}
