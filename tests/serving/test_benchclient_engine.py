"""The bench client against a real `transformers serve` with a tiny seeded Mixtral (CPU).

64 concurrent streams complete, `--verify` passes on each file, repetitions stay apart, and
what the server does not support (`ignore_eos`) is recorded in the file.
"""

from __future__ import annotations

import argparse
import json

import pytest
from helpers import tiny_mixtral

from artifact.serving.client import configure_parser, run_tool
from artifact.serving.results import load_result, verify_result_file

pytestmark = pytest.mark.engine

TINY = tiny_mixtral(hidden_size=64, intermediate_size=128, max_position_embeddings=512)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The embedded engine (transformers serve + routing hooks) on a tiny seeded Mixtral."""
    pytest.importorskip("torch")
    from artifact.config.profiles import load_profile
    from artifact.engines.base import ServerLimits, get_engine
    from artifact.engines.transformers.seeded_model import build_model

    profile = load_profile("local")
    model = tmp_path_factory.mktemp("tiny") / "model"
    build_model(
        profile.model.model_copy(update={"architecture": TINY, "max_model_len": 512}), model
    )
    engine = get_engine(profile, model)
    with engine.start(
        "grouped_mm", ServerLimits(64, 1024), tmp_path_factory.mktemp("log") / "server.log"
    ) as running:
        yield running.base_url, model


def test_64_concurrent_streams_verify_and_repetitions_stay_apart(server, tmp_path):
    url, model = server
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"q{i}",
                    "text": f"Question {i}: how do experts share work?",
                    "category": "moe",
                }
            )
            + "\n"
            for i in range(64)
        )
    )
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(
        [
            "--base-url",
            url,
            "--dataset",
            str(dataset),
            "--output-len",
            "8",
            "--warmup-requests",
            "2",
            "--repeat",
            "2",
            "--result-dir",
            str(tmp_path / "out"),
            "--goodput",
            "ttft:60000",
            "--server-info",
            "engine=transformers",
            "moe=true",
        ]
    )
    assert run_tool(args) == 0
    paths = sorted((tmp_path / "out").glob("*.json"))
    assert [p.name for p in paths] == ["prompts.rep00.json", "prompts.rep01.json"]
    files = [load_result(p) for p in paths]
    for path, data in zip(paths, files, strict=True):
        assert verify_result_file(path) == []
        assert data["completed"] == 64 and data["max_concurrency"] is None
        assert data["model_id"] == str(model)
        assert all(n == 8 for n in data["output_lens_usage"])
        caps = data["server"]["capabilities"]
        assert caps["health_status"] == 200 and caps["usage_reported"] is True
        # transformers serve 5.x answers 422 to ignore_eos; the file says so.
        assert "ignore_eos" in caps["rejected_fields"]
        assert data["server"]["ignore_eos"]["sent"] is False
        assert data["server"]["engine"] == "transformers"
        assert data["warmup"] == {"requests": 2, "failed": 0, "errors": []}
    assert files[0]["run"]["run_id"] != files[1]["run"]["run_id"]
    assert [f["run"]["repetition"] for f in files] == [0, 1]
