"""Kernels stage routings and replay sources: exact loads, distinct experts, skew, readers."""

import argparse
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artifact.core.errors import ArtifactError
from artifact.gpu.kernels import loads as loads_mod
from artifact.gpu.kernels.loads import read_sources, write_loads_file
from artifact.gpu.kernels.routing import (
    RoutingSpec,
    ids_from_loads,
    parse_routings,
    routing_weights,
    scale_loads,
    spread_order,
)
from artifact.routing.format import PHASE_CODE, RoutingHeader, RoutingWriter
from artifact.routing.measures import ExpertPlacement, max_mean, rank_max_mean

loads_strategy = st.lists(
    st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=2, max_size=16
).filter(lambda v: sum(v) > 0)


@settings(max_examples=200, deadline=None)
@given(loads=loads_strategy, tokens=st.integers(1, 3000), data=st.data())
def test_scale_loads_is_a_top_k_routing_in_proportion(loads, tokens, data):
    top_k = data.draw(st.integers(1, len(loads)))
    counts = scale_loads(loads, tokens, top_k)
    assert counts.sum() == top_k * tokens
    assert counts.min() >= 0 and counts.max() <= tokens
    share = np.asarray(loads) / sum(loads) * top_k * tokens
    uncapped = share <= tokens
    # Where no share hits the per-token cap, every count is its share rounded up or down.
    if uncapped.all():
        assert np.all(np.abs(counts - share) < 1 + 1e-9)


@settings(max_examples=200, deadline=None)
@given(loads=loads_strategy, tokens=st.integers(1, 500), data=st.data())
def test_ids_from_loads_realize_the_counts_with_distinct_experts(loads, tokens, data):
    top_k = data.draw(st.integers(1, len(loads)))
    counts = scale_loads(loads, tokens, top_k)
    ids = ids_from_loads(counts, top_k, np.random.default_rng(data.draw(st.integers(0, 99))))
    assert ids.shape == (tokens, top_k)
    assert np.bincount(ids.ravel(), minlength=len(loads)).tolist() == counts.tolist()
    assert all(len(set(row)) == top_k for row in ids.tolist())


def test_ids_from_loads_refuses_impossible_loads():
    with pytest.raises(ArtifactError, match="cannot be realized"):
        ids_from_loads(np.array([3, 1]), 2, np.random.default_rng(0))  # 3 > 2 tokens


def test_balanced_spreads_the_remainder_over_ranks():
    assert spread_order(8).tolist() == [0, 4, 2, 6, 1, 5, 3, 7]
    counts = scale_loads(np.ones(8), 1, 2)
    assert np.flatnonzero(counts).tolist() == [0, 4]
    placement = ExpertPlacement.contiguous(8, 4)
    for tokens in (1, 3, 5, 32):
        counts = scale_loads(np.ones(8), tokens, 2)
        per_rank = counts @ placement.matrix
        assert per_rank.max() - per_rank.min() <= 1


def test_uniform_and_zipf_skew():
    rng = np.random.default_rng(0)
    shares = {}
    for spec in (RoutingSpec("uniform"), *(RoutingSpec("zipf", exponent=s) for s in (0, 1, 2))):
        ids = spec.draw(20000, 8, 2, rng)
        assert all(a != b for a, b in ids.tolist())
        shares[spec.name] = float(max_mean(np.bincount(ids.ravel(), minlength=8)))
    assert shares["uniform"] < 1.05 and shares["zipf-0"] < 1.05
    assert shares["zipf-0"] < shares["zipf-1"] < shares["zipf-2"] <= 4.0


def test_routing_weights_are_positive_and_normalized():
    w = routing_weights(50, 2, np.random.default_rng(1))
    assert w.dtype == np.float32 and (w > 0).all()
    assert np.allclose(w.sum(axis=1), 1.0)


def write_routing_log(path, records):
    header = RoutingHeader(num_experts=4, top_k=2, num_layers=2, source="test")
    with RoutingWriter(path, header) as writer:
        for step, layer, tokens, counts in records:
            writer.write_step([(step, layer, PHASE_CODE["decode"], tokens, np.array(counts))])


def test_sources_from_routing_logs_gate_logs_and_loads_files(tmp_path):
    logs = tmp_path / "bench" / "unit"
    logs.mkdir(parents=True)
    write_routing_log(logs / "a.routing", [(0, 0, 2, [1, 1, 2, 0]), (0, 1, 0, [0, 0, 0, 0])])
    write_routing_log(logs / "b.routing", [(1, 1, 3, [3, 2, 1, 0])])
    (ours,) = read_sources(f"ours={tmp_path / 'bench'}")
    assert (ours.name, len(ours), ours.top_k, ours.num_experts) == ("ours", 2, 2, 4)
    assert ours.run.tolist() == ["unit/a.routing", "unit/b.routing"]
    assert ours.loads.tolist() == [[1, 1, 2, 0], [3, 2, 1, 0]]

    gates = tmp_path / "gates" / "gates_logs_01"
    gates.mkdir(parents=True)
    for layer in range(2):
        (gates / f"gate_logs_{layer}.json").write_text(
            json.dumps({"step": [5], "num_tokens": [2], "expert_loads": [[2, 0, 1, 1]]})
        )
    (study,) = read_sources(str(tmp_path / "gates"))
    assert (study.name, len(study), study.layer.tolist()) == ("gates", 2, [0, 1])

    out = tmp_path / "loads.json"
    write_loads_file(out, [ours, study])
    back = read_sources(str(out))
    assert [s.name for s in back] == ["ours", "gates"]
    assert back[0].loads.tolist() == ours.loads.tolist()
    assert back[1].num_tokens.tolist() == [2, 2]
    (renamed,) = read_sources(f"x={tmp_path / 'bench' / 'unit' / 'b.routing'}")
    assert renamed.name == "x" and renamed.run.tolist() == ["b.routing"]


def test_kernel_loads_tool(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    write_routing_log(logs / "a.routing", [(i, 0, 4, [2, 2, 2, 2]) for i in range(10)])
    parser = argparse.ArgumentParser()
    loads_mod.configure_parser(parser)
    out = tmp_path / "loads.json"
    args = parser.parse_args([f"ours={logs}", "--out", str(out), "--max-rows", "3"])
    assert loads_mod.run_tool(args) == 0
    (source,) = read_sources(str(out))
    assert len(source) == 3
    args = parser.parse_args([f"a={logs}", f"a={logs}", "--out", str(out)])
    with pytest.raises(ArtifactError, match="names repeat"):
        loads_mod.run_tool(args)


def test_source_errors(tmp_path):
    with pytest.raises(ArtifactError, match="no such file"):
        read_sources(str(tmp_path / "missing"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ArtifactError, match="not a moe-expert-loads file"):
        read_sources(str(bad))
    bad.write_text(json.dumps({"format": "moe-expert-loads", "sources": [{"name": "a"}]}))
    with pytest.raises(ArtifactError, match=r"sources\[0\].*bad source entry"):
        read_sources(str(bad))


def test_parse_routings(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    write_routing_log(logs / "a.routing", [(0, 0, 2, [1, 1, 2, 0])])
    sources = read_sources(f"ours={logs}")
    names = [s.name for s in parse_routings("all", [1.0, 2.0], sources, 4, 2)]
    assert names == ["balanced", "uniform", "zipf-1", "zipf-2", "replay:ours"]
    assert [s.name for s in parse_routings("uniform,replay", [1.0], sources, 4, 2)] == [
        "uniform",
        "replay:ours",
    ]
    with pytest.raises(ArtifactError, match="unknown routing 'skewed'"):
        parse_routings("skewed", [], sources, 4, 2)
    with pytest.raises(ArtifactError, match="top-2 of 4 experts; the layer is top-2 of 8"):
        parse_routings("replay", [], sources, 8, 2)


def test_replay_scales_a_logged_step():
    logs_source = loads_mod.LoadSource(
        "s",
        "mem",
        2,
        np.array(["r", "r"]),
        np.array([0, 1]),
        np.array([0, 0]),
        np.array([30, 30]),
        np.array([[8, 15, 8, 0, 14, 0, 15, 0], [30, 30, 0, 0, 0, 0, 0, 0]], dtype=float),
    )
    spec = RoutingSpec("replay", source=logs_source)
    rng = np.random.default_rng(0)
    assert spec.replay_loads(60, rng, row=0).tolist() == [16, 30, 16, 0, 28, 0, 30, 0]
    ids = spec.draw(64, 8, 2, rng)
    loads = np.bincount(ids.ravel(), minlength=8)
    assert loads.sum() == 128 and rank_max_mean(loads, ExpertPlacement.contiguous(8, 4)) > 1
