"""The kernels stage's replay sources against the original study's gate logs."""

import numpy as np
import pytest

from artifact.gpu.kernels.bench import logged_counts
from artifact.gpu.kernels.loads import read_sources
from artifact.gpu.kernels.routing import ids_from_loads
from artifact.routing.measures import ExpertPlacement, rank_max_mean
from artifact.study import STUDY_GATE_LOGS

pytestmark = pytest.mark.study


@pytest.mark.parametrize(("name", "steps", "tokens"), [("study-baseline", 9440, 30),
                                                      ("study-all2all", 9600, 1)])  # fmt: skip
def test_study_gate_logs_replay_exactly(study_data, name, steps, tokens):
    (source,) = read_sources(f"{name}={study_data / STUDY_GATE_LOGS[name]}")
    assert (len(source), source.num_experts, source.top_k) == (steps, 8, 2)
    # The study logged decode steps: baseline batches of ~30 tokens, all2all single tokens.
    assert np.median(source.num_tokens) == tokens
    assert (source.loads.sum(axis=1) == 2 * source.num_tokens).all()
    rng = np.random.default_rng(0)
    for row in rng.choice(len(source), 50, replace=False):
        t = int(source.num_tokens[row])
        counts = logged_counts(source.loads[row], t, 2)
        assert counts.tolist() == source.loads[row].astype(int).tolist()
        ids = ids_from_loads(counts, 2, rng)
        assert np.bincount(ids.ravel(), minlength=8).tolist() == counts.tolist()
    ranks = rank_max_mean(source.loads, ExpertPlacement.contiguous(8, 4))
    assert ranks.min() >= 1.0 and ranks.max() <= 4.0
