"""The run directory's tidy tables, by name, as lists of row dicts or as DataFrames (read
once, lazily, from the JSON copies: they keep what CSV cannot, an int column with gaps, lists).

- runs, correlations, per_layer, summary, expert_loads, legacy, default_vs_legacy:
  `imbalance/<name>.json` (`study-import/<name>.json` in a run directory of the study's
  data, here and below);
- datasets: `datasets/metadata.json`, one row per dataset (`index`: its rank by score,
  `name`: its file stem);
- provenance: `imbalance/provenance.json` (a study run directory), else one row per
  `bench/**/provenance.json`, flattened (`versions.torch`, ...), with the unit's experiment,
  mode and limits, and the study's column names where they apply (`engine_version`,
  `flashinfer_moe_used`);
- eplb, eplb_runs: `imbalance/eplb.json` (`{runs: [...], comparison: [...]}`,
  artifact.profiling.nsys eplb_table): eplb_runs one row per arm and profiled pass, its
  summary flattened (`label`: the mode, `launch`, `fused_moe.total_ms`, ...); eplb one row
  per metric, the arms' medians (`a`, `b`, `n_a`, `n_b`), `change_pct` and its bootstrap
  interval (`change_low`, `change_high`);
- balancedness: one row per `bench/**/diagnostic/balancedness.json` (the EPLB arms' untimed
  diagnostic passes: experiment, mode, count, min, mean, max of the logged balancedness);
- log_flags: `imbalance/log_flags.json` (a study run directory: flags across its server logs
  and workload cards).

The hardware at hand is an id: `cpu` for a run without GPUs, else the GPU model and count
(`nvidia-a100-sxm4-40gb-x4`), from the bench stage's host record or, for the study's own
data, `imbalance/hardware.json`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifact.core.errors import ArtifactError
from artifact.core.io import read_json
from artifact.core.layout import launch_of
from artifact.core.manifest import RunDir
from artifact.core.records import BalancednessRecord, read_record
from artifact.core.tables import frame

if TYPE_CHECKING:
    import pandas as pd

IMBALANCE_TABLES = (
    "runs",
    "correlations",
    "per_layer",
    "summary",
    "expert_loads",
    "legacy",
    "default_vs_legacy",
)
TABLES = (
    *IMBALANCE_TABLES,
    "datasets",
    "provenance",
    "eplb",
    "eplb_runs",
    "balancedness",
    "log_flags",
)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept as values."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                out.update(flatten(value, name))
            else:
                out[name] = value
    return out


def hardware_id(gpus: list[dict] | list[str] | None, count: int | None = None) -> str:
    """`cpu`, or the GPU model and count: `nvidia-a100-sxm4-40gb-x4`."""
    if not gpus:
        return "cpu"
    names = [g["name"] if isinstance(g, dict) else str(g) for g in gpus]
    model = re.sub(r"[^a-z0-9]+", "-", names[0].lower()).strip("-")
    return f"{model}-x{count or len(names)}"


class RunTables:
    def __init__(self, run_dir: str | Path):
        self.run_dir = RunDir(run_dir)
        self.path = self.run_dir.path
        self.layout = self.run_dir.layout
        # A run directory of the study's data has its tables from the study-import stage.
        self.tables_stage = "study-import" if self.run_dir.record("study-import") else "imbalance"
        self._cache: dict[str, list[dict]] = {}
        self._frames: dict[str, pd.DataFrame] = {}

    def _imbalance(self, name: str) -> Path:
        return self.layout.table(name, stage=self.tables_stage)

    def has(self, name: str) -> bool:
        try:
            self.get(name)
        except ArtifactError:
            return False
        return True

    def get(self, name: str) -> list[dict]:
        if name not in self._cache:
            self._cache[name] = self._load(name)
        return self._cache[name]

    def frame(self, name: str) -> pd.DataFrame:
        """The table as a DataFrame of the values as stored (for the checker's queries)."""
        if name not in self._frames:
            self._frames[name] = frame(self.get(name))
        return self._frames[name]

    def _load(self, name: str) -> list[dict]:
        if name in IMBALANCE_TABLES or name == "log_flags":
            path = self._imbalance(name)
            if not path.exists():
                raise ArtifactError(
                    f"no table '{name}': {path} is missing (run the {self.tables_stage} stage)"
                )
            rows = read_json(path)
        elif name == "datasets":
            meta = read_json(self.layout.dataset_metadata)
            rows = sorted(meta["datasets"], key=lambda d: d["score"])
            rows = [{**d, "index": i, "name": Path(d["file"]).stem} for i, d in enumerate(rows)]
        elif name == "provenance":
            rows = self._provenance()
        elif name == "balancedness":
            rows = [
                read_record(path, BalancednessRecord).model_dump()
                for path in self.layout.bench_balancedness()
            ]
            if not rows:
                bench = self.layout.stage("bench")
                raise ArtifactError(f"no table 'balancedness': no diagnostic pass under {bench}")
        elif name in ("eplb", "eplb_runs"):
            path = self._imbalance("eplb")
            if not path.exists():
                raise ArtifactError(
                    f"no table '{name}': no EPLB kernel comparison in this run ({path})"
                )
            data = read_json(path)
            rows = data["comparison"] if name == "eplb" else [flatten(r) for r in data["runs"]]
        else:
            raise ArtifactError(f"unknown table '{name}'; tables: {', '.join(TABLES)}")
        if not isinstance(rows, list):
            raise ArtifactError(f"table '{name}' is not a list of rows")
        return rows

    def _provenance(self) -> list[dict]:
        own = self._imbalance("provenance")
        if own.exists():
            return read_json(own)
        rows = []
        bench = self.layout.stage("bench")
        for path in self.layout.bench_provenances():
            rel = path.parent.relative_to(bench)
            parts = rel.parts
            row: dict[str, Any] = {"path": rel.as_posix(), "launch": launch_of(path)}
            if parts and parts[0] in ("config_sweep", "imbalance", "eplb_ablation"):
                row["experiment"] = parts[0]
                if len(parts) > 1:
                    row["mode"] = parts[1]
            row.update(flatten(read_json(path)))
            row.setdefault("max_num_seqs", row.get("limits.max_num_seqs"))
            row.setdefault("max_num_batched_tokens", row.get("limits.max_num_batched_tokens"))
            # Columns named as in a study run directory, whatever the engine.
            row.setdefault(
                "engine_version",
                row.get("vllm_version")
                or row.get("versions.vllm")
                or row.get("versions.transformers"),
            )
            if "moe_kernel" in row:
                row.setdefault("flashinfer_moe_used", row["moe_kernel"] == "flashinfer_cutlass_moe")
            rows.append(row)
        if not rows:
            raise ArtifactError(f"no table 'provenance': no provenance.json under {bench}")
        return rows

    def hardware(self) -> str:
        """The hardware id the measurements ran on (see the module docstring)."""
        study = self._imbalance("hardware")
        if study.exists():
            return read_json(study)["id"]
        record = self.run_dir.record("bench") or {}
        host = record.get("host")
        if not host:
            return "unknown"
        return hardware_id(host.get("gpus"))


def check_fresh(run_dir: RunDir, upstream: tuple[str, ...]) -> None:
    """Refuse to read tables that are older than their own inputs.

    The runner re-runs a stage whose inputs changed only when asked to run it; reading the
    imbalance tables after a bench result changed would judge stale numbers. For each
    upstream stage, its recorded input hashes must equal the files now in the run directory.
    """
    from artifact.core.manifest import hash_tree

    for name in upstream:
        record = run_dir.record(name) or {}
        recorded = {
            k: v for k, v in (record.get("inputs") or {}).items() if not k.startswith("external:")
        }
        if not recorded:
            continue
        current: dict[str, str] = {}
        for top in sorted({k.split("/", 1)[0] for k in recorded}):
            current.update(hash_tree(run_dir.path / top, run_dir.path))
        if current != recorded:
            changed = sorted(
                k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k)
            )
            raise ArtifactError(
                f"stage '{name}' is out of date: {len(changed)} of its input files changed "
                f"since it ran (e.g. {changed[0]}); rerun `moe-artifact {name}` or "
                "`moe-artifact reproduce`",
                path=run_dir.path,
            )
