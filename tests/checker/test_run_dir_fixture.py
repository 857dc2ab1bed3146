"""The tiny run directory of tests/fixtures/run_dirs.py is what it says it is."""

from __future__ import annotations

from run_dirs import MODES, SCORES, SEQS, TOKENS_PER_STEP, TOP_K, build_run_dir, skewed


def test_fixture_builds(tmp_path, write_profile):
    run = build_run_dir(tmp_path, write_profile())
    units = sorted(run.glob("bench/*/*/*/unit.json"))
    assert len(units) == len(MODES) * (len(SEQS) + len(SCORES))
    assert all(sum(c) == TOP_K * TOKENS_PER_STEP for c in (skewed(s) for s in SCORES))
