"""The embedded engine's routing recorder on real Mixtral routers (transformers)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers import tiny_mixtral  # noqa: E402
from meta_device import HostCopies  # noqa: E402

from artifact.engines.transformers.routing_capture import RoutingRecorder  # noqa: E402
from artifact.routing.format import RoutingLog  # noqa: E402

LAYERS = 3


class RoutersOnly(torch.nn.Module):
    """A Mixtral's real top-k routers, run in layer order: the part the recorder hooks. (The
    rest of transformers' Mixtral syncs by itself: its experts index by data.)"""

    def __init__(self, device: str):
        super().__init__()
        config = transformers.MixtralConfig(**tiny_mixtral(num_hidden_layers=LAYERS))
        with torch.device(device):
            model = transformers.MixtralForCausalLM(config)
        self.config = model.config
        self.gates = torch.nn.ModuleList(layer.mlp.gate for layer in model.model.layers)

    def forward(self, hidden):
        return [gate(hidden)[-1] for gate in self.gates]


def test_a_replay_counts_the_routers_top_k_exactly(tmp_path):
    model = RoutersOnly("cpu")
    recorder = RoutingRecorder(model, source="test", prefill_only=True).attach()
    recorder.start(tmp_path / "r.routing")
    hidden = [torch.randn(n, model.config.hidden_size) for n in (7, 1, 12)]
    with torch.inference_mode():
        chosen = [model(h) for h in hidden]
    stats = recorder.stop()
    recorder.detach()
    assert stats == {"steps": 3, "skipped_passes": 0, "tokens": {"prefill": 20, "decode": 0}}
    records = RoutingLog(tmp_path / "r.routing").read_all()
    assert len(records) == 3 * LAYERS
    for r in records:
        ids = chosen[r["step"]][r["layer"]]
        assert r["num_tokens"] == ids.shape[0]
        np.testing.assert_array_equal(r["counts"], np.bincount(ids.reshape(-1), minlength=8))


def test_the_router_hook_never_waits_for_the_device_and_copies_once_per_pass(tmp_path):
    """On `meta` (tests/fixtures/meta_device.py) a host sync raises; the former per-layer
    copies at the end of a pass would count one per layer."""
    model = RoutersOnly("meta")
    recorder = RoutingRecorder(model, source="test", prefill_only=True).attach()
    recorder.start(tmp_path / "r.routing")
    with HostCopies() as copies, torch.inference_mode():
        for n in (7, 1):
            model(torch.empty(n, model.config.hidden_size, device="meta"))
    stats = recorder.stop()
    recorder.detach()
    assert copies.count == 2
    assert stats["steps"] == 2 and stats["tokens"]["prefill"] == 8
