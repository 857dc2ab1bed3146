"""The predictor's features on small cases computed by hand."""

import math

import numpy as np
import pytest

from artifact.routing.measures import gini
from artifact.workload.predictor import (
    FEATURE_WEIGHTS,
    ImbalancePredictor,
    semantic_similarity,
    token_features,
)
from artifact.workload.tokenizer import MIXTRAL_VOCAB_SIZE, encode, mixtral_tokenizer


def test_token_features_by_hand():
    # T = [1, 1, 2, 3]: |T| = 4, |V| = 3, counts 2, 1, 1.
    features, raw = token_features([1, 1, 2, 3])
    assert features["repetition"] == pytest.approx(0.25)
    assert features["inverse_diversity"] == pytest.approx(0.25)
    assert features["top10_concentration"] == pytest.approx(1.0)
    entropy = 1.5  # -(.5 log2 .5 + 2 * .25 log2 .25)
    assert features["inverse_entropy"] == pytest.approx(1 - entropy / math.log2(3))
    # ascending counts 1, 1, 2: 2*(1*1 + 2*1 + 3*2)/(3*4) - 4/3 = 1/6
    assert features["gini"] == pytest.approx(1 / 6)
    # bigrams (1,1), (1,2), (2,3): top-10 sum 3 over |T|-1 = 3
    assert features["bigram_concentration"] == pytest.approx(1.0)
    assert raw["num_tokens"] == 4 and raw["unique_tokens"] == 3


def test_token_features_edge_cases():
    features, _ = token_features([5])
    assert features["bigram_concentration"] is None  # needs |T| >= 2
    assert features["inverse_entropy"] == pytest.approx(1.0)  # H = 0 over log2(max(1, 2))
    assert features["gini"] == 0.0
    features, _ = token_features(list(range(20)))
    assert features["repetition"] == 0.0
    assert features["top10_concentration"] == pytest.approx(0.5)
    assert features["bigram_concentration"] == pytest.approx(10 / 19)
    with pytest.raises(ValueError):
        token_features([])


def test_gini_by_hand():
    assert gini(np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)  # 2*16/16 - 5/4
    assert gini(np.array([3, 1])) == gini(np.array([1, 3]))


def test_semantic_similarity_by_hand():
    assert semantic_similarity(["black holes stars", "black holes stars"]) == pytest.approx(1.0)
    assert semantic_similarity(["black holes", "sourdough bread"]) == pytest.approx(0.5)
    assert semantic_similarity(["the and of", "is the a"]) is None  # only stop words
    assert semantic_similarity(["one prompt"]) is None


def test_tokenizer_is_mixtral_without_special_tokens():
    assert mixtral_tokenizer().vocab_size() == MIXTRAL_VOCAB_SIZE
    ids = encode("Hello world")
    assert ids == [22557, 1526]  # no BOS (1) in front
    assert 1 not in ids


def test_score_is_weighted_mean_of_available_features():
    text = "How do I bake sourdough bread at home?"
    pred = ImbalancePredictor().predict([text])  # one prompt: no semantic feature
    assert pred.components["semantic_similarity"] is None
    features, _ = token_features(encode(text))
    weights = dict(FEATURE_WEIGHTS)
    expected = sum(weights[k] * v for k, v in features.items()) / (
        1 - weights["semantic_similarity"]
    )
    assert pred.score == pytest.approx(expected)
    assert pred.raw_metrics["weight_used"] == pytest.approx(0.9)
    same = ImbalancePredictor().predict([text] * 30)
    assert same.components["semantic_similarity"] == pytest.approx(1.0)
    assert 0 <= pred.score < same.score <= 1


def test_no_semantic_flag_drops_the_feature():
    texts = ["black holes and stars", "stars and galaxies"]
    with_sem = ImbalancePredictor().predict(texts)
    without = ImbalancePredictor(semantic=False).predict(texts)
    assert with_sem.components["semantic_similarity"] is not None
    assert without.components["semantic_similarity"] is None
    assert without.raw_metrics["weight_used"] == pytest.approx(0.9)
