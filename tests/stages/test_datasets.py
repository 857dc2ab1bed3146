"""Dataset families, the even selection, and the datasets stage end to end."""

import json

import numpy as np
import pytest

from artifact.config.profiles import load_profile
from artifact.core.manifest import RunDir
from artifact.core.runner import StageContext, run_stage
from artifact.stages.datasets import STAGE
from artifact.workload.corpus import Spec, build, candidate_pool, load_corpus, select_even
from artifact.workload.predictor import ImbalancePredictor


def test_corpus_has_25_domains_of_50_distinct_queries():
    corpus = load_corpus()
    assert len(corpus) == 25
    for queries in corpus.values():
        assert len(queries) >= 50 and len(set(queries)) == len(queries)
    everything = [q for qs in corpus.values() for q in qs]
    assert len(set(everything)) == len(everything)


@pytest.mark.parametrize(
    "spec",
    [
        Spec("repetition", {"p": 0.5}, seed=1),
        Spec("semantic", {"domains": 3, "rep": 0}, seed=2),
        Spec("structure", {"length": 2, "templates": 2}, seed=3),
        Spec("concentration", {"q": 0.7, "domain": 4}, seed=4),
        Spec("mixture", {"alpha": 0.5, "rep": 1}, seed=5),
    ],
)
def test_each_family_is_reproducible_and_well_formed(spec):
    first, again = build(spec, 30), build(spec, 30)
    assert first == again
    assert len(first) == 30
    assert len({p["id"] for p in first}) == 30
    assert {p["category"] for p in first} <= set(load_corpus())
    assert all(p["text"].strip() for p in first)


def test_families_move_the_score_the_way_they_claim():
    predictor = ImbalancePredictor()

    def score(spec):
        return predictor.predict([p["text"] for p in build(spec, 30)]).score

    natural = score(Spec("repetition", {"p": 0.0}, seed=1))
    half = score(Spec("repetition", {"p": 0.5}, seed=1))
    identical = score(Spec("repetition", {"p": 1.0}, seed=1))
    assert natural < half < identical
    one_domain = score(Spec("semantic", {"domains": 1, "rep": 0}, seed=2))
    all_domains = score(Spec("semantic", {"domains": 25, "rep": 0}, seed=2))
    assert one_domain > all_domains
    assert len({p["text"] for p in build(Spec("repetition", {"p": 1.0}, seed=1), 30)}) == 1


def test_select_even_covers_the_range_and_spreads_families():
    rng = np.random.default_rng(0)
    scores = list(rng.uniform(0, 1, 400))
    families = ["a" if s < 0.5 else "b" for s in scores]
    families[:200] = ["c"] * 200
    chosen = select_even(scores, families, 20)
    picked = sorted(scores[i] for i in chosen)
    assert len(set(chosen)) == 20
    assert picked[0] == min(scores) and picked[-1] == max(scores)
    assert max(np.diff(picked)) < 0.1
    assert len({families[i] for i in chosen}) == 3


def test_candidate_pool_is_deterministic():
    assert candidate_pool(7) == candidate_pool(7)
    assert candidate_pool(7) != candidate_pool(8)


def _run(tmp_path, name, force=False):
    ctx = StageContext(profile=load_profile("local"), run_dir=RunDir(tmp_path / name), force=force)
    return run_stage(STAGE, ctx), ctx.stage_dir("datasets")


def test_default_suite_is_deterministic_wide_and_even(tmp_path):
    status, first = _run(tmp_path, "a")
    assert status == "complete"
    _, second = _run(tmp_path, "b")
    files = sorted(p.name for p in first.iterdir())
    assert files == sorted(p.name for p in second.iterdir())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    meta = json.loads((first / "metadata.json").read_text())
    scores = [d["score"] for d in meta["datasets"]]
    assert len(scores) == 50 and scores == sorted(scores)
    assert max(scores) - min(scores) >= 0.40
    assert max(np.diff(scores)) <= 0.03
    assert len({d["family"] for d in meta["datasets"]}) == 5
    # every file's name carries its own score, and the predictor agrees on rescoring
    entry = meta["datasets"][7]
    assert entry["file"] == f"008_{entry['score']:.4f}.jsonl"
    rescored = ImbalancePredictor().predict_file(first / entry["file"]).score
    assert rescored == pytest.approx(entry["score"], abs=1e-12)
    # rerun skips, --force redoes
    assert _run(tmp_path, "a")[0] == "skipped"
    assert _run(tmp_path, "a", force=True)[0] == "complete"
