import json

import pytest

from artifact.core.errors import ArtifactError
from artifact.core.io import atomic_open, atomic_write_json, read_json, read_jsonl


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_read_json_reports_truncation_with_byte_offset(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('{"ttfts": [1.0, 2.0, ')
    with pytest.raises(ArtifactError) as err:
        read_json(path)
    message = str(err.value)
    assert str(path) in message and "truncated JSON at byte 21" in message


def test_read_json_reports_corruption_and_empty(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1} garbage')
    with pytest.raises(ArtifactError, match=r"corrupt JSON at byte 9"):
        read_json(bad)
    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    with pytest.raises(ArtifactError, match="file is empty"):
        read_json(empty)


def test_read_jsonl_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"\n')
    with pytest.raises(ArtifactError) as err:
        read_jsonl(path, required=("text",))
    assert str(err.value).startswith(f"{path}:3: not valid JSON")
    path.write_text('{"text": "a"}\n{"id": 2}\n')
    with pytest.raises(ArtifactError, match=r":2: record has no 'text' field"):
        read_jsonl(path, required=("text",))
    path.write_text("[1, 2]\n")
    with pytest.raises(ArtifactError, match=r":1: expected a JSON object, got list"):
        read_jsonl(path)
