"""A tiny run directory for the checker and plots tests, built from files, not servers.

`build_run_dir` writes what the datasets and bench stages would (dataset metadata, bench
units with vLLM-format result files and `moe-routing` logs) and records both stages as
complete; the tests then run the real imbalance, check and plots stages on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from artifact.core.manifest import RunDir
from artifact.routing.format import PHASE_CODE, RoutingHeader, RoutingWriter

LOCAL_PROFILE = Path(__file__).resolve().parents[2] / "reproduce" / "profiles" / "local.yaml"
MODES = ("eager", "grouped_mm")
SEQS = (2, 4, 8)
TOKENS = 512
REPS = 3
LAYERS, EXPERTS, TOP_K, TOKENS_PER_STEP = 2, 4, 2, 100
SCORES = (0.3, 0.45, 0.6, 0.75)
# mean TTFT / TPOT (ms) / output throughput (tok/s) per mode and max-num-seqs
TTFT = {"eager": {2: 1500, 4: 750, 8: 380}, "grouped_mm": {2: 1300, 4: 650, 8: 300}}
TPOT = {"eager": {2: 25, 4: 27, 8: 33}, "grouped_mm": {2: 22, 4: 24, 8: 25}}
THROUGHPUT = {"eager": {2: 80, 4: 140, 8: 220}, "grouped_mm": {2: 90, 4: 155, 8: 285}}
JITTER = (-0.02, 0.0, 0.02)

CLAIMS = {
    "profile": "local",
    "claims": [
        {
            "id": "datasets.count",
            "statement": "4 datasets",
            "source": "metadata",
            "quantity": {"table": "datasets", "column": "score", "reduce": "count"},
            "expect": {"value": 4, "tolerance": {"abs": 0}},
        },
        {
            "id": "routing.events_per_run",
            "statement": "every sweep run records 2 x 100 tokens x 2 layers assignments",
            "source": "runs",
            "quantity": {
                "table": "runs",
                "where": {"experiment": "config_sweep"},
                "column": "routing_events",
            },
            "per_row": True,
            "expect": {"value": 400, "tolerance": {"abs": 0}},
        },
        {
            "id": "exp1.ttft_falls",
            "statement": "TTFT falls with max-num-seqs (eager)",
            "source": "Fig. 1",
            "experiment": "config_sweep",
            "quantity": {
                "table": "runs",
                "where": {"experiment": "config_sweep", "mode": "eager"},
                "column": "mean_ttft_ms",
                "by": "max_num_seqs",
            },
            "relation": {"kind": "decreasing", "min_rho": 0.99},
        },
        {
            "id": "exp1.grouped_ttft_not_worse",
            "statement": "grouped TTFT not worse than eager by 10% at the largest batch",
            "source": "Fig. 1",
            "experiment": "config_sweep",
            "unit": "ms",
            "quantity": {
                "table": "runs",
                "where": {
                    "experiment": "config_sweep",
                    "mode": "grouped_mm",
                    "max_num_seqs": "$max",
                },
                "column": "mean_ttft_ms",
            },
            "relation": {
                "kind": "not_greater",
                "margin_rel": 0.1,
                "other": {
                    "table": "runs",
                    "where": {
                        "experiment": "config_sweep",
                        "mode": "eager",
                        "max_num_seqs": "$max",
                    },
                    "column": "mean_ttft_ms",
                },
            },
        },
        {
            "id": "exp2.eplb",
            "statement": "EPLB changes the MoE kernel time",
            "source": "Table 1",
            "experiment": "eplb_ablation",
            "quantity": {"table": "eplb", "column": "change_pct"},
            "expect": {"min": -100},
        },
        {
            "id": "exp1.a100_only",
            "statement": "a number measured on 4x A100",
            "source": "Fig. 1",
            "quantity": {"table": "runs", "column": "mean_tpot_ms"},
            "hardware": {"nvidia-a100*-x4": {"value": 50, "tolerance": {"rel": 0.1}}},
        },
        {
            "id": "exp1.known_failure",
            "statement": "a known failure",
            "source": "Fig. 2",
            "quantity": {"table": "runs", "column": "mean_tpot_ms", "reduce": "max"},
            "expect": {"max": 1},
            "xfail": "kept to show XFAIL",
        },
    ],
}


def write_routing(path: Path, counts: list[int], steps: int = 1) -> None:
    header = RoutingHeader(num_experts=EXPERTS, top_k=TOP_K, num_layers=LAYERS)
    with RoutingWriter(path, header) as writer:
        for step in range(steps):
            writer.write_step(
                [
                    (step, layer, PHASE_CODE["prefill"], TOKENS_PER_STEP, np.asarray(counts))
                    for layer in range(LAYERS)
                ]
            )


def result(ttft: float, tpot: float, throughput: float) -> dict:
    n = 4  # requests, with the per-request arrays of vLLM's schema
    return {
        "input_lens": [25] * n,
        "output_lens": [16] * n,
        "ttfts": [ttft / 1000] * n,
        "itls": [[tpot / 1000] * 15] * n,
        "generated_texts": [""] * n,
        "errors": [""] * n,
        "completed": 4,
        "num_prompts": 4,
        "duration": 64 / throughput,
        "total_input_tokens": 100,
        "total_output_tokens": 64,
        "request_throughput": 4 * throughput / 64,
        "input_throughput": 100 * throughput / 64,
        "output_throughput": throughput,
        "mean_ttft_ms": ttft,
        "median_ttft_ms": ttft,
        "mean_tpot_ms": tpot,
        "median_tpot_ms": tpot,
        "mean_itl_ms": tpot,
        "mean_e2el_ms": ttft + 15 * tpot,
    }


def write_unit(bench: Path, key: str, unit: dict, runs: list[tuple[dict, list[int]]]) -> None:
    folder = bench / key
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for rep, (data, counts) in enumerate(runs):
        (folder / f"run.rep{rep:02d}.json").write_text(json.dumps(data))
        write_routing(folder / f"run.rep{rep:02d}.routing", counts)
        entries.append(
            {
                "repetition": rep,
                "result": f"run.rep{rep:02d}.json",
                "routing": f"run.rep{rep:02d}.routing",
                "capture": {},
                "processed_tokens": TOKENS_PER_STEP,
                "assignments_per_layer": TOP_K * TOKENS_PER_STEP,
                "replay_match": None,
                "replay_mismatch": None,
            }
        )
    (folder / "unit.json").write_text(json.dumps({**unit, "runs": entries}))
    (folder / "provenance.json").write_text(
        json.dumps({"engine": "transformers", "experts_implementation": unit["mode"]})
    )


def skewed(score: float) -> list[int]:
    """Top-2 counts of 100 tokens over 4 experts, more skewed for a higher score."""
    hot = round(100 * (0.5 + score / 2))
    return [hot, 140 - hot, 40, 20]


def build_run_dir(root: Path, profile: Path) -> Path:
    run = root / "run"
    rd = RunDir(run)
    rd.set_profile("local", str(profile))
    datasets = run / "datasets"
    datasets.mkdir(parents=True)
    meta = [dataset_entry(i + 1, s) for i, s in enumerate(SCORES)]
    (datasets / "metadata.json").write_text(json.dumps(metadata(meta)))
    rd.update("datasets", status="complete", inputs={})
    bench = run / "bench"
    for mode in MODES:
        for seqs in SEQS:
            unit = {
                "experiment": "config_sweep",
                "mode": mode,
                "dataset": None,
                "max_num_seqs": seqs,
                "max_num_batched_tokens": TOKENS,
                "prompts": "sweep_prompts.jsonl",
            }
            runs = [
                (
                    result(
                        TTFT[mode][seqs] * (1 + j),
                        TPOT[mode][seqs] * (1 + j),
                        THROUGHPUT[mode][seqs] * (1 - j),
                    ),
                    [80, 60, 40, 20],
                )
                for j in JITTER
            ]
            write_unit(bench, f"config_sweep/{mode}/{seqs}_{TOKENS}", unit, runs)
        for d in meta:
            stem = Path(d["file"]).stem
            unit = {
                "experiment": "imbalance",
                "mode": mode,
                "dataset": stem,
                "max_num_seqs": 8,
                "max_num_batched_tokens": 1024,
                "prompts": d["file"],
            }
            speed = 1 + d["score"]
            runs = [(result(400 / speed, 30 / speed, 200 * speed), skewed(d["score"]))]
            write_unit(bench, f"imbalance/{mode}/{stem}", unit, runs)
    rd.update("bench", status="complete", inputs={}, host={"gpus": []})
    return run


def analysed_run_dir(root: Path) -> tuple[Path, Path]:
    """build_run_dir under a copy of the local profile that expects CLAIMS, after the real
    imbalance stage: the run directory and the profile."""
    from artifact.cli import main

    claims = write_claims(root / "claims.yaml")
    profile = root / "profiles" / "local.yaml"
    profile.parent.mkdir()
    raw = yaml.safe_load(LOCAL_PROFILE.read_text())
    profile.write_text(yaml.safe_dump({**raw, "expected_results": str(claims)}))
    run = build_run_dir(root, profile)
    assert main(["imbalance", "--profile", str(profile), "--run-dir", str(run)]) == 0
    return run, profile


def dataset_entry(index: int, score: float) -> dict:
    """One entry of datasets/metadata.json (artifact.core.records.DatasetEntry)."""
    return {
        "index": index,
        "file": f"{index:03d}_{score:.4f}.jsonl",
        "family": "fixture",
        "strategy": "fixture",
        "params": {},
        "seed": index,
        "n_samples": 4,
        "score": score,
        "score_str": f"{score:.4f}",
        "components": {},
        "raw_metrics": {},
        "sha256": "",
    }


def metadata(entries: list[dict]) -> dict:
    """datasets/metadata.json (artifact.core.records.DatasetMetadata) around the entries."""
    scores = [d["score"] for d in entries]
    return {
        "generator_version": 1,
        "seed": 0,
        "prompts_per_dataset": 4,
        "n_datasets": len(entries),
        "candidates_scored": len(entries),
        "weights": {},
        "score_range": [min(scores), max(scores)],
        "score_span": max(scores) - min(scores),
        "max_gap": float(np.diff(scores).max()),
        "score_mean": float(np.mean(scores)),
        "score_std": float(np.std(scores)),
        "datasets": entries,
    }


def write_claims(path: Path, claims: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump(claims or CLAIMS, sort_keys=False))
    return path


def test_fixture_builds(tmp_path, write_profile):
    run = build_run_dir(tmp_path, write_profile())
    units = sorted(run.glob("bench/*/*/*/unit.json"))
    assert len(units) == len(MODES) * (len(SEQS) + len(SCORES))
    assert all(sum(c) == TOP_K * TOKENS_PER_STEP for c in (skewed(s) for s in SCORES))
