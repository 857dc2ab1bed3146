"""Tidy tables on disk: each table as `<name>.csv` and `<name>.json` (a list of row objects).

Missing values (undefined measures) are empty cells in CSV and null in JSON. The per-step
table can have a row per record of a long run, so it is streamed to CSV only, chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import numpy as np

from artifact.core.io import atomic_open
from artifact.core.tables import csv_text, write_table
from artifact.routing.aggregate import RunImbalance
from artifact.routing.format import PHASES
from artifact.routing.measures import METRICS
from artifact.routing.readers import Skipped
from artifact.study.legacy import compare_default_vs_legacy, legacy_table

MEASURE_COLUMNS = (*METRICS, "idle_experts", "cv_noise_floor")
COLUMNS = {
    "per_layer": (
        "run",
        "layer",
        "phase",
        "view",
        "records",
        "num_tokens",
        "events",
        *MEASURE_COLUMNS,
    ),
    "summary": ("run", "phase", "view", "metric", "aggregation", "value", "layers"),
    "expert_loads": ("run", "layer", "phase", "expert", "rank", "load"),
    "legacy": ("run", "method", "value"),
    "default_vs_legacy": (
        "run",
        "legacy_per_step",
        "per_step_cv",
        "per_step_cv_floor",
        "per_step_cv_over_floor",
        "legacy_aggregated",
        "layer_cv",
        "layer_cv_floor",
        "layer_cv_over_legacy_aggregated",
        "layer_max_mean",
        "max_mean_ratio_of_sums",
        "rank_max_mean_ratio_of_sums",
    ),
    "skipped": ("path", "reason"),
    "correlation": (
        "group",
        "x",
        "y",
        "method",
        "r",
        "p_value",
        "ci_low",
        "ci_high",
        "n",
        "n_removed",
        "removed",
        "note",
    ),
}
PER_STEP_COLUMNS = (
    "run",
    "layer",
    "step",
    "rank",
    "phase",
    "num_tokens",
    "events",
    *MEASURE_COLUMNS,
)


def write_run_tables(
    out_dir: str | Path, results: Sequence[RunImbalance], skipped: Sequence[Skipped] = ()
) -> list[Path]:
    """Every per-run table of `results` (all runs in one file per table) under out_dir.

    `skipped` adds inputs left out before any run could be made (whole runs).
    """
    tables = {
        "per_layer": [row for r in results for row in r.per_layer],
        "summary": [row for r in results for row in r.summary],
        "expert_loads": [row for r in results for row in r.expert_loads],
        "legacy": legacy_table(results),
        "default_vs_legacy": compare_default_vs_legacy(results),
        "skipped": [s.to_json() for s in (*skipped, *(s for r in results for s in r.skipped))],
    }
    written = []
    for name, rows in tables.items():
        written += write_table(out_dir, name, rows, COLUMNS[name])
    return written


class PerStepCsv:
    """A per-step sink for the analyze functions: streams one CSV row per record.

    The file is written atomically: it appears complete when the `with` block ends without
    an error, and not at all otherwise. Measures have 9 significant digits; an undefined
    (NaN) measure is an empty cell, as in the other tables.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._stack = ExitStack()
        self._fh: IO[str] | None = None

    def __enter__(self) -> PerStepCsv:
        self._fh = self._stack.enter_context(atomic_open(self.path))
        self._fh.write(csv_text([], PER_STEP_COLUMNS))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)

    def __call__(self, run: str, block: np.ndarray, measures: dict[str, np.ndarray]) -> None:
        import pandas as pd

        assert self._fh is not None, "PerStepCsv is used inside a `with` block"
        columns = {
            "run": run,
            "layer": block["layer"],
            "step": block["step"],
            "rank": block["rank"],
            "phase": np.asarray(PHASES, dtype=object)[block["phase"]],
            "num_tokens": block["num_tokens"],
            "events": block["counts"].sum(axis=1).astype(np.int64),
            **{name: measures[name] for name in MEASURE_COLUMNS},
        }
        table = pd.DataFrame(columns, columns=list(PER_STEP_COLUMNS))
        table.to_csv(self._fh, header=False, index=False, float_format="%.9g", lineterminator="\n")
