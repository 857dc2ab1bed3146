"""The parallel benchmark's reductions: timings -> rows, the cost model, crossover, EPLB."""

import numpy as np
import pytest

from artifact.gpu.parallel.report import config_rows, crossover_rows, eplb_rows, fit_rows

META = {
    "ranks": 2,
    "tokens": 4,
    "global_tokens": 8,
    "routing": "uniform",
    "mode": "ep-agrs",
    "placement": "linear",
    "rel_err": 1e-3,
    "single_gpu_err": 2e-3,
    "status": "ok",
}
PHASES = ["route", "allgather", "compute", "reducescatter"]


def record(ms_per_call, sent, assignments):
    return {
        "phases": PHASES,
        "sets": [
            {
                "ms": np.array(ms_per_call, dtype=float),
                "bytes": sent,
                "assignments": np.array(assignments),
                "loads": np.array([4, 2, 2, 0, 1, 1, 2, 4]),
                "slots": "0,1,2,3|4,5,6,7",
            }
        ],
    }


def test_config_rows_split_the_critical_path():
    # rank 0 computes 1+2 ms and waits in its collectives; rank 1 computes 1+4 ms.
    r0 = record([[1, 3, 2, 1]] * 3, {"allgather": 100, "reducescatter": 60}, [6, 10])
    r1 = record([[1, 1, 4, 1]] * 3, {"allgather": 120, "reducescatter": 60}, [6, 10])
    row, sets, phases = config_rows(META, [r0, r1])
    assert row["layer_ms"] == 7  # max total: 7 (both)
    assert row["compute_ms"] == 5  # the slowest rank's compute
    assert row["comm_ms"] == 2  # the rest of the critical path
    assert row["comm_min_ms"] == 2  # rank 1 waits least
    assert row["bytes_rank_max"] == 180 and row["bytes_total"] == 340
    assert row["rank_max_mean"] == pytest.approx(10 / 8)
    assert row["expert_max_mean"] == pytest.approx(4 / 2)
    assert row["calls"] == 3 and row["sets"] == 1
    assert len(sets) == 1 and sets[0]["layer_ms"] == 7
    assert len(phases) == 8
    kinds = {(p["rank"], p["phase"]): (p["kind"], p["ms"], p["bytes"]) for p in phases}
    assert kinds[(0, "allgather")] == ("comm", 3, 100)
    assert kinds[(1, "compute")] == ("compute", 4, 0)


def test_config_rows_of_an_untimed_configuration():
    row, sets, phases = config_rows({**META, "status": "incorrect"}, [{"phases": [], "sets": []}])
    assert row["status"] == "incorrect" and "layer_ms" not in row
    assert sets == [] and phases == []


def set_rows(mode, tokens, line, xs):
    return [
        {
            "mode": mode,
            "tokens": tokens,
            "layer_ms": line(x),
            "rank_max_mean": x,
            "expert_max_mean": 1.5,
        }
        for x in xs
    ]


def test_fit_crossover_and_recovery():
    rows = set_rows("ep-a2a", 256, lambda x: 2 + 3 * x, [1.0, 1.2, 1.5, 2.0])
    rows += set_rows("tp", 256, lambda x: 6.0, [1.0, 1.0, 1.0])
    fits = fit_rows(rows)
    ep = next(f for f in fits if f["mode"] == "ep-a2a")
    assert ep["intercept_ms"] == pytest.approx(2) and ep["slope_ms"] == pytest.approx(3)
    assert ep["r2"] == pytest.approx(1) and ep["balanced_ms"] == pytest.approx(5)
    assert ep["imbalance_share"] == pytest.approx(0.6)
    tp = next(f for f in fits if f["mode"] == "tp")
    assert tp["x"] == "expert_max_mean" and "slope_ms" not in tp  # no spread in x: no fit
    results = [
        {"tokens": 256, "routing": "zipf-1.2", "mode": "tp", "placement": "", "layer_ms": 6.0},
        {
            "tokens": 256,
            "routing": "zipf-1.2",
            "mode": "ep-a2a",
            "placement": "linear",
            "layer_ms": 8.0,
            "rank_max_mean": 2.0,
        },
        {
            "tokens": 256,
            "routing": "zipf-1.2",
            "mode": "ep-a2a",
            "placement": "eplb:2",
            "layer_ms": 5.5,
            "rank_max_mean": 1.1,
            "vs_tp": 5.5 / 6,
        },
    ]
    (cross,) = crossover_rows(results, fits)
    assert cross["ep_wins_below"] == pytest.approx(4 / 3, rel=1e-4)
    assert cross["balanced_vs_tp"] == pytest.approx(5 / 6)
    (recovery,) = eplb_rows(results, fits)
    assert recovery["speedup"] == pytest.approx(8 / 5.5, rel=1e-4)
    assert recovery["recovered"] == pytest.approx((8 - 5.5) / (8 - 5), rel=1e-4)
