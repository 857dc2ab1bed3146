"""The check stage end to end on a small run directory: verdicts, files, exit codes.

The run directory holds bench results and routing logs written by the test; the real
imbalance stage turns them into the tables the checker reads. Corrupting one input (a
result's TTFT x 3, a routing count) makes the matching claim FAIL and the exit code 1.
"""

import json
import shutil

import numpy as np
import pytest
from run_dirs import analysed_run_dir

from artifact.cli import main
from artifact.routing.format import RoutingLog


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """The run directory after the real imbalance stage (built once per module)."""
    return analysed_run_dir(tmp_path_factory.mktemp("checker"))


@pytest.fixture
def run(analysed, tmp_path):
    source, profile = analysed
    run = tmp_path / "run"
    shutil.copytree(source, run)
    return run, ["--profile", str(profile), "--run-dir", str(run)]


def verdicts(run):
    data = json.loads((run / "check" / "claims.json").read_text())
    return {c["id"]: c for c in data["claims"]}, data


def test_all_claims_hold_and_skips_say_why(run, capsys):
    run, args = run
    assert main(["check", *args]) == 0
    by_id, data = verdicts(run)
    assert {k: v["verdict"] for k, v in by_id.items()} == {
        "datasets.count": "PASS",
        "routing.events_per_run": "PASS",
        "exp1.ttft_falls": "PASS",
        "exp1.grouped_ttft_not_worse": "PASS",
        "exp2.eplb": "SKIP",
        "exp1.a100_only": "SKIP",
        "exp1.known_failure": "XFAIL",
    }
    assert "eplb_ablation is disabled in profile 'local'" in by_id["exp2.eplb"]["reason"]
    assert "nothing to balance" in by_id["exp2.eplb"]["reason"]
    assert "no reference for hardware 'cpu'" in by_id["exp1.a100_only"]["reason"]
    assert by_id["exp1.known_failure"]["reason"].startswith("known: kept to show XFAIL")
    assert data["passed"] is True and data["hardware"] == "cpu"
    assert data["counts"] == {"PASS": 4, "FAIL": 0, "SKIP": 2, "XFAIL": 1, "XPASS": 0}
    err = capsys.readouterr().err
    assert "4 PASS, 2 SKIP, 1 XFAIL" in err
    assert (run / "check" / "claims.md").read_text().count("| `") == 7


def test_ttft_times_three_fails_the_matching_claim(run, capsys):
    run, args = run
    assert main(["check", *args]) == 0
    path = run / "bench/config_sweep/grouped_mm/8_512/run.rep00.json"
    data = json.loads(path.read_text())
    data["mean_ttft_ms"] *= 3
    path.write_text(json.dumps(data))
    # The imbalance tables are now older than the bench results: check refuses them.
    capsys.readouterr()
    assert main(["check", *args]) == 2
    err = capsys.readouterr().err
    assert "stage 'imbalance' is out of date" in err and "Traceback" not in err
    assert main(["imbalance", *args]) == 0
    assert main(["check", *args]) == 1
    by_id, data = verdicts(run)
    claim = by_id["exp1.grouped_ttft_not_worse"]
    assert claim["verdict"] == "FAIL"
    assert claim["expected"].startswith("a <= b (margin 38")
    assert "a 496 ms vs b 380 ms (n=3 vs n=3)" in claim["observed"]
    assert "Welch t test at alpha=0.05 does not support it" in claim["reason"]
    assert [k for k, v in by_id.items() if v["verdict"] == "FAIL"] == [claim["id"]]
    assert data["passed"] is False
    # Unchanged inputs: the stage is skipped, the recorded failure still exits 1.
    assert main(["check", *args]) == 1


def test_changed_routing_count_fails_the_exact_claim(run):
    run, args = run
    path = run / "bench/config_sweep/eager/4_512/run.rep01.routing"
    log = RoutingLog(path)
    records = log.read_all()
    header = path.read_bytes().split(b"\n", 1)[0] + b"\n"
    records[0]["counts"] = np.array([81, 60, 40, 20])
    path.write_bytes(header + records.tobytes())
    assert main(["imbalance", *args]) == 0
    assert main(["check", *args]) == 1
    by_id, _ = verdicts(run)
    claim = by_id["routing.events_per_run"]
    assert claim["verdict"] == "FAIL"
    assert claim["expected"] == "400 (exact)"
    assert "1 of 18 rows outside the band" in claim["reason"]
    assert "config_sweep/eager/4_512/rep01: 401" in claim["reason"]


def test_bad_claims_file_is_one_line(run, tmp_path, capsys):
    run, args = run
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "profile: local\nclaims:\n  - id: x.y\n    kind: result\n    statement: s\n    source: s\n"
        "    quantity: {table: runs, column: a}\n    relation: {kind: less}\n"
    )
    assert main(["check", *args, "--claims", str(bad)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "claim 'x.y', field 'relation'" in lines[0] and "give 'other'" in lines[0]


def test_report_reads_the_verdicts_check_wrote(run, tmp_path):
    from artifact.checker import read_verdicts
    from artifact.core.errors import ArtifactError

    run, args = run
    assert main(["check", *args]) == 0
    verdicts = read_verdicts(run / "check" / "claims.json")
    assert len(verdicts.claims) == 7 and verdicts.hardware == "cpu"
    broken = tmp_path / "claims.json"
    data = json.loads((run / "check" / "claims.json").read_text())
    del data["findings"]
    broken.write_text(json.dumps(data))
    with pytest.raises(ArtifactError) as exc:
        read_verdicts(broken)
    assert "field 'findings'" in str(exc.value) and str(broken) in str(exc.value)
