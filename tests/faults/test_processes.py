"""Signals to the CLI while a server starts and mid-bench, a port taken before the server
binds it, and two runs on one run directory. After each: no server process left (by PID and
by port), no finished unit lost, one line where the run must stop."""

from __future__ import annotations

import signal
import socket
import time

import pytest
from processes import all_pids, running, server_port

from artifact.core.manifest import RunDir
from artifact.engines import base
from artifact.engines.base import ServerLimits

pytestmark = pytest.mark.engine
pytest.importorskip("torch")

SWEEP = ("bench", "config_sweep", "grouped_mm")
# What the CLI answers each signal with, and how long its servers may take to go.
OUTCOMES = {
    signal.SIGKILL: (-9, None, 30),
    signal.SIGTERM: (143, "terminated (SIGTERM); finished units are kept, rerun to resume", 5),
    signal.SIGINT: (130, "interrupted; finished units are kept, rerun to resume", 5),
}


def bench(cli, run_dir, profile):
    return cli("bench", "--profile", profile, "--run-dir", run_dir)


def check_outcome(run, sig, run_dir):
    code, line, grace = OUTCOMES[sig]
    t0 = time.monotonic()
    assert run.process.wait(timeout=120) == code, run.output()
    t1 = time.monotonic()
    assert run.servers, "no server was seen"
    assert run.left_behind(grace) == []
    print(
        f"{sig.name}: CLI exit {code} after {t1 - t0:.1f} s; servers {sorted(run.servers)} "
        f"gone (PID and port) {time.monotonic() - t1:.1f} s later"
    )
    record = RunDir(run_dir).record("bench")
    assert record["status"] != "complete"
    if line is not None:
        lines = run.output().strip().splitlines()
        assert lines[-1] == line and "Traceback" not in run.output()
        assert record["status"] == "failed" and record["error"] == "interrupted"


@pytest.mark.parametrize("sig", list(OUTCOMES), ids=lambda s: s.name)
def test_signal_while_the_server_starts(cli, run_dir, fault_profile, sig):
    run = bench(cli, run_dir, fault_profile)
    run.wait_for(lambda: run.servers, timeout=120)
    run.process.send_signal(sig)
    check_outcome(run, sig, run_dir)


@pytest.mark.parametrize("sig", list(OUTCOMES), ids=lambda s: s.name)
def test_signal_mid_bench_keeps_the_finished_unit(cli, run_dir, fault_profile, sig):
    first = run_dir.joinpath(*SWEEP, "2_128", "unit.json")
    second = run_dir.joinpath(*SWEEP, "4_128", "unit.json")
    run = bench(cli, run_dir, fault_profile)
    # The first unit is done and the next unit's server is up.
    run.wait_for(lambda: first.exists() and run.serving(), timeout=300)
    kept = first.read_bytes()
    run.process.send_signal(sig)
    check_outcome(run, sig, run_dir)
    assert first.read_bytes() == kept and not second.exists()


def test_second_run_is_refused_and_a_dead_holders_lock_is_taken_over(cli, run_dir, fault_profile):
    holder = bench(cli, run_dir, fault_profile)
    holder.wait_for((run_dir / ".lock.json").exists, timeout=120)
    second = bench(cli, run_dir, fault_profile)
    assert second.process.wait(timeout=120) == 2
    (line,) = second.output().strip().splitlines()
    assert line.startswith(f"error: {run_dir}: in use by pid {holder.process.pid} on ")
    assert "artifact bench --profile" in line and "pick another --run-dir" in line
    assert not second.servers

    holder.wait_for(lambda: holder.servers, timeout=120)
    holder.process.kill()
    holder.process.wait()
    assert holder.left_behind(30) == []
    # The dead holder's flock went with it: the next run takes over, naming it.
    third = cli("imbalance", "--profile", fault_profile, "--run-dir", run_dir)
    assert third.process.wait(timeout=120) == 2  # imbalance needs bench complete
    assert f"taking over the lock of pid {holder.process.pid} on " in third.output()
    assert not (run_dir / ".lock.json").exists()


def test_a_taken_port_is_retried_at_once(tiny_engine, tmp_path):
    """The port free_port picked is taken before the server binds it: that server exits at
    once and the engine starts another on a fresh port (instead of waiting out the start-up
    timeout with a server that never listens)."""
    engine = tiny_engine
    taker = socket.socket()
    taker.bind(("127.0.0.1", 0))
    taker.listen()
    taken = taker.getsockname()[1]
    picks = iter([taken])
    real_free_port = base.free_port
    base.free_port = lambda host: next(picks, None) or real_free_port(host)
    t0 = time.monotonic()
    try:
        server = engine.start("grouped_mm", ServerLimits(2, 128), tmp_path / "server.log")
    finally:
        base.free_port = real_free_port
        taker.close()
    try:
        elapsed = time.monotonic() - t0
        assert not server.base_url.endswith(f":{taken}")
        assert server.provenance()["experts_implementation"] == "grouped_mm"
        log = (tmp_path / "server.log").read_text()
        assert "address already in use" in log and "the HTTP server stopped; exiting" in log
        # Two starts within one start-up timeout (the old server never exited: it ran out).
        assert elapsed < engine.profile.engine.startup_timeout_s, elapsed
        print(f"port clash: served on a fresh port {elapsed:.1f} s after the first start")
    finally:
        assert server.stop() == 0
    # The first server, on the taken port, is gone (it exited by itself at once).
    assert not any(server_port(pid) == taken and running(pid) for pid in all_pids())
