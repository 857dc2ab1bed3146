"""Imbalance measures: properties (hypothesis), known values, expert placement."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artifact.core.errors import ArtifactError
from artifact.routing.measures import (
    ExpertPlacement,
    cv,
    entropy,
    gini,
    load_metrics,
    max_mean,
    max_min,
    rank_max_mean,
    uniform_cv_floor,
)
from artifact.study.legacy import legacy_cv

loads_strategy = (
    st.integers(min_value=2, max_value=16)
    .flatmap(lambda e: st.lists(st.integers(min_value=0, max_value=10_000), min_size=e, max_size=e))
    .filter(lambda xs: sum(xs) > 0)
)
INVARIANT = (cv, max_mean, max_min, entropy, gini)


@settings(max_examples=200, deadline=None)
@given(loads=loads_strategy, data=st.data())
def test_permuting_experts_changes_nothing(loads, data):
    perm = data.draw(st.permutations(range(len(loads))))
    x = np.array(loads, dtype=float)
    for measure in INVARIANT:
        np.testing.assert_allclose(measure(x[list(perm)]), measure(x), rtol=1e-12, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(
    experts=st.integers(min_value=2, max_value=64),
    load=st.floats(min_value=1e-3, max_value=1e9),
)
def test_even_load(experts, load):
    x = np.full(experts, load)
    assert cv(x) == pytest.approx(0.0, abs=1e-12)
    assert max_mean(x) == pytest.approx(1.0, rel=1e-12)
    assert max_min(x) == pytest.approx(1.0, rel=1e-12)
    assert entropy(x) == pytest.approx(1.0, rel=1e-12)
    assert gini(x) == pytest.approx(0.0, abs=1e-12)
    ranks = [r for r in range(1, experts + 1) if experts % r == 0]
    for r in ranks:
        placement = ExpertPlacement.contiguous(experts, r)
        assert rank_max_mean(x, placement) == pytest.approx(1.0, rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(loads=loads_strategy, scale=st.floats(min_value=1e-3, max_value=1e3))
def test_scale_free_and_bounded(loads, scale):
    x = np.array(loads, dtype=float)
    e = x.size
    for measure in INVARIANT:
        np.testing.assert_allclose(measure(x * scale), measure(x), rtol=1e-9, atol=1e-12)
    assert 1.0 - 1e-12 <= max_mean(x) <= e + 1e-12
    assert -1e-12 <= entropy(x) <= 1.0 + 1e-12
    assert -1e-12 <= gini(x) <= (e - 1) / e + 1e-12


def test_known_values_and_rows():
    one_hot = np.array([0, 0, 5, 0])
    assert max_mean(one_hot) == 4.0
    assert entropy(one_hot) == 0.0
    assert gini(one_hot) == pytest.approx(0.75)
    assert cv(one_hot) == pytest.approx(np.sqrt(3))
    assert np.isnan(max_min(one_hot))
    rows = np.array([[1, 1, 1, 1], [0, 0, 0, 0], [2, 0, 2, 0]])
    m = load_metrics(rows, ExpertPlacement.contiguous(4, 2))
    assert m["cv"][0] == 0 and np.isnan(m["cv"][1]) and m["cv"][2] == pytest.approx(1.0)
    assert list(m["idle_experts"]) == [0, 4, 2]
    assert m["rank_max_mean"][2] == pytest.approx(1.0)  # ranks {0,1} and {2,3} get 2 each
    # The study's CV: epsilon in the denominator, 0 for an empty row.
    assert legacy_cv(rows[1]) == 0.0
    assert legacy_cv([0, 0, 0, 0, 1, 1, 0, 0]) == 1.7320508068760567


def test_noise_floor_is_exact_for_one_token_and_right_on_average():
    assert uniform_cv_floor(1, 8, 2) == pytest.approx(np.sqrt(3))
    assert np.isnan(uniform_cv_floor(0, 8, 2))
    rng = np.random.default_rng(0)
    n, trials = 30, 4000
    choice = np.argsort(rng.random((trials, n, 8)), axis=2)[:, :, :2]  # top-2, distinct
    loads = np.stack([(choice == e).sum(axis=(1, 2)) for e in range(8)], axis=1)
    rms = np.sqrt(np.mean(cv(loads) ** 2))
    assert rms == pytest.approx(uniform_cv_floor(n, 8, 2), rel=0.03)


def test_placement():
    assert ExpertPlacement.contiguous(8, 4).rank_of_expert == (0, 0, 1, 1, 2, 2, 3, 3)
    # vLLM's linear placement: the first E % R ranks hold one expert more.
    assert ExpertPlacement.contiguous(10, 4).rank_of_expert == (0, 0, 0, 1, 1, 1, 2, 2, 3, 3)
    assert ExpertPlacement.parse("2", 8) == ExpertPlacement.contiguous(8, 2)
    custom = ExpertPlacement.parse("0,1,0,1", 4)
    assert custom.num_ranks == 2
    assert rank_max_mean([3, 0, 1, 0], custom) == pytest.approx(2.0)
    with pytest.raises(ArtifactError, match="names 3 experts"):
        ExpertPlacement.parse("0,1,0", 4)
    with pytest.raises(ArtifactError, match="rank count or"):
        ExpertPlacement.parse("a,b", 4)
    with pytest.raises(ArtifactError, match="covers 4 experts"):
        rank_max_mean([1, 2, 3], custom)
