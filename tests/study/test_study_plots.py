"""Compatibility: `moe-artifact plots --from-study` regenerates the study's figures and
Table 1 from its raw data, with no conversion step."""

import argparse
import json
from pathlib import Path

import pytest

from artifact.cli import main
from artifact.stages.plots import STAGE

pytestmark = pytest.mark.study


@pytest.fixture(scope="module")
def plotted(tmp_path_factory, study_data):
    study = study_data
    run = tmp_path_factory.mktemp("study") / "run"
    assert main(["plots", "--from-study", str(study), "--run-dir", str(run)]) == 0
    return run


def test_figures_1_to_5_and_table_1(study_data, plotted):
    out = plotted / "plots"
    figures = {f["number"]: f for f in json.loads((out / "figures.json").read_text())}
    assert set(figures) == {"1", "2", "3", "4", "5", "6", "7a", "7b", "8"}
    for f in figures.values():
        assert (out / f["file"]).stat().st_size > 20_000
    # Fig. 1-2: the study's cross through 32 seqs / 8192 tokens, its two vLLM builds marked.
    assert "max-num-batched-tokens = 8192" in figures["1"]["caption"]
    assert "max-num-seqs = 32" in figures["2"]["caption"]
    assert "one run per point" in figures["1"]["caption"]
    assert "0.10.1rc2.dev263+g2f13319f4" in figures["1"]["caption"]
    # Table 1, as the study printed it.
    table = (out / "table1_eplb.md").read_text()
    for cells in (
        "| fused_moe total (ms) | 102,664.00 | 108,419.00 | +5.6% |",
        "| fused_moe mean (us) | 383.68 | 398.68 | +3.9% |",
        "| fused_moe max (us) | 239,809.00 | 225,736.00 | -5.9% |",
        "| NCCL total (ms) | 85,965.25 | 92,534.09 | +7.6% |",
        "| NCCL AllReduce (ms) | 1,272.25 | 1,927.80 | +51.5% |",
    ):
        assert cells in table, cells
    assert "never enabled EPLB" in figures["3"]["caption"]
    # Fig. 4-5: performance vs predicted score and vs the observed measures, per mode.
    assert "predicted (induced) imbalance score" in figures["4"]["caption"]
    assert "study's two legacy measures" in figures["5"]["caption"]
    report = (out / "report.md").read_text()
    assert "Table 1: EPLB off vs on" in report and "eplb_not_enabled" in report


def test_study_tables_come_from_the_library_readers(study_data, plotted):
    runs = json.loads((plotted / "study-import" / "runs.json").read_text())
    sweep = [r for r in runs if r["experiment"] == "config_sweep"]
    imbalance = [r for r in runs if r["experiment"] == "imbalance"]
    ablation = {r["mode"] for r in runs if r["experiment"] == "eplb_ablation"}
    assert len(sweep) == 22 and len(imbalance) == 60 and ablation == {"all2all", "all2all-eplb"}
    legacy = json.loads(
        (study_data / "load_imbalance" / "baseline_real_imbalance.json").read_text()
    )
    row = next(r for r in imbalance if r["run"] == "imbalance/baseline/001_0.7585/rep00")
    assert row["imb_legacy-per-step"] == pytest.approx(legacy["gates_logs_01"], rel=1e-9)
    record = json.loads((plotted / "manifest.json").read_text())["stages"]["study-import"]
    assert record["details"]["from_study"] == str(study_data.resolve())


def test_from_study_defaults_to_perlmutter_and_its_own_run_dir(study_data):
    args = argparse.Namespace(from_study=study_data, profile=None, run_dir=None)
    stages = STAGE.steps(args)
    assert [s.name for s in stages] == ["study-import", "check", "plots"]
    assert stages[1].upstream == ("study-import",)
    assert stages[2].upstream == ("study-import", "check")
    assert args.profile == "perlmutter" and args.run_dir == Path("runs/perlmutter-study")
