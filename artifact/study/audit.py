"""Provenance findings: what the servers really ran, against what the runs say they ran.

Findings are computed from a run directory's tables (`provenance`, `runs`, `eplb_runs`,
`log_flags`), so they work on our runs and on the original study's data imported by
`--from-study`. Each is `{id, severity, finding, evidence}`; severity `error` means a claim
built on those runs does not measure what it says.

Server logs are read through one function, `log_provenance`, which hands them to
artifact.engines.vllm.provenance (the vLLM log parser and its checks against what each run claims:
the study's directory name and workload cards).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from artifact.checker.tables import RunTables
from artifact.core.errors import ArtifactError


def log_provenance(logs: list[Path], cards: list[Path] | None = None) -> dict:
    """artifact.engines.vllm.provenance's report on server logs of the study's layout: per run
    (`name`, `log`, `provenance`, `flags`, `notes`), `sweep_flags` and `card_flags`."""
    from artifact.engines.vllm.provenance import analyse

    return analyse(list(logs), expect="auto", cards=list(cards or []))


def _table(tables: RunTables, name: str) -> list[dict]:
    try:
        return tables.get(name)
    except ArtifactError:
        return []


def _runs_text(names: list[str], limit: int = 4) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _topic(flag: str) -> str:
    """'MoE kernel: claimed ...' -> 'MoE kernel'."""
    return flag.split(":", 1)[0].strip() if ":" in flag else flag[:40]


def _normalize_note(note: str) -> str:
    return re.sub(r"card \S+\.yaml", "the card", note)


def findings(tables: RunTables) -> list[dict]:
    provenance = _table(tables, "provenance")
    runs = _table(tables, "runs")
    kernels = _table(tables, "eplb_runs")
    log_flags = _table(tables, "log_flags")
    out: list[dict] = []

    # Per-run contradictions found in the server logs, grouped by topic.
    by_topic: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for r in provenance:
        for flag in r.get("flags") or []:
            by_topic[_topic(flag)].append((str(r.get("run")), flag))
    for topic, items in by_topic.items():
        names = [n for n, _ in items]
        out.append(
            {
                "id": "log." + re.sub(r"[^a-z0-9]+", "_", topic.lower()).strip("_"),
                "severity": "error",
                "finding": f"{len(items)} run(s): {items[0][1]}"
                + (" (and similar)" if len({f for _, f in items}) > 1 else ""),
                "evidence": _runs_text(names),
            }
        )
    for i, row in enumerate(log_flags):
        out.append(
            {
                "id": f"log.{row.get('kind', 'flag')}.{i}",
                "severity": "error",
                "finding": row["flag"],
                "evidence": row.get("source", "server logs"),
            }
        )
    # Notes (not contradictions), grouped.
    notes: dict[str, list[str]] = defaultdict(list)
    for r in provenance:
        for note in r.get("log_notes") or []:
            notes[_normalize_note(note)].append(str(r.get("run")))
    for i, (note, names) in enumerate(sorted(notes.items())):
        out.append(
            {
                "id": f"log.note.{i}",
                "severity": "warning",
                "finding": f"{len(names)} run(s): {note}",
                "evidence": _runs_text(names),
            }
        )

    # The EPLB ablation: 'on' not enabled, and both sides the same configuration.
    ablation = [r for r in provenance if r.get("experiment") == "eplb_ablation"]
    on = [r for r in ablation if r.get("eplb_requested") and r.get("eplb_enabled") is False]
    if on:
        same = len(ablation) >= 2 and all(
            r.get("args") == ablation[0].get("args") for r in ablation[1:]
        )
        out.append(
            {
                "id": "eplb_not_enabled",
                "severity": "error",
                "finding": "The 'EPLB on' run of the EPLB ablation did not enable EPLB (no "
                "--enable-eplb among its server's arguments, no 'EPLB is enabled' line)"
                + (
                    "; its arguments equal the 'EPLB off' run's: both sides are the same "
                    "configuration, so their difference is run-to-run noise"
                    if same
                    else ""
                ),
                "evidence": _runs_text([str(r.get("run")) for r in on]),
            }
        )

    # FlashInfer MoE: the kernel summaries.
    if kernels and not any((k.get("flashinfer_kernel_instances") or 0) > 0 for k in kernels):
        fused = [k for k in kernels if (k.get("fused_moe.instances") or 0) > 0]
        out.append(
            {
                "id": "no_flashinfer_moe_kernel",
                "severity": "error",
                "finding": "No FlashInfer MoE kernel ran: in every profiled run the MoE GEMM "
                "is Triton's fused_moe_kernel and no kernel name contains 'flashinfer'",
                "evidence": "; ".join(
                    f"{k.get('label')}: fused_moe_kernel x{k.get('fused_moe.instances'):,}"
                    for k in fused
                ),
            }
        )

    # Repetitions per configuration.
    configs: dict[tuple, int] = defaultdict(int)
    for r in runs:
        configs[_config_key(r)] += 1
    if configs and max(configs.values()) == 1:
        out.append(
            {
                "id": "no_repetitions",
                "severity": "warning",
                "finding": f"Each of the {len(configs)} configurations ran once: no "
                "repetitions, so no interval separates a configuration effect from "
                "run-to-run noise",
                "evidence": f"{len(runs)} runs, {len(configs)} configurations",
            }
        )

    # An imbalance measure constant over every run of a mode measures nothing there.
    by_mode: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        if r.get("experiment") == "imbalance":
            by_mode[str(r.get("mode"))].append(r)
    for mode, rows in sorted(by_mode.items()):
        constant = {}
        for column in sorted({k for r in rows for k in r if k.startswith("imb_")}):
            values = [r[column] for r in rows if isinstance(r.get(column), int | float)]
            if len(values) > 2 and max(values) - min(values) <= 1e-6 * max(abs(values[0]), 1):
                constant[column] = values[0]
        if constant:
            out.append(
                {
                    "id": f"constant_measures.{mode}",
                    "severity": "warning",
                    "finding": f"{len(constant)} imbalance measures are constant over all "
                    f"{len(rows)} {mode} imbalance runs: they cannot correlate with anything "
                    "there",
                    "evidence": ", ".join(f"{k} = {v:.6g}" for k, v in constant.items()),
                }
            )
    return out


def _config_key(row: dict) -> tuple:
    return (
        row.get("experiment"),
        row.get("mode"),
        row.get("max_num_seqs"),
        row.get("max_num_batched_tokens"),
        row.get("dataset"),
    )
