"""The original study's routing as a small replay file for the parallel benchmark.

    python -m artifact.study.parallel_loads --study $MOE_ARTIFACT_STUDY_DATA \\
        --out .devdata/study_loads.json

Reads the gate logs of the study's TP runs (`load_imbalance/baseline_gates_logs`: every
layer's expert loads at each of the last <= 10 decode steps of 30 runs, 29-30 tokens a
step) and writes a moe-expert-loads file (artifact.gpu.kernels.loads) with two sources:

- `study-steps`: the logged steps themselves (at most --max-rows, a seeded draw): the
  per-step imbalance the study measured, sampling noise of 60 assignments included;
- `study-layers`: per layer, its loads summed over every logged step of every run (about
  9,000 tokens a row): the skew each layer keeps, what a large batch sees.

The routing replays a row scaled to the batch (artifact.gpu.kernels.routing, `replay:NAME`).
The study's EP runs' gate logs (`default_all2all_gates_logs`) are left out: their steps
hold one token (each DP rank's own), and every rank wrote the same files.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from artifact.core.console import console
from artifact.core.errors import ArtifactError
from artifact.gpu.kernels.loads import LoadSource, read_sources, save_sources
from artifact.study import STUDY_ENV, STUDY_GATE_LOGS


def pooled_by_layer(source: LoadSource, name: str) -> LoadSource:
    """One row per layer: its loads and tokens summed over every row of `source`."""
    layers = np.unique(source.layer)
    return LoadSource(
        name,
        source.origin,
        source.top_k,
        np.full(len(layers), "all-runs"),
        layers,
        np.zeros(len(layers), dtype=np.int64),
        np.array([source.num_tokens[source.layer == layer].sum() for layer in layers]),
        np.stack([source.loads[source.layer == layer].sum(axis=0) for layer in layers]),
    )


def study_sources(study: Path, max_rows: int, seed: int) -> list[LoadSource]:
    logs = study / STUDY_GATE_LOGS["study-baseline"]
    if not logs.is_dir():
        raise ArtifactError("no gate logs of the study's TP runs here", path=logs)
    (steps,) = read_sources(f"study-steps={logs}")
    return [steps.subsample(max_rows, seed), pooled_by_layer(steps, "study-layers")]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--study",
        type=Path,
        default=None,
        help=f"the study's data folder (default ${STUDY_ENV})",
    )
    parser.add_argument("--out", type=Path, required=True, help="the loads file to write")
    parser.add_argument(
        "--max-rows", type=int, default=2000, help="study-steps: keep at most this many steps"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-rows draw")


def run_tool(args: argparse.Namespace) -> int:
    study = args.study or os.environ.get(STUDY_ENV)
    if not study:
        raise ArtifactError(f"give --study or set ${STUDY_ENV} to the study's data folder")
    sources = study_sources(Path(study), args.max_rows, args.seed)
    save_sources(args.out, sources)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m artifact.study.parallel_loads")
    configure_parser(parser)
    try:
        return run_tool(parser.parse_args(argv))
    except ArtifactError as exc:
        console.print(f"[red]error[/]: {exc}", soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
