"""Assemble every figure and the report of one run directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from artifact.checker import (
    CLAIMS_COLUMNS,
    READING,
    ClaimResult,
    by_kind,
    claims_rows,
    summary_line,
)
from artifact.checker.tables import RunTables
from artifact.config.profiles import Profile, enabled_experiments
from artifact.core.errors import ArtifactError
from artifact.core.io import atomic_write_text
from artifact.core.runner import PIPELINE
from artifact.report.document import Report
from artifact.report.figures import (
    MEASURE_LABELS,
    PERF,
    Figure,
    eplb_figure,
    eplb_markdown,
    heatmap_figures,
    imbalance_figure,
    rank_figure,
    sweep_figure,
    with_columns,
)

if TYPE_CHECKING:
    import pandas as pd

# Observed measures drawn against performance (Fig. 5) and the predicted score (Fig. 6).
FIG5_MEASURES = ("imb_cv", "imb_legacy-per-step", "imb_legacy-aggregated")
FIG6_MEASURES = ("imb_cv", "imb_rank_max_mean", "imb_legacy-aggregated")
PROVENANCE_COLUMNS = (
    "run",
    "path",
    "experiment",
    "mode",
    "max_num_seqs",
    "max_num_batched_tokens",
    "engine",
    "engine_version",
    "versions.transformers",
    "versions.torch",
    "experts_implementation",
    "continuous_batching.live.max_requests_per_batch",
    "continuous_batching.live.max_batch_tokens",
    "torch_threads",
    "tensor_parallel_size",
    "data_parallel_size",
    "enable_expert_parallel",
    "eplb_requested",
    "eplb_enabled",
    "all2all_manager",
    "flashinfer_moe",
    "host",
)


def _table(tables: RunTables, name: str) -> pd.DataFrame:
    """The table, or an empty one where the run directory has none."""
    try:
        return tables.frame(name)
    except ArtifactError:
        import pandas as pd

        return pd.DataFrame()


def _modes(profile: Profile, runs: pd.DataFrame, experiment: str) -> list[str]:
    exp = getattr(profile.experiments, experiment, None)
    runs = with_columns(runs, ["experiment", "mode"])
    present = set(runs.loc[runs["experiment"] == experiment, "mode"].dropna())
    ordered = [m for m in (exp.modes if exp else []) if m in present]
    return ordered + sorted(m for m in present if m not in ordered)


def _eplb_skip(profile: Profile) -> str | None:
    exp = profile.experiments.eplb_ablation
    if exp is None:
        return f"profile '{profile.name}' has no EPLB ablation"
    if not exp.enabled:
        return (exp.skip_reason or "disabled in the profile").strip()
    return None


def make_figures(
    tables: RunTables, profile: Profile, out: Path, *, iqr: bool = False, findings=()
) -> tuple[list[Figure], dict]:
    """Every figure that the run's data allows; `extra` carries tables and skip reasons."""
    runs = _table(tables, "runs")
    correlations = _table(tables, "correlations")
    figures: list[Figure] = []
    extra: dict = {"skipped": {}}
    sweep = profile.experiments.config_sweep
    modes = _modes(profile, runs, "config_sweep")
    if sweep is not None and modes:
        for number, knob, fixed_knob, fixed in (
            ("1", "max_num_seqs", "max_num_batched_tokens", sweep.fixed_max_num_batched_tokens),
            ("2", "max_num_batched_tokens", "max_num_seqs", sweep.fixed_max_num_seqs),
        ):
            fig = sweep_figure(
                runs,
                knob=knob,
                fixed_knob=fixed_knob,
                fixed_value=fixed,
                modes=modes,
                out=out,
                number=number,
            )
            if fig:
                figures.append(fig)
    else:
        extra["skipped"]["Experiment 1"] = "no config-sweep runs in this run directory"

    balancedness = _table(tables, "balancedness")
    if not balancedness.empty:
        extra["balancedness"] = [
            f"{r['mode']}: {r['count']} steps, balancedness min {r['min']:.4f}, "
            f"mean {r['mean']:.4f}, max {r['max']:.4f}"
            for r in balancedness.to_dict("records")
        ]
    eplb = _table(tables, "eplb")
    skip = _eplb_skip(profile)
    if not eplb.empty:
        labels = tuple(with_columns(_table(tables, "eplb_runs"), ["label"])["label"].head(2))
        labels = labels if len(labels) == 2 else ("EPLB off", "EPLB on")
        labels = (f"{labels[0]} (EPLB off)", f"{labels[1]} (EPLB on)")
        note = ""
        if any(f["id"] == "eplb_not_enabled" for f in findings):
            note = (
                "Provenance: the 'EPLB on' server never enabled EPLB (see Findings), so "
                "this compares two runs of the same configuration."
            )
        extra["table1"] = eplb_markdown(eplb, labels)
        extra["table1_note"] = note
        fig = eplb_figure(eplb, labels, out, note)
        if fig:
            figures.append(fig)
    else:
        extra["skipped"]["Experiment 2"] = skip or "no EPLB kernel summaries in this run"

    modes3 = _modes(profile, runs, "imbalance")
    if modes3:
        fig4 = imbalance_figure(
            runs,
            correlations,
            xs=("predicted_score",),
            ys=PERF,
            modes=modes3,
            out=out,
            number="4",
            slug="perf_vs_predicted",
            title="Experiment 3: performance vs predicted imbalance score",
            caption="TTFT, TPOT and output throughput of each dataset's run vs the dataset's "
            "predicted (induced) imbalance score, per mode.",
            iqr=iqr,
        )
        fig5 = imbalance_figure(
            runs,
            correlations,
            xs=FIG5_MEASURES,
            ys=PERF,
            modes=modes3,
            out=out,
            number="5",
            slug="perf_vs_observed",
            title="Experiment 3: performance vs observed imbalance",
            caption="TTFT, TPOT and output throughput vs the observed imbalance of the same "
            "run's routing, per mode, one row per measure: this artifact's per-layer CV "
            "(top) and the study's two legacy measures.",
            iqr=iqr,
        )
        fig6 = imbalance_figure(
            runs,
            correlations,
            xs=("predicted_score",),
            ys=[(m, MEASURE_LABELS[m].replace("\n", " ")) for m in FIG6_MEASURES],
            modes=modes3,
            out=out,
            number="6",
            slug="predicted_vs_observed",
            title="Experiment 3: predicted score vs observed imbalance",
            caption="Observed imbalance of each run's routing vs the dataset's predicted "
            "score, per mode: does the predictor rank workloads the way the router does?",
            iqr=iqr,
        )
        figures += [f for f in (fig4, fig5, fig6) if f]
        expert_loads = _table(tables, "expert_loads")
        figures += heatmap_figures(runs, expert_loads, modes=modes3, out=out)
        ep = any(m.enable_expert_parallel for m in profile.modes.values())
        note = (
            "Experts are placed contiguously on 4 ranks (experts 2r and 2r+1 on rank r), "
            "vLLM's default EP placement."
            if ep
            else "This profile runs no expert parallelism: the 4-rank contiguous placement "
            "(experts 2r and 2r+1 on rank r) is what EP4 would see with this routing."
        )
        fig8 = rank_figure(runs, expert_loads, modes=modes3, out=out, note=note)
        if fig8:
            figures.append(fig8)
    else:
        extra["skipped"]["Experiment 3"] = "no imbalance-experiment runs in this run directory"
    if "table1" in extra:
        atomic_write_text(out / "table1_eplb.md", extra["table1"])
    return figures, extra


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def provenance_rows(rows: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    columns = [c for c in PROVENANCE_COLUMNS if c in rows and rows[c].notna().any()]
    cells = rows[columns].map(_fmt)
    # Collapse identical rows (our units share one server config per mode and experiment).
    key = [c for c in columns if c not in ("run", "path")]
    body = cells.drop_duplicates(subset=key) if key else cells.head(1)
    return columns, body.to_numpy().tolist()


def make_report(
    *,
    tables: RunTables,
    profile: Profile,
    figures: list[Figure],
    extra: dict,
    claims: list[ClaimResult],
    findings: list[dict],
    source: str,
) -> Report:
    report = Report(f"MoE inference study: reproduction report ({profile.name})")
    report.para(
        f"Run directory `{tables.path}`; data: {source}. Regenerated by `moe-artifact plots`; "
        "claims judged by `moe-artifact check` against the profile's expected results."
    )
    report.heading("Profile")
    report.para(f"**{profile.name}**: {profile.description.strip()}")
    report.bullets(
        [
            f"hardware expected: {profile.hardware.description or profile.hardware.kind}; "
            f"measured on: `{tables.hardware()}`",
            f"model: {profile.model.name} ({profile.model.source}, {profile.model.dtype})",
            f"engine: {profile.engine.kind}"
            + (f" {profile.engine.vllm_ref}" if profile.engine.vllm_ref else ""),
            "repetitions per unit: " + repetitions(profile),
        ]
    )
    report.table(
        ["mode", "description"],
        [[name, m.description] for name, m in profile.modes.items()],
    )
    manifest = tables.run_dir.read().get("stages", {})
    # The stages this report is made from (check's verdicts are the Claims section).
    done = [n for n in (*PIPELINE, "study-import") if n in manifest and n not in ("plots", "check")]
    if done:
        report.heading("Stages", 3)
        report.table(
            ["stage", "status", "seconds", "summary"],
            [
                [
                    n,
                    manifest[n].get("status"),
                    manifest[n].get("seconds"),
                    manifest[n].get("summary"),
                ]
                for n in done
            ],
        )
    prov = _table(tables, "provenance")
    report.heading("Provenance")
    if not prov.empty:
        report.para(
            "What the servers really ran, from their own provenance records or logs "
            "(identical configurations collapsed)."
        )
        columns, body = provenance_rows(prov)
        report.table(columns, body)
    else:
        report.para("No provenance records in this run directory.")
    report.heading("Findings")
    failed = claim_findings(claims)
    if failed:
        report.para("Claims that do not hold (see Claims for every verdict):")
        report.bullets(failed)
    if findings:
        report.para("From the servers' provenance and the data:")
        report.bullets(
            [f"**{f['severity']}** `{f['id']}`: {f['finding']} ({f['evidence']})" for f in findings]
        )
    if not failed and not findings:
        report.para("No failed claims, no provenance or data findings.")
    by_section: dict[str, list[Figure]] = {}
    for fig in figures:
        by_section.setdefault(fig.section, []).append(fig)
    for section, title in (
        ("Experiment 1", "Experiment 1: serving configuration sweep"),
        ("Experiment 2", "Experiment 2: EPLB ablation"),
        ("Experiment 3", "Experiment 3: imbalance sensitivity"),
        ("Routing", "Routing views"),
    ):
        report.heading(title)
        if section == "Experiment 2" and "table1" in extra:
            report.para("*Table 1: EPLB off vs on, nsys CUDA kernel summary.*")
            report.pipe_table(extra["table1"])
            if extra.get("table1_note"):
                report.para(extra["table1_note"])
        if section == "Experiment 2" and "balancedness" in extra:
            report.para(
                "EPLB balancedness (mean over max tokens per EP rank, per step, as vLLM logs it) "
                "from the untimed diagnostic pass: a server of its own, the timed command plus "
                "`--eplb-log-balancedness` (`<unit>/diagnostic/balancedness.json`); no timing "
                "in this report comes from it."
            )
            report.bullets(extra["balancedness"])
        if section in extra["skipped"]:
            report.para(f"**SKIP**: {extra['skipped'][section]}")
        for fig in by_section.get(section, []):
            report.figure(fig)
    report.heading("Claims")
    report.para(f"{summary_line(claims)} (verdicts of `check/claims.json`). {READING}")
    for title, part in by_kind(claims):
        report.heading(title, 3)
        report.para(summary_line(part))
        report.table(list(CLAIMS_COLUMNS), claims_rows(part))
    return report


def repetitions(profile: Profile) -> str:
    """Each enabled experiment's server launches x runs per launch."""
    specs = {
        name: getattr(profile.experiments, name).bench for name in enabled_experiments(profile)
    }
    text = "; ".join(
        f"{name} {b.launches} server launch{'es' if b.launches > 1 else ''} x "
        f"{b.repeat} run{'s' if b.repeat > 1 else ''}"
        for name, b in specs.items()
    )
    if any(b.launches > 1 for b in specs.values()):
        text += " (modes interleaved, launch by launch; the claims test over launches)"
    return text


MEANING: dict[str, str | dict[str, str]] = {
    "FAIL": {
        "completeness": "the run is not whole: the results resting on it are no evidence",
        "result": "the run does not show this result",
    },
    "XPASS": "a documented failure now holds: the findings changed",
    "XFAIL": "a known failure, documented in the claims file",
}


def meaning(claim: ClaimResult) -> str:
    text = MEANING[claim.verdict]
    return text if isinstance(text, str) else text[claim.kind]


def claim_findings(claims: list[ClaimResult]) -> list[str]:
    """One line per claim that does not hold (FAIL, XPASS, XFAIL): what it means, why."""
    return [
        f"**{c.verdict}** `{c.id}` ({c.kind}): {c.statement.rstrip('.')}; {meaning(c)}. "
        f"Observed {c.observed or 'nothing'}" + (f"; {c.reason}" if c.reason else "")
        for verdict in ("FAIL", "XPASS", "XFAIL")
        for c in claims
        if c.verdict == verdict
    ]
