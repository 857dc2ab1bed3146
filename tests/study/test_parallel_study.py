"""The parallel stage's replay file derived from the original study's gate logs."""

import numpy as np
import pytest

from artifact.gpu.kernels.loads import read_sources
from artifact.study.parallel_loads import main

pytestmark = pytest.mark.study


def test_study_loads_file(study_data, tmp_path):
    out = tmp_path / "study_loads.json"
    assert main(["--study", str(study_data), "--out", str(out)]) == 0
    steps, layers = read_sources(str(out))
    assert (steps.name, len(steps), steps.top_k, steps.num_experts) == ("study-steps", 2000, 2, 8)
    assert set(steps.num_tokens.tolist()) <= {29, 30}
    assert (layers.name, len(layers)) == ("study-layers", 32)
    assert sorted(layers.layer.tolist()) == list(range(32))
    # Pooling keeps every logged assignment: two per token.
    assert np.allclose(layers.loads.sum(axis=1), 2 * layers.num_tokens)
    ratio = layers.loads.max(axis=1) / layers.loads.mean(axis=1)
    assert 1.0 < np.median(ratio) < np.median(steps.loads.max(axis=1) / steps.loads.mean(axis=1))
