"""The plots stage on a small run directory: figures, Table 1, report.md and report.html."""

import json
import re

import pandas as pd
import pytest
from run_dirs import analysed_run_dir

from artifact.checker.tables import RunTables
from artifact.cli import main
from artifact.config.profiles import load_profile
from artifact.profiling.nsys import KernelRow, compare, summarize
from artifact.report.build import make_figures
from artifact.report.figures import (
    PERF,
    imbalance_figure,
    launch_values,
    median_ci,
    sweep_figure,
)


@pytest.fixture(scope="module")
def plotted(tmp_path_factory):
    run, profile = analysed_run_dir(tmp_path_factory.mktemp("plots"))
    args = ["--profile", str(profile), "--run-dir", str(run)]
    assert main(["plots", *args]) == 0
    return run, args


def test_every_figure_and_the_report(plotted):
    run, _ = plotted
    out = run / "plots"
    figures = json.loads((out / "figures.json").read_text())
    numbers = [f["number"] for f in figures]
    assert numbers == ["1", "2", "4", "5", "6", "7a", "7b", "8"]
    for f in figures:
        png = out / f["file"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f["caption"]
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    # Every figure is linked from the Markdown and inlined in the HTML (self-contained).
    for f in figures:
        assert f"]({f['file']})" in md
    assert html.count('src="data:image/png;base64,') == len(figures)
    assert not re.search(r'src="(?!data:)', html)
    # Experiment 2 is disabled in the local profile: the report says why.
    assert "**SKIP**: EPLB rearranges experts" in md
    # The sweep caption names the fixed setting and the repetitions.
    assert "at max-num-batched-tokens = 512" in md and "medians of 3 repetitions" in md
    assert "repetitions per unit: config_sweep 1 server launch x 3 runs; imbalance" in md
    # The claims table is in the report, with its verdicts.
    assert "4 PASS, 2 SKIP, 1 XFAIL" in md and "| `exp1.ttft_falls` |" in md
    for section in ("## Profile", "## Provenance", "## Findings", "## Claims"):
        assert section in md
    # Completeness and results apart; every claim that does not hold is a finding.
    assert md.index("### Completeness") < md.index("### Results")
    findings = md[md.index("## Findings") : md.index("## Experiment 1")]
    assert "**XFAIL** `exp1.known_failure` (result): a known failure" in findings


def test_iqr_filter_is_reported(plotted, tmp_path):
    run, _ = plotted
    tables = RunTables(run)
    fig = imbalance_figure(
        tables.frame("runs"),
        tables.frame("correlations"),
        xs=("predicted_score",),
        ys=PERF[:1],
        modes=("eager", "grouped_mm"),
        out=tmp_path,
        number="4",
        slug="t",
        title="t",
        caption="c.",
        iqr=True,
    )
    assert fig is not None and fig.path.exists()
    assert "after the study's 1.5 x IQR filter" in fig.caption
    # the caption names the line style _scatter_fit drew each mode's trend in
    assert "(eager solid, grouped_mm dashed)" in fig.caption


def test_median_intervals_stay_inside_the_values():
    """A skewed positive sample: a mean +- t interval would reach below zero, the bootstrap
    interval of the median stays inside the values."""
    values = [0.5, 1.0, 40.0]
    median, low, high = median_ci(values)
    assert median == 1.0 and 0.5 <= low <= median <= high <= 40.0


def sweep_runs(ranks: int) -> pd.DataFrame:
    """Two modes, two sweep points, 2 launches x 2 runs each; `ranks` DP ranks for b."""
    rows = []
    for mode, dp in (("a", 1), ("b", ranks)):
        for seqs in (4, 8):
            for rep in range(4):
                tpot = seqs * (1 + rep % 2 / 10) + (5 if rep >= 2 else 0)
                rows.append(
                    {
                        "run": f"config_sweep/{mode}/{seqs}_512/rep{rep:02d}",
                        "experiment": "config_sweep",
                        "mode": mode,
                        "launch": rep // 2,
                        "max_num_seqs": seqs,
                        "max_num_batched_tokens": 512,
                        "data_parallel_size": dp,
                        "mean_ttft_ms": 10.0,
                        "mean_tpot_ms": tpot,
                        "output_throughput": 100.0 / tpot,
                    }
                )
    return pd.DataFrame(rows)


def test_sweep_figure_uses_launch_medians_and_total_concurrency(tmp_path):
    # per launch: the median of its 2 runs
    one = sweep_runs(1)
    picked = one[(one["mode"] == "a") & (one["max_num_seqs"] == 4)]
    assert launch_values(picked, "mean_tpot_ms") == [4.2, 9.2]
    args = {"knob": "max_num_seqs", "fixed_knob": "max_num_batched_tokens", "fixed_value": 512}
    fig = sweep_figure(one, **args, modes=["a", "b"], out=tmp_path, number="1")
    assert fig is not None
    assert "medians of 2 server launches" in fig.caption
    assert "total concurrency" not in fig.caption
    # with 4 DP ranks, b admits 4 x max-num-seqs sequences: the axis says so
    fig = sweep_figure(sweep_runs(4), **args, modes=["a", "b"], out=tmp_path, number="1")
    assert fig is not None
    assert "vs total concurrency (max-num-seqs x DP ranks)" in fig.caption


def kernels(scale: float) -> list[KernelRow]:
    def row(name, total_ms, n):
        avg = total_ms * 1e6 / n
        return KernelRow(name, total_ms * 1e6, n, avg, avg, avg / 2, avg * 3, avg / 4, None)

    return [
        row("fused_moe_kernel", 1000 * scale, 100),
        row("ncclDevKernel_AllReduce_Sum_f32_RING_LL(x)", 300, 50),
        row(
            "void vllm::moe::moe_sum_kernel<c10::BFloat16, (int)2>(T1 *, const T1 *, int)", 50, 100
        ),
    ]


def test_eplb_table_and_figure(tmp_path):
    runs = [summarize(kernels(1.0), label="all2all"), summarize(kernels(1.1), label="all2all-eplb")]
    tables = RunTables(tmp_path)
    tables._cache.update(runs=[], eplb=compare(runs[:1], runs[1:]), eplb_runs=runs)
    figures, extra = make_figures(tables, load_profile("perlmutter"), tmp_path)
    assert [f.number for f in figures] == ["3"]
    assert "| fused_moe total (ms) | 1,000.00 | 1,100.00 | +10.0% |" in extra["table1"]
    assert (tmp_path / "table1_eplb.md").exists()
    assert extra["skipped"] == {
        "Experiment 1": "no config-sweep runs in this run directory",
        "Experiment 3": "no imbalance-experiment runs in this run directory",
    }


def test_eplb_table_and_figure_of_several_passes(tmp_path):
    """Several profiled passes a side: medians, the change's bootstrap interval as a column
    and as error bars, and a caption that says so."""
    runs = [
        summarize(kernels(scale), label=label)
        for scale, label in ((1.0, "off"), (1.1, "on"), (1.02, "off"), (1.12, "on"))
    ]
    tables = RunTables(tmp_path)
    tables._cache.update(runs=[], eplb=compare(runs[::2], runs[1::2]), eplb_runs=runs)
    figures, extra = make_figures(tables, load_profile("perlmutter"), tmp_path)
    assert (
        "| kernel metric | off (EPLB off), median | on (EPLB on), median | change | 95% CI |"
        in (extra["table1"])
    )
    assert "| fused_moe total (ms) | 1,010.00 | 1,110.00 | +9.9% | [" in extra["table1"]
    (fig3,) = figures
    assert "Medians of 2 and 2 profiled passes" in fig3.caption


def test_the_eplb_section_shows_the_diagnostic_balancedness(tmp_path):
    from artifact.report.build import make_report

    tables = RunTables(tmp_path)
    record = {"experiment": "eplb_ablation", "mode": "all2all-eplb", "count": 4}
    tables._cache.update(runs=[], balancedness=[{**record, "min": 0.7, "mean": 0.8, "max": 0.9}])
    profile = load_profile("perlmutter")
    figures, extra = make_figures(tables, profile, tmp_path)
    report = make_report(
        tables=tables,
        profile=profile,
        figures=figures,
        extra=extra,
        claims=[],
        findings=[],
        source="test",
    )
    md = report.markdown(tmp_path)
    section = md[md.index("## Experiment 2") : md.index("## Experiment 3")]
    assert "untimed diagnostic pass" in section
    assert "- all2all-eplb: 4 steps, balancedness min 0.7000, mean 0.8000, max 0.9000" in section


def test_findings_list_every_claim_that_fails_with_its_meaning():
    from artifact.checker.evaluate import ClaimResult
    from artifact.report.build import claim_findings

    claims = [
        ClaimResult("ok", "Holds.", "s", "PASS"),
        ClaimResult("runs", "All runs.", "s", "FAIL", kind="completeness", observed="3"),
        ClaimResult("faster", "A is faster.", "s", "FAIL", observed="p=0.3", reason="no"),
        ClaimResult("skip", "Not judged.", "s", "SKIP"),
    ]
    lines = claim_findings(claims)
    assert len(lines) == 2
    assert lines[0].startswith("**FAIL** `runs` (completeness): All runs; the run is not whole")
    assert "**FAIL** `faster` (result): A is faster; the run does not show this result" in lines[1]
    assert "Observed p=0.3; no" in lines[1]


def test_the_profile_section_says_how_a_unit_is_repeated():
    from artifact.report.build import repetitions

    assert repetitions(load_profile("gpu")) == (
        "config_sweep 3 server launches x 1 run; imbalance 3 server launches x 1 run "
        "(modes interleaved, launch by launch; the claims test over launches)"
    )
