"""The embedded engine: knob mapping, provenance check, lifecycle (start, health, stop,
crash) and routing capture against a real `transformers serve` process."""

import json
import os
import signal
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_mixtral

from artifact.config.profiles import Mode, load_profile
from artifact.core.errors import ArtifactError, StageFailed
from artifact.engines.base import ServerLimits, get_engine
from artifact.engines.transformers.engine import kv_blocks
from artifact.engines.transformers.replay import load_model, replay
from artifact.routing.format import RoutingLog, layer_totals

pytestmark = pytest.mark.engine
torch = pytest.importorskip("torch")

TINY = tiny_mixtral()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from artifact.engines.transformers.seeded_model import build_model

    profile = load_profile("local")
    spec = profile.model.model_copy(update={"architecture": TINY, "max_model_len": 256})
    target = tmp_path_factory.mktemp("model") / "tiny"
    build_model(spec, target)
    return target


@pytest.fixture
def engine(tiny_model):
    profile = load_profile("local")
    return get_engine(profile, tiny_model)


def completion(server, prompt, max_tokens=4):
    body = json.dumps({"model": server.model_id, "prompt": prompt, "max_tokens": max_tokens})
    req = urllib.request.Request(
        server.base_url + "/v1/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def test_seeded_model_is_byte_identical(tiny_model, tmp_path):
    from artifact.engines.transformers.seeded_model import build_model, fingerprint

    spec = load_profile("local").model.model_copy(
        update={"architecture": TINY, "max_model_len": 256}
    )
    assert build_model(spec, tmp_path / "again") == fingerprint(tiny_model)


def test_knobs_the_engine_lacks_are_refused(engine):
    with pytest.raises(ArtifactError, match="has no enable_expert_parallel, enable_eplb"):
        engine.validate_mode(
            "ep",
            Mode(experts_implementation="eager", enable_expert_parallel=True, enable_eplb=True),
        )
    with pytest.raises(ArtifactError, match="experts_implementation must be one of"):
        engine.validate_mode("x", Mode(experts_implementation="triton"))
    engine.validate_mode("ok", Mode(experts_implementation="batched_mm"))


def test_command_maps_the_study_knobs(engine):
    cmd = engine.command(Mode(experts_implementation="eager"), ServerLimits(4, 512), 9999)
    assert cmd[cmd.index("--max-num-seqs") + 1] == "4"
    assert cmd[cmd.index("--max-num-batched-tokens") + 1] == "512"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--num-blocks") + 1] == str(kv_blocks(ServerLimits(4, 512), 1024))
    assert all(isinstance(part, str) for part in cmd)  # an argument list, no shell string


def test_provenance_check_names_each_contradiction(engine):
    limits = ServerLimits(4, 512)
    good = {
        "experts_implementation": "eager",
        "device": "cpu",
        "dtype": "float32",
        "grouped_mm_path": "torch._grouped_mm",
        "continuous_batching": {"live": {"max_requests_per_batch": 4, "max_batch_tokens": 512}},
    }
    assert engine.check_provenance("eager", limits, good) == []
    bad = dict(
        good,
        experts_implementation="grouped_mm",
        continuous_batching={"live": {"max_requests_per_batch": 8, "max_batch_tokens": 512}},
    )
    problems = engine.check_provenance("eager", limits, bad)
    assert len(problems) == 2
    assert "experts_implementation: asked for 'eager', the engine runs 'grouped_mm'" in problems
    assert any("max-num-seqs" in p for p in problems)
    cudnn = dict(good, sdpa_kernels={"cudnn": True, "mem_efficient": True})
    assert any("cuDNN attention" in p for p in engine.check_provenance("eager", limits, cudnn))


def test_lifecycle_and_routing_capture(engine, tmp_path):
    limits = ServerLimits(2, 128)
    server = engine.start("grouped_mm", limits, tmp_path / "server.log")
    try:
        assert server.base_url.startswith("http://127.0.0.1:")
        provenance = server.provenance()
        assert provenance["experts_implementation"] == "grouped_mm"
        assert provenance["routers_hooked"] == 2
        assert provenance["sdpa_kernels"]["cudnn"] is False
        server.start_routing(tmp_path / "run.routing", meta={"unit": "test"})
        prompts = ["How do I bake bread?", "Explain black holes simply.", "Why is the sky blue?"]
        usages = [completion(server, p, max_tokens=5)["usage"] for p in prompts]
        stats = server.stop_routing()
        provenance = server.provenance()
        assert engine.check_provenance("grouped_mm", limits, provenance) == []
    finally:
        assert server.stop() == 0  # graceful
    assert not server.alive()
    log = RoutingLog(tmp_path / "run.routing")
    assert log.header.meta["unit"] == "test" and not log.truncated
    records = log.read_all()
    processed = sum(u["prompt_tokens"] + u["completion_tokens"] - 1 for u in usages)
    for layer in range(2):
        mine = records[records["layer"] == layer]
        assert mine["counts"].sum() == 2 * processed  # top_k x every token processed
    assert stats["tokens"]["prefill"] == sum(u["prompt_tokens"] for u in usages)
    # the prompt part equals an offline replay of the same prompts, exactly
    model, tokenizer = load_model(engine.model_dir)
    model.set_experts_implementation("grouped_mm")
    replay(model, tokenizer, prompts, tmp_path / "replay.routing")
    np.testing.assert_array_equal(
        layer_totals(tmp_path / "run.routing", "prefill"),
        layer_totals(tmp_path / "replay.routing"),
    )
    assert "artifact: stopping" in Path(tmp_path / "server.log").read_text()


def test_crash_is_reported_with_the_log_tail(engine, tmp_path):
    server = engine.start("eager", ServerLimits(2, 128), tmp_path / "server.log")
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    with pytest.raises(StageFailed, match=r"server died during the test run \(exit code -9\)"):
        server.check_alive("the test run")


def test_start_failure_shows_the_log(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "model_dir", tmp_path / "no-such-model")
    with pytest.raises(StageFailed, match="server died during start-up"):
        engine.start("eager", ServerLimits(2, 128), tmp_path / "server.log")


def test_tolerant_decode_stream_survives_what_the_native_one_raises_on(tiny_model):
    """tokenizers' DecodeStream raises on some byte-fallback sequences (a seeded model emits
    them); the server's stream then decodes the whole sequence instead, without repeating
    what it already sent, and stays exact on ordinary text."""
    import tokenizers.decoders
    from transformers import AutoTokenizer

    from artifact.engines.transformers.server import install_tolerant_decode_stream

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)._tokenizer
    native = tokenizers.decoders.DecodeStream
    # Found by drawing random sequences (every third token a byte token <0x..>, ids 3-258).
    rng = np.random.default_rng(0)
    failing = None
    for _ in range(200):
        ids = [int(i) for i in rng.integers(3, 32000, 32)]
        ids[::3] = [int(i) for i in rng.integers(3, 259, len(ids[::3]))]
        stream = native([], skip_special_tokens=True)
        try:
            for token in ids:
                stream.step(tokenizer, token)
        except Exception:
            failing = ids
            break
    assert failing is not None, "no sequence found that the native DecodeStream rejects"
    try:
        install_tolerant_decode_stream()
        tolerant = tokenizers.decoders.DecodeStream
        assert tolerant is not native

        def streamed(ids):
            stream = tolerant([], skip_special_tokens=True)
            return "".join(filter(None, (stream.step(tokenizer, t) for t in ids)))

        full = tokenizer.decode(failing, skip_special_tokens=True)
        text = streamed(failing)
        # Nothing repeated; after the switch the tail is the full decode's (an incomplete
        # UTF-8 sequence at the very end is held back, as the native stream does).
        assert len(text) <= len(full)
        assert full.rstrip("\ufffd").endswith(text[-10:])
        ordinary = tokenizer.encode("Streaming stays exact: Ünïcödé, 日本語.").ids
        assert streamed(ordinary) == tokenizer.decode(ordinary, skip_special_tokens=True)
    finally:
        tokenizers.decoders.DecodeStream = native
