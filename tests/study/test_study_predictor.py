"""Compatibility: the predictor reproduces the score in each original dataset's file name."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.study


def test_predict_json_matches_every_original_dataset(study_data):
    files = sorted((study_data / "load_imbalance" / "datasets").glob("*.jsonl"))
    assert len(files) == 50
    out = subprocess.run(
        [sys.executable, "-m", "artifact", "predict", "--json", *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
    )
    results = json.loads(out.stdout)
    assert len(results) == 50
    worst = 0.0
    for item in results:
        expected = float(Path(item["file"]).stem.split("_", 1)[1])
        worst = max(worst, abs(item["score"] - expected))
        assert item["score"] == pytest.approx(expected, abs=1e-4), item["file"]
    # The file names are rounded to 4 decimals, so agreement cannot be closer than 5e-5.
    assert worst <= 5e-5 + 1e-12


def test_full_precision_scores_of_the_metadata(study_data):
    from artifact.workload.predictor import ImbalancePredictor

    meta = json.loads(
        (study_data / "load_imbalance" / "datasets" / "dataset_metadata.json").read_text()
    )
    predictor = ImbalancePredictor()
    base = study_data / "load_imbalance" / "datasets"
    for entry in meta["datasets"][:10]:
        pred = predictor.predict_file(base / Path(entry["filepath"]).name)
        assert pred.score == pytest.approx(entry["score"], rel=1e-9, abs=1e-12)
