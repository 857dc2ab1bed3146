"""Readers: every bad gate log or routing record is one line naming the file; --skip-bad."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import one_line_error

from artifact.core.errors import ArtifactError
from artifact.routing.aggregate import (
    analyze_gate_log_run,
    analyze_path,
    analyze_routing_log,
)
from artifact.routing.format import PHASE_CODE, RoutingHeader, RoutingWriter
from artifact.study.gate_logs import find_gate_log_runs, read_gate_log, read_gate_log_run

GOOD = {"step": [7, 8], "num_tokens": [2, 1], "expert_loads": [[1, 0, 2, 1], [0, 1, 1, 0]]}


def write_run(folder, layers=range(3), content=GOOD):
    folder.mkdir(parents=True, exist_ok=True)
    for layer in layers:
        (folder / f"gate_logs_{layer}.json").write_text(json.dumps(content))
    return folder


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "artifact", *map(str, args)], capture_output=True, text=True
    )


def test_good_gate_log(tmp_path):
    run = write_run(tmp_path / "gates_logs_01")
    block = read_gate_log(run / "gate_logs_2.json")
    assert list(block["layer"]) == [2, 2] and list(block["step"]) == [7, 8]
    assert block["counts"].tolist() == GOOD["expert_loads"]
    logs = read_gate_log_run(run)
    assert (logs.num_layers, logs.num_experts, logs.skipped) == (3, 4, [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"step": [1], "num_tokens": [1], "expert_loads": [[1, ', "truncated JSON at byte"),
        ('{"step": [1], "num_tokens": [1]} trailing', "corrupt JSON at byte"),
        ("", "file is empty"),
        ("[1, 2]", "expected a JSON object"),
        ('{"step": [1], "num_tokens": [1]}', ":expert_loads: field is missing"),
        ('{"step": 1, "num_tokens": [1], "expert_loads": [[1, 1]]}', ":step: expected a list"),
        ('{"step": [1, 2], "num_tokens": [1], "expert_loads": [[1, 1]]}', "ragged arrays: 2"),
        (
            '{"step": [1, 2], "num_tokens": [1, 1], "expert_loads": [[1, 1], [1, 1, 0]]}',
            ":expert_loads[1]: ragged arrays: 3 loads, expected 2",
        ),
        (
            '{"step": [1], "num_tokens": [1], "expert_loads": [[1, "x"]]}',
            ":expert_loads[0][1]: is 'x', expected a number",
        ),
        ('{"step": [1], "num_tokens": [1], "expert_loads": [[1, null]]}', "is None"),
        ('{"step": [1], "num_tokens": [true], "expert_loads": [[1, 1]]}', "is True"),
        ('{"step": [1], "num_tokens": [1], "expert_loads": [[1, NaN]]}', "finite number"),
        ('{"step": [1], "num_tokens": [1], "expert_loads": [[1, -2]]}', "expected a number >= 0"),
        ('{"step": [1.5], "num_tokens": [1], "expert_loads": [[1, 1]]}', ":step[0]: is 1.5"),
        ('{"step": [1], "num_tokens": [1], "expert_loads": [[2]]}', "at least 2"),
    ],
)
def test_bad_gate_log_is_one_line_naming_file(tmp_path, text, expected):
    message = one_line_error(read_gate_log, tmp_path / "gate_logs_0.json", text)
    assert expected in message
    assert "\n" not in message


def test_missing_layers_and_expert_mismatch(tmp_path):
    run = write_run(tmp_path / "run", layers=[0, 2])
    with pytest.raises(ArtifactError, match=r"missing layer\(s\) gate_logs_1.json"):
        read_gate_log_run(run)
    with pytest.raises(ArtifactError, match="gate_logs_2.json is beyond the 2 layers"):
        read_gate_log_run(run, num_layers=2)
    with pytest.raises(ArtifactError, match="gate_logs_3.json, gate_logs_4.json"):
        read_gate_log_run(write_run(tmp_path / "r2", layers=range(3)), num_layers=5)
    wide = dict(GOOD, expert_loads=[[1, 0, 2, 1, 0], [0, 1, 1, 0, 0]])
    (run / "gate_logs_1.json").write_text(json.dumps(wide))
    with pytest.raises(ArtifactError, match=r"gate_logs_1.json:expert_loads\[0\]: ragged"):
        read_gate_log_run(run)


def test_skip_bad_leaves_out_and_reports(tmp_path):
    run = write_run(tmp_path / "gates_logs_03", layers=[0, 1, 3])
    (run / "gate_logs_1.json").write_text('{"step": [1], "num_tokens": [1')
    result = analyze_gate_log_run(run, skip_bad=True, num_layers=5)
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in result.skipped}
    assert set(reasons) == {"gate_logs_1.json", "gate_logs_2.json", "gate_logs_4.json"}
    assert reasons["gate_logs_2.json"] == "missing layer"
    assert reasons["gate_logs_1.json"].startswith("truncated JSON at byte")
    assert {row["layer"] for row in result.per_layer} == {0, 3}
    layers = {row["layers"] for row in result.summary if row["aggregation"] == "mean_of_layers"}
    assert layers == {2}


def test_run_discovery_and_whole_run_left_out(tmp_path):
    tree = tmp_path / "baseline_gates_logs"
    write_run(tree / "gates_logs_01")
    bad = write_run(tree / "gates_logs_02", layers=[0], content=GOOD)
    (bad / "gate_logs_0.json").write_text("{")
    (tree / "notes").mkdir()
    assert [p.name for p in find_gate_log_runs(tree)] == ["gates_logs_01", "gates_logs_02"]
    with pytest.raises(ArtifactError, match="gates_logs_02/gate_logs_0.json: truncated"):
        analyze_path(tree)
    results, left_out = analyze_path(tree, skip_bad=True)
    assert [r.run for r in results] == ["baseline_gates_logs/gates_logs_01"]
    assert len(left_out) == 1 and "no readable gate log" in left_out[0].reason
    with pytest.raises(ArtifactError, match="no gate logs"):
        find_gate_log_runs(tree / "notes")


def test_cli_bad_gate_log_is_one_line_and_skip_bad_reports(tmp_path):
    run = write_run(tmp_path / "gates_logs_01")
    bad = run / "gate_logs_1.json"
    bad.write_text('{"step": [1], "num_tokens": [1], "expert_loads": [[1, "x", 0, 1]]}')
    result = run_cli("imbalance-metrics", run)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(bad) in lines[0] and "expert_loads[0][1]" in lines[0]
    result = run_cli("imbalance-metrics", run, "--skip-bad", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["skipped"] == [
        {"path": str(bad), "reason": "expert_loads[0][1]: is 'x', expected a number"}
    ]
    assert "left out" in result.stderr and str(bad) in result.stderr


def _routing_log(path, rows, num_layers=2):
    header = RoutingHeader(num_experts=4, top_k=2, num_layers=num_layers, source="test")
    with RoutingWriter(path, header) as writer:
        writer.write_step(rows)
    return path


def test_routing_log_corrupt_record_and_crash_cut(tmp_path):
    ok = np.array([1, 1, 0, 0])
    path = _routing_log(
        tmp_path / "bad.routing",
        [(0, 0, PHASE_CODE["decode"], 1, ok), (0, 5, PHASE_CODE["decode"], 1, ok)],
    )
    with pytest.raises(ArtifactError, match=r"bad.routing:record 1: corrupt record: layer"):
        analyze_routing_log(path)
    path = _routing_log(tmp_path / "neg.routing", [(0, 0, 1, 1, np.array([1, -1, 2, 0]))])
    with pytest.raises(ArtifactError, match="record 0: corrupt record: negative expert count"):
        analyze_routing_log(path)
    path = _routing_log(tmp_path / "cut.routing", [(0, 0, 1, 1, ok), (0, 1, 1, 1, ok)])
    with open(path, "ab") as fh:
        fh.write(b"\0" * 5)
    result = analyze_routing_log(path)
    assert result.records == 2
    assert result.skipped[0].reason == "last record cut by a crash (5 bytes), dropped"


def test_routing_logs_of_one_run_must_agree(tmp_path):
    a = _routing_log(tmp_path / "a.routing", [(0, 0, 1, 1, np.array([1, 1, 0, 0]))])
    b = _routing_log(tmp_path / "b.routing", [(0, 0, 1, 1, np.array([1, 1, 0, 0]))], 3)
    with pytest.raises(ArtifactError, match="b.routing: header .* differs from"):
        analyze_routing_log([a, b])
    result = analyze_routing_log([a, a])
    assert result.records == 2 and result.events == 4
