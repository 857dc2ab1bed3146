"""The original study's gate logs, read into routing blocks (`artifact.routing.readers`).

A study gate-log run is a folder `gates_logs_NN/` of `gate_logs_<layer>.json`, each
`{"step": [...], "num_tokens": [...], "expert_loads": [[E loads], ...]}`, one entry per
logged step. A file becomes one block of the layer it names, rank 0, phase unknown (the
study did not log it). Every way such a file can be bad (missing, truncated or corrupt JSON,
a missing field, ragged arrays, a non-numeric, non-finite or negative value) raises one
`ArtifactError` line naming the file and field; with `skip_bad` the file is left out instead
and returned as a `Skipped` entry.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artifact.core.errors import ArtifactError
from artifact.core.io import read_json
from artifact.routing.format import PHASE_CODE
from artifact.routing.readers import Skipped

GATE_LOG_RE = re.compile(r"^gate_logs_(\d+)\.json$")
GATE_LOG_FIELDS = ("step", "num_tokens", "expert_loads")


def gate_log_dtype(num_experts: int) -> np.dtype:
    return np.dtype(
        [
            ("step", "<i8"),
            ("layer", "<i2"),
            ("rank", "<i2"),
            ("phase", "u1"),
            ("num_tokens", "<i8"),
            ("counts", "<f8", (num_experts,)),
        ]
    )


def _number(value, path: Path, where: str, *, whole: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArtifactError(f"is {value!r}, expected a number", path=path, where=where)
    if not math.isfinite(value):
        raise ArtifactError(f"is {value}, expected a finite number", path=path, where=where)
    if value < 0:
        raise ArtifactError(f"is {value}, expected a number >= 0", path=path, where=where)
    if whole and value != int(value):
        raise ArtifactError(f"is {value}, expected a whole number", path=path, where=where)
    return float(value)


def read_gate_log(path: str | Path, *, num_experts: int | None = None) -> np.ndarray:
    """One study gate-log file as a block (its layer comes from the file name)."""
    path = Path(path)
    match = GATE_LOG_RE.match(path.name)
    if not match:
        raise ArtifactError("not a gate log: expected a name gate_logs_<layer>.json", path=path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ArtifactError(
            f"expected a JSON object with {', '.join(GATE_LOG_FIELDS)}, got {type(data).__name__}",
            path=path,
        )
    for key in GATE_LOG_FIELDS:
        if key not in data:
            raise ArtifactError("field is missing", path=path, where=key)
        if not isinstance(data[key], list):
            raise ArtifactError(
                f"expected a list, got {type(data[key]).__name__}", path=path, where=key
            )
    steps, tokens, loads = (data[key] for key in GATE_LOG_FIELDS)
    if not len(steps) == len(tokens) == len(loads):
        raise ArtifactError(
            f"ragged arrays: {len(steps)} steps, {len(tokens)} num_tokens, {len(loads)} "
            "expert_loads rows",
            path=path,
        )
    if not loads:
        raise ArtifactError("no steps logged", path=path, where="step")
    width = num_experts
    for i, row in enumerate(loads):
        if not isinstance(row, list):
            raise ArtifactError(
                f"expected a list of loads, got {type(row).__name__}",
                path=path,
                where=f"expert_loads[{i}]",
            )
        if width is None:
            width = len(row)
        if len(row) != width:
            raise ArtifactError(
                f"ragged arrays: {len(row)} loads, expected {width} (one per expert)",
                path=path,
                where=f"expert_loads[{i}]",
            )
    if width is None or width < 2:
        raise ArtifactError(
            f"{width} experts per row; imbalance needs at least 2", path=path, where="expert_loads"
        )
    block = np.zeros(len(steps), dtype=gate_log_dtype(width))
    block["layer"] = int(match.group(1))
    block["phase"] = PHASE_CODE["unknown"]
    block["step"] = [_number(v, path, f"step[{i}]", whole=True) for i, v in enumerate(steps)]
    block["num_tokens"] = [
        _number(v, path, f"num_tokens[{i}]", whole=True) for i, v in enumerate(tokens)
    ]
    block["counts"] = [
        [_number(v, path, f"expert_loads[{i}][{j}]") for j, v in enumerate(row)]
        for i, row in enumerate(loads)
    ]
    return block


def find_gate_log_runs(root: str | Path) -> list[Path]:
    """`root` itself if it holds gate_logs_*.json files, else its subfolders that do."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError("not a folder of gate logs", path=root)

    def holds_logs(folder: Path) -> bool:
        return any(GATE_LOG_RE.match(p.name) for p in folder.iterdir())

    if holds_logs(root):
        return [root]
    runs = sorted(p for p in root.iterdir() if p.is_dir() and holds_logs(p))
    if not runs:
        raise ArtifactError(
            "no gate logs (gate_logs_<layer>.json) here or in its subfolders", path=root
        )
    return runs


def gate_log_paths(
    run_dir: str | Path, *, num_layers: int | None = None, skip_bad: bool = False
) -> tuple[list[Path], list[Skipped], int]:
    """(files by layer, missing layers, layers expected) of a run.

    A gap in the layers (or fewer than num_layers) is an error, or with skip_bad a Skipped
    entry per missing layer.
    """
    run_dir = Path(run_dir)
    by_layer = {}
    for p in run_dir.iterdir():
        if m := GATE_LOG_RE.match(p.name):
            by_layer[int(m.group(1))] = p
    if not by_layer:
        raise ArtifactError("no gate logs (gate_logs_<layer>.json) in this folder", path=run_dir)
    expected = num_layers if num_layers is not None else max(by_layer) + 1
    extra = sorted(layer for layer in by_layer if layer >= expected)
    if extra:
        raise ArtifactError(
            f"gate_logs_{extra[0]}.json is beyond the {expected} layers expected", path=run_dir
        )
    missing = [layer for layer in range(expected) if layer not in by_layer]
    if missing and not skip_bad:
        names = ", ".join(f"gate_logs_{layer}.json" for layer in missing)
        raise ArtifactError(
            f"missing layer(s) {names} (layers 0..{expected - 1} expected)", path=run_dir
        )
    skipped = [
        Skipped(str(run_dir / f"gate_logs_{layer}.json"), "missing layer") for layer in missing
    ]
    return [by_layer[layer] for layer in sorted(by_layer)], skipped, expected


@dataclass
class GateLogRun:
    """One study run's gate logs: a block per good layer file, and what was left out."""

    path: Path
    blocks: list[np.ndarray]
    skipped: list[Skipped]
    num_layers: int
    num_experts: int


def read_gate_log_run(
    run_dir: str | Path, *, num_layers: int | None = None, skip_bad: bool = False
) -> GateLogRun:
    """Every layer file of a run (a few KB each: the study's writer kept <= 10 steps).

    All files must agree on the number of experts; the first good file sets it.
    """
    run_dir = Path(run_dir)
    paths, skipped, expected = gate_log_paths(run_dir, num_layers=num_layers, skip_bad=skip_bad)
    blocks: list[np.ndarray] = []
    width = None
    for path in paths:
        try:
            block = read_gate_log(path, num_experts=width)
        except ArtifactError as exc:
            if not skip_bad:
                raise
            skipped.append(Skipped.from_error(exc, path))
            continue
        width = block.dtype["counts"].shape[0]
        blocks.append(block)
    if width is None:
        raise ArtifactError("no readable gate log in this run", path=run_dir)
    return GateLogRun(run_dir, blocks, skipped, expected, width)
