"""`moe-artifact calibrate`: A/A launches of one configuration on the real embedded server, and
the spread arithmetic."""

import json

import pytest
from helpers import tiny_mixtral, tiny_sweep

from artifact.cli import main
from artifact.stages.calibrate import calibrate_metric

TINY = tiny_mixtral(max_position_embeddings=512)


def test_the_aa_spread_of_launch_medians():
    cal = calibrate_metric([[10.0, 10.2], [11.0, 11.4], [10.5]])
    assert cal.launch_medians == [10.1, 11.2, 10.5]
    assert cal.aa_rel_diffs == pytest.approx([1.1 / 10.65, 0.4 / 10.3, 0.7 / 10.85])
    assert cal.max_rel_diff == pytest.approx(1.1 / 10.65)
    assert cal.launch_cv == pytest.approx(0.0525, abs=1e-4)
    assert cal.run_cv == pytest.approx(0.0196, abs=1e-4)  # median of the two launches' CVs


def test_launches_below_two_are_refused(capsys):
    assert main(["calibrate", "--profile", "local", "--launches", "1"]) == 2
    err = capsys.readouterr().err
    assert "--launches 1: an A/A comparison needs at least 2" in err and "Traceback" not in err


@pytest.mark.engine
def test_calibrate_runs_the_fixed_point_on_fresh_launches(
    write_profile, local_profile_raw, tmp_path, monkeypatch
):
    pytest.importorskip("torch")
    monkeypatch.setenv("MOE_ARTIFACT_CACHE", str(tmp_path / "cache"))
    sweep = tiny_sweep()  # grouped_mm at (2, 128) and (4, 128); fixed point (2, 128)
    profile = write_profile(
        {
            "model": dict(local_profile_raw["model"], architecture=TINY, max_model_len=512),
            "experiments": {
                "config_sweep": sweep,
                "eplb_ablation": local_profile_raw["experiments"]["eplb_ablation"],
            },
            "modes": {"grouped_mm": local_profile_raw["modes"]["grouped_mm"]},
            "datasets": {"seed": 3, "count": 4, "prompts_per_dataset": 4},
        },
        name="tiny",
    )
    run = tmp_path / "cal"
    assert (
        main(["calibrate", "--profile", str(profile), "--launches", "2", "--run-dir", str(run)])
        == 0
    )
    record = json.loads((run / "calibrate" / "calibration.json").read_text())
    assert record["profile"] == "tiny-calibrate" and record["mode"] == "grouped_mm"
    assert (record["max_num_seqs"], record["max_num_batched_tokens"]) == (2, 128)
    assert (record["launches"], record["repeat"]) == (2, 2)
    for metric in ("mean_ttft_ms", "mean_tpot_ms", "output_throughput"):
        cal = record["metrics"][metric]
        assert len(cal["launch_medians"]) == 2 and len(cal["aa_rel_diffs"]) == 1
        a, b = cal["launch_medians"]
        assert cal["max_rel_diff"] == pytest.approx(abs(a - b) / ((a + b) / 2))
    # one unit, its runs from two server starts
    unit = json.loads(
        (run / "bench" / "config_sweep" / "grouped_mm" / "2_128" / "unit.json").read_text()
    )
    assert [r["launch"] for r in unit["runs"]] == [0, 0, 1, 1]
    assert (
        run / "bench" / "config_sweep" / "grouped_mm" / "2_128" / "server.launch01.log"
    ).exists()
