"""The CLI: bad input stops with one line naming the file and line or field, no traceback."""

import argparse
import subprocess
import sys

import pytest

from artifact.cli import COMMANDS, STAGES
from artifact.core.runner import GPU_STAGES, PIPELINE


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "artifact", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "file is empty"),
        ('{"text": "ok"}\nnot json\n', ":2: not valid JSON"),
        ('{"text": "ok"}\n{"id": "x"}\n', ":2: record has no 'text' field"),
        ('{"text": 3}\n', ":1: 'text' must be a string"),
    ],
)
def test_predict_bad_input_is_one_line(tmp_path, content, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    result = run_cli("predict", path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and expected in lines[0]


def test_unknown_profile_field_is_one_line(tmp_path, write_profile, local_profile_raw):
    path = write_profile({"modes": {"eager": {"experts_impl": "eager"}}})
    result = run_cli("datasets", "--profile", path, "--run-dir", tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "field 'modes.eager.experts_impl': unknown field" in lines[0]
    assert "experts_implementation" in lines[0]


def test_help_lists_stages_and_tools():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("datasets", "reproduce", "predict"):
        assert name in result.stdout


def test_every_command_loads_and_configures_its_parser():
    assert set(STAGES) == set(PIPELINE + GPU_STAGES)
    for name, stage in STAGES.items():
        assert stage.load().name == name
    for command in COMMANDS:
        command.configure_parser(argparse.ArgumentParser())
