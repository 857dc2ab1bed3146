"""The records stages hand each other: a file reads back as written, and a corrupt or
older-format file is one line naming the file, the field and the stage to rerun."""

import json
import subprocess
import sys

import pytest

from artifact.core.errors import ArtifactError
from artifact.core.layout import RunLayout
from artifact.core.manifest import RunDir
from artifact.core.records import (
    DatasetEntry,
    DatasetMetadata,
    Manifest,
    ResultFile,
    ServeProvenance,
    UnitRecord,
    read_record,
    write_record,
)

UNIT = {
    "experiment": "imbalance",
    "mode": "eager",
    "dataset": "001_0.1000",
    "max_num_seqs": 4,
    "max_num_batched_tokens": 128,
    "prompts": "001_0.1000.jsonl",
    "runs": [
        {
            "repetition": 0,
            "result": "run.rep00.json",
            "routing": "run.rep00.routing",
            "capture": {"events": 12, "steps": 3},
            "processed_tokens": 40,
            "assignments_per_layer": 80,
            "replay_match": True,
            "replay_mismatch": 0.0,
        }
    ],
}
ENTRY = {
    "index": 1,
    "file": "001_0.1000.jsonl",
    "family": "mixed",
    "strategy": "mixed_1",
    "params": {"domains": ["a", "b"]},
    "seed": 7,
    "n_samples": 3,
    "score": 0.1,
    "score_str": "0.1000",
    "components": {"entropy": 0.5, "missing": None, "count": 2},
    "raw_metrics": {"tokens": 12, "ratio": 0.25},
    "sha256": "0" * 64,
}
METADATA = {
    "generator_version": 1,
    "seed": 7,
    "prompts_per_dataset": 3,
    "n_datasets": 1,
    "candidates_scored": 5,
    "weights": {"entropy": 1, "skew": 0.5},
    "score_range": [0.1, 0.1],
    "score_span": 0.0,
    "max_gap": 0.0,
    "score_mean": 0.1,
    "score_std": 0.0,
    "datasets": [ENTRY],
}
RESULT = {
    "duration": 2,
    "completed": 2,
    "input_lens": [3, 4],
    "output_lens": [2, 2],
    "ttfts": [0.1, 1],
    "itls": [[0.1], [0.2]],
    "generated_texts": ["ab", "cd"],
    "errors": ["", ""],
    "mean_ttft_ms": 550.0,
    "server": {"mode": "eager"},
}


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (UnitRecord, UNIT),
        (DatasetMetadata, METADATA),
        (ResultFile, RESULT),
        (
            ServeProvenance,
            {
                "engine": "transformers",
                "top_k": 2,
                "experts_implementation": "grouped_mm",
                "versions": {"transformers": "5.0"},
                "num_layers": 2,
                "startup_seconds": 1.5,
                "smoke_usage": None,
                "limits": {"max_num_seqs": 4, "max_num_batched_tokens": 128},
            },
        ),
        (
            Manifest,
            {
                "schema": 1,
                "profile": "local",
                "profile_path": None,
                "stages": {"datasets": {"status": "running", "start": "t", "end": None}},
            },
        ),
    ],
)
def test_round_trip_keeps_the_file(tmp_path, model, data):
    path = tmp_path / "record.json"
    write_record(path, model.model_validate(data))
    assert json.loads(path.read_text()) == data  # same keys, ints stay ints
    record = read_record(path, model)
    write_record(tmp_path / "again.json", record)
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()


def test_dataset_scores_by_name():
    metadata = DatasetMetadata.model_validate(METADATA)
    assert metadata.scores() == {"001_0.1000": 0.1}
    assert isinstance(metadata.datasets[0], DatasetEntry)


def test_corrupt_json_is_one_line_naming_the_file(tmp_path):
    path = RunLayout(tmp_path).bench_unit("imbalance/eager/001_0.1000").record
    path.parent.mkdir(parents=True)
    path.write_text('{"experiment": "imbalance", ')
    with pytest.raises(ArtifactError) as exc:
        read_record(path, UnitRecord)
    message = one_line(exc)
    assert message.startswith(f"{path}: truncated JSON at byte")
    assert message.endswith("; rerun `moe-artifact bench --force`")


def test_missing_file_names_the_stage_to_rerun(tmp_path):
    path = RunLayout(tmp_path).dataset_metadata
    with pytest.raises(ArtifactError) as exc:
        read_record(path, DatasetMetadata)
    assert one_line(exc) == f"{path}: file not found; rerun `moe-artifact datasets --force`"


@pytest.mark.parametrize(
    ("change", "field", "what"),
    [
        ({"mode": None}, "mode", "required field is missing"),  # an older-format record
        ({"experiment": "sweep"}, "experiment", "got 'sweep'; allowed:"),
        ({"max_num_seqs": "four"}, "max_num_seqs", "Input should be a valid integer"),
        ({"runs": [{**UNIT["runs"][0], "processed_tokens": None}]}, "runs.0.processed_tokens", ""),
    ],
)
def test_bad_field_is_one_line_naming_file_and_field(tmp_path, change, field, what):
    data = {k: v for k, v in {**UNIT, **change}.items() if v is not None}
    path = tmp_path / "unit.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError) as exc:
        read_record(path, UnitRecord)
    message = one_line(exc)
    assert message.startswith(f"{path}:field '{field}': {what}")
    assert message.endswith("; rerun `moe-artifact bench --force`")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"duration": 0}, ":field 'duration': expected a positive number, got 0"),
        ({"ttfts": [0.1, "slow"]}, ":field 'ttfts': expected a list of numbers"),
        ({"input_lens": [3, True]}, ":field 'input_lens': expected a list of integers"),
        ({"itls": [[0.1]]}, ":field 'itls': has 1 entries, 'errors' has 2"),
        ({"completed": None}, ": not a serving-benchmark result: no 'completed'"),
        ({"format": "moe-artifact-bench"}, ":field 'e2els': missing"),
        (
            {"format": "moe-artifact-bench", "format_version": 9, "e2els": [0.2, 1.2]},
            ":field 'format_version': moe-artifact-bench version 9 is not supported",
        ),
    ],
)
def test_bad_result_file_names_the_field(tmp_path, change, expected):
    data = {k: v for k, v in {**RESULT, **change}.items() if v is not None}
    path = tmp_path / "run.rep00.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError) as exc:
        read_record(path, ResultFile)
    assert one_line(exc).startswith(f"{path}{expected}")


def test_result_file_keeps_every_key():
    result = ResultFile.model_validate(RESULT)
    assert result.get("mean_ttft_ms") == 550.0 and result.get("absent") is None
    assert result.get("completed") == 2 and not result.is_ours


def test_bad_manifest_record_names_the_field(tmp_path):
    run = RunDir(tmp_path)
    run.layout.manifest.write_text(json.dumps({"schema": 1, "stages": {"bench": {"end": "t"}}}))
    with pytest.raises(ArtifactError) as exc:
        run.record("bench")
    assert one_line(exc) == (
        f"{run.layout.manifest}:field 'stages.bench.status': required field is missing; "
        "move it away to start the run directory afresh"
    )


def test_manifest_keeps_what_each_update_wrote(tmp_path):
    run = RunDir(tmp_path)
    run.set_profile("local", None)
    run.update("bench", status="running", end=None, experiments=["imbalance"])
    run.update("bench", status="complete", seconds=1.5, details={"n": 1})
    assert json.loads(run.layout.manifest.read_text()) == {
        "schema": 1,
        "profile": "local",
        "profile_path": None,
        "stages": {
            "bench": {
                "status": "complete",
                "end": None,
                "experiments": ["imbalance"],
                "seconds": 1.5,
                "details": {"n": 1},
            }
        },
    }
    assert run.stage_record("bench").experiments == ["imbalance"]


def test_empty_unit_record_stops_the_imbalance_stage_in_one_line(tmp_path):
    """A finished bench unit whose unit.json is `{}`: exit 2, one line naming it, no traceback."""
    run = RunDir(tmp_path / "run")
    run.set_profile("local", None)
    write_record(run.layout.dataset_metadata, DatasetMetadata.model_validate(METADATA))
    unit = run.layout.bench_unit("imbalance/eager/001_0.1000").record
    unit.parent.mkdir(parents=True)
    unit.write_text("{}")
    for stage in ("datasets", "bench"):
        run.update(stage, status="complete", inputs={}, outputs=run.outputs_of((stage,)))
    command = ["imbalance", "--profile", "local", "--run-dir", str(run.path)]
    result = subprocess.run(
        [sys.executable, "-m", "artifact", *command],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {unit}:field 'experiment': required field is missing")
    assert "rerun `moe-artifact bench --redo imbalance/eager/001_0.1000`" in lines[0]
