"""Aggregation: per layer never across layers, both cross-layer views, phases, legacy, tables."""

import csv
import json

import numpy as np
import pytest

from artifact.routing.aggregate import analyze_routing_log
from artifact.routing.format import PHASE_CODE, RoutingHeader, RoutingWriter
from artifact.routing.measures import ExpertPlacement, load_metrics
from artifact.routing.tables import PerStepCsv, write_run_tables

P, D = PHASE_CODE["prefill"], PHASE_CODE["decode"]


def write_log(path, steps, num_layers=2, num_experts=4, world_size=1):
    """steps: list of rows (step, layer, phase, num_tokens, counts)."""
    header = RoutingHeader(
        num_experts=num_experts, top_k=2, num_layers=num_layers, world_size=world_size
    )
    with RoutingWriter(path, header) as writer:
        for rows in steps:
            writer.write_step([(s, la, ph, n, np.asarray(c)) for s, la, ph, n, c in rows])
    return path


def row(result, layer, phase="all", view="layer_total"):
    (match,) = [
        r for r in result.per_layer if (r["layer"], r["phase"], r["view"]) == (layer, phase, view)
    ]
    return match


def test_loads_are_summed_within_a_layer_never_across(tmp_path):
    # Layer 0 sends everything to experts 0-1, layer 1 to experts 2-3.
    steps = [[(s, 0, D, 2, [2, 2, 0, 0]), (s, 1, D, 2, [0, 0, 2, 2])] for s in range(3)]
    result = analyze_routing_log(write_log(tmp_path / "a.routing", steps), num_ranks=2)
    for layer in (0, 1):
        r = row(result, layer)
        assert (r["cv"], r["max_mean"], r["rank_max_mean"], r["idle_experts"]) == (1, 2, 2, 2)
        assert r["records"] == 3 and r["num_tokens"] == 6 and r["events"] == 12
        assert r["max_min"] is None
    # The study's aggregated method adds the layers up and sees a perfect balance.
    assert result.legacy["legacy-aggregated"] == 0.0
    assert result.legacy["legacy-per-step"] == pytest.approx(1.0, rel=1e-9)
    assert result.value("cv") == 1.0
    assert result.inconsistent_records == 0
    loads = [
        (e["layer"], e["expert"], e["rank"], e["load"])
        for e in result.expert_loads
        if e["phase"] == "all"
    ]
    assert loads[:4] == [(0, 0, 0, 6), (0, 1, 0, 6), (0, 2, 1, 0), (0, 3, 1, 0)]


def test_mean_of_layer_ratios_and_ratio_of_sums_differ(tmp_path):
    steps = [[(0, 0, D, 1, [1, 1, 0, 0]), (0, 1, D, 10, [5, 5, 5, 5])]]
    result = analyze_routing_log(write_log(tmp_path / "a.routing", steps))
    assert result.value("max_mean") == pytest.approx((2 + 1) / 2)
    assert result.value("max_mean", aggregation="ratio_of_sums") == pytest.approx(6 / 5.5)
    assert result.value("max_mean", aggregation="max_over_layers") == 2
    head = result.headline()
    assert head["max_mean"] == 1.5 and head["max_mean_ratio_of_sums"] == pytest.approx(6 / 5.5)


def test_views_phases_and_legacy_token_cut(tmp_path):
    steps = [
        [(0, 0, P, 1001, [1001, 1001, 0, 0]), (0, 0, D, 1, [1, 1, 0, 0])],
        [(1, 0, D, 2, [1, 1, 1, 1])],
    ]
    result = analyze_routing_log(write_log(tmp_path / "a.routing", steps, num_layers=1))
    decode_step = row(result, 0, "decode", "per_step")
    assert decode_step["cv"] == pytest.approx(0.5)  # mean of 1 and 0
    weighted = row(result, 0, "decode", "per_step_token_weighted")
    assert weighted["cv"] == pytest.approx(1 / 3)  # (1*1 + 2*0) / 3
    assert weighted["max_min"] is None and weighted["idle_experts"] is None
    total = row(result, 0, "decode")
    x = np.array([2.0, 2, 1, 1])
    assert total["cv"] == pytest.approx(x.std() / x.mean())
    assert total["cv_noise_floor"] == pytest.approx(np.sqrt(2 / (2 * 3)))
    assert row(result, 0, "prefill")["cv"] == pytest.approx(1.0)
    everything = row(result, 0, "all")
    assert everything["records"] == 3 and everything["num_tokens"] == 1004
    assert {r["phase"] for r in result.per_layer} == {"prefill", "decode", "all"}
    # legacy-per-step: every record; legacy-aggregated: only records of <= 1000 tokens.
    assert result.legacy["legacy-per-step"] == pytest.approx((1 + 1 + 0) / 3, rel=1e-9)
    assert result.legacy["legacy-aggregated"] == pytest.approx(x.std() / x.mean(), rel=1e-9)


def test_rank_count_from_header_and_inconsistent_records(tmp_path):
    steps = [[(0, 0, D, 1, [1, 0, 0, 0])]]  # one token but one assignment: reported
    result = analyze_routing_log(write_log(tmp_path / "a.routing", steps, 1, 4, world_size=2))
    assert result.placement == ExpertPlacement.contiguous(4, 2)
    assert result.inconsistent_records == 1
    default = analyze_routing_log(
        write_log(tmp_path / "b.routing", [[(0, 0, D, 1, [1, 1, 0, 0, 0, 0, 0, 0])]], 1, 8)
    )
    assert default.placement == ExpertPlacement.contiguous(8, 4)
    custom = analyze_routing_log(tmp_path / "a.routing", placement="0,1,1,1")
    assert custom.placement.rank_of_expert == (0, 1, 1, 1)


def random_log(path, seed=0, layers=3, steps=40):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(steps):
        step = []
        for layer in range(layers):
            for phase, n in ((D, int(rng.integers(1, 20))), (P, int(rng.integers(50, 300)))):
                if phase == P and rng.random() < 0.7:
                    continue
                p = rng.dirichlet(np.ones(4) * (layer + 1))
                step.append((s, layer, phase, n, rng.multinomial(2 * n, p)))
        rows.append(step)
    return write_log(path, rows, num_layers=layers)


def test_chunking_changes_nothing_and_per_step_csv(tmp_path):
    path = random_log(tmp_path / "r.routing")
    whole = analyze_routing_log(path)
    with PerStepCsv(tmp_path / "per_step.csv") as sink:
        chunked = analyze_routing_log(path, chunk_records=7, per_step=sink)
    for a, b in zip(whole.summary, chunked.summary, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-12)
            else:
                assert a[key] == b[key]
    assert whole.legacy == pytest.approx(chunked.legacy, rel=1e-12)
    with open(tmp_path / "per_step.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == whole.records
    from artifact.routing.format import RoutingLog

    first = RoutingLog(path).read_all()[:1]
    expected = load_metrics(first["counts"], whole.placement)
    assert rows[0]["run"] == "r" and rows[0]["phase"] in ("prefill", "decode")
    assert float(rows[0]["cv"]) == pytest.approx(expected["cv"][0], rel=1e-8)
    assert int(rows[0]["events"]) == first["counts"].sum()


def test_tables_on_disk(tmp_path):
    result = analyze_routing_log(random_log(tmp_path / "r.routing"))
    written = write_run_tables(tmp_path / "out", [result])
    names = sorted(p.name for p in written)
    assert "per_layer.csv" in names and "summary.json" in names and "legacy.csv" in names
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary == result.summary
    with open(tmp_path / "out" / "per_layer.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(result.per_layer)
    assert {r["view"] for r in rows} == {"layer_total", "per_step", "per_step_token_weighted"}
    # Undefined measures: empty in CSV, null in JSON.
    assert any(r["max_min"] == "" for r in rows)
    per_layer = json.loads((tmp_path / "out" / "per_layer.json").read_text())
    assert any(r["max_min"] is None for r in per_layer)
