"""Per-step expert loads to replay: read from routing logs or the study's gate logs, kept in a
small `moe-expert-loads` file that can travel to a GPU machine without the raw logs.

A *source* is a named table of logged steps: per row its run, layer, step, num_tokens and
the E expert loads (token-to-expert assignments). Sources are read from

- a moe-routing log file (`*.routing`), or a folder holding such files anywhere below it
  (e.g. a run's `bench/` stage folder): one row per record with tokens;
- a gate-log run folder or a folder of runs (the study's `gates_logs_NN/gate_logs_<layer>.json`);
- a loads file written by `moe-artifact kernel-loads` (`format: moe-expert-loads`), which
  holds one or more sources already.

Rows with no tokens or no load are dropped: there is nothing to replay in them.
This module needs numpy only (no torch), so the CLI can import it anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artifact.core.console import console
from artifact.core.errors import ArtifactError
from artifact.core.io import atomic_write_json, read_json
from artifact.core.layout import RunLayout
from artifact.routing.format import RoutingLog
from artifact.routing.readers import routing_blocks
from artifact.study import STUDY_GATE_LOGS
from artifact.study.gate_logs import find_gate_log_runs, read_gate_log_run

FORMAT = "moe-expert-loads"
VERSION = 1


@dataclass
class LoadSource:
    """Logged steps of one source: row i is (run[i], layer[i], step[i], num_tokens[i], loads[i])."""

    name: str
    origin: str
    top_k: int
    run: np.ndarray  # (N,) str
    layer: np.ndarray  # (N,) int
    step: np.ndarray  # (N,) int
    num_tokens: np.ndarray  # (N,) int
    loads: np.ndarray  # (N, E) float

    def __post_init__(self) -> None:
        keep = (self.num_tokens > 0) & (self.loads.sum(axis=1) > 0)
        for name in ("run", "layer", "step", "num_tokens", "loads"):
            setattr(self, name, getattr(self, name)[keep])
        if not len(self.num_tokens):
            raise ArtifactError(f"source '{self.name}' has no step with tokens", path=self.origin)

    @property
    def num_experts(self) -> int:
        return self.loads.shape[1]

    def __len__(self) -> int:
        return len(self.num_tokens)

    def subsample(self, max_rows: int, seed: int) -> LoadSource:
        """At most max_rows rows, drawn without replacement (in log order)."""
        if len(self) <= max_rows:
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self), max_rows, replace=False))
        return LoadSource(
            self.name,
            self.origin,
            self.top_k,
            self.run[keep],
            self.layer[keep],
            self.step[keep],
            self.num_tokens[keep],
            self.loads[keep],
        )

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "origin": self.origin,
            "top_k": self.top_k,
            "num_experts": self.num_experts,
            "run": self.run.tolist(),
            "layer": self.layer.tolist(),
            "step": self.step.tolist(),
            "num_tokens": self.num_tokens.tolist(),
            "loads": self.loads.tolist(),
        }


def _from_blocks(name: str, origin: Path, top_k: int, parts: list[tuple[str, np.ndarray]]):
    blocks = [block for _, block in parts]
    cat = np.concatenate(blocks)
    runs = np.concatenate([np.full(len(block), run, dtype=object) for run, block in parts])
    return LoadSource(
        name,
        str(origin),
        top_k,
        runs.astype(str),
        cat["layer"].astype(np.int64),
        cat["step"].astype(np.int64),
        cat["num_tokens"].astype(np.int64),
        cat["counts"].astype(np.float64),
    )


def _routing_logs(name: str, path: Path, files: list[Path]) -> LoadSource:
    parts: list[tuple[str, np.ndarray]] = []
    top_k: int | None = None
    width: int | None = None
    for file in files:
        log = RoutingLog(file)
        if top_k is None:
            top_k, width = log.header.top_k, log.header.num_experts
        if (log.header.top_k, log.header.num_experts) != (top_k, width):
            raise ArtifactError(
                f"top-{log.header.top_k} of {log.header.num_experts} experts, the other logs "
                f"have top-{top_k} of {width}",
                path=file,
            )
        run = file.relative_to(path).as_posix() if file != path else file.name
        parts += [(run, block) for block in routing_blocks(log)]
    if not parts or top_k is None:
        raise ArtifactError("routing logs hold no records", path=path)
    return _from_blocks(name, path, top_k, parts)


def _gate_logs(name: str, path: Path, top_k: int) -> LoadSource:
    parts = []
    for run_dir in find_gate_log_runs(path):
        run = read_gate_log_run(run_dir)
        parts += [(run_dir.name, block) for block in run.blocks]
    return _from_blocks(name, path, top_k, parts)


def fingerprint(path: Path) -> str:
    """A replay source's identity for the stages' freshness check: names, sizes and mtimes of
    the files under path (cheap; logs can be large)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    listing = [
        (str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files
    ]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def replay_specs(
    replay: list[str] | None, layout: RunLayout, *, study: str | None = None
) -> list[str]:
    """Explicit --replay specs, else this run's bench routing logs and, with a study folder,
    the study's gate logs found there."""
    if replay is not None:
        return list(replay)
    specs = []
    if layout.has_routing_logs():
        specs.append(f"ours={layout.stage('bench')}")
    if study:
        for name, sub in STUDY_GATE_LOGS.items():
            if (Path(study) / sub).is_dir():
                specs.append(f"{name}={Path(study) / sub}")
    return specs


def read_loads_file(path: Path) -> list[LoadSource]:
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtifactError(f"not a {FORMAT} file", path=path)
    sources = []
    for i, item in enumerate(data.get("sources") or []):
        try:
            loads = np.asarray(item["loads"], dtype=np.float64)
            sources.append(
                LoadSource(
                    str(item["name"]),
                    str(item["origin"]),
                    int(item["top_k"]),
                    np.asarray(item["run"], dtype=str),
                    np.asarray(item["layer"], dtype=np.int64),
                    np.asarray(item["step"], dtype=np.int64),
                    np.asarray(item["num_tokens"], dtype=np.int64),
                    loads.reshape(len(item["num_tokens"]), -1),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"bad source entry: {exc}", path=path, where=f"sources[{i}]"
            ) from None
    if not sources:
        raise ArtifactError("holds no sources", path=path)
    return sources


def write_loads_file(path: Path, sources: list[LoadSource]) -> None:
    atomic_write_json(
        path,
        {"format": FORMAT, "version": VERSION, "sources": [s.to_json() for s in sources]},
    )


def read_sources(spec: str, *, top_k: int = 2) -> list[LoadSource]:
    """`[NAME=]PATH` -> its sources (a loads file keeps its own names unless NAME is given).

    top_k applies to gate logs, which do not record it.
    """
    name, sep, text = spec.partition("=")
    if not sep:
        name, text = "", spec
    path = Path(text)
    if not path.exists():
        raise ArtifactError("no such file or folder", path=path)
    if path.is_file() and path.suffix == ".json":
        sources = read_loads_file(path)
        if name:
            for source in sources:
                source.name = name if len(sources) == 1 else f"{name}/{source.name}"
        return sources
    name = name or path.name
    if path.is_file():
        return [_routing_logs(name, path, [path])]
    routing = sorted(path.rglob("*.routing"))
    if routing:
        return [_routing_logs(name, path, routing)]
    return [_gate_logs(name, path, top_k)]


def save_sources(path: Path, sources: list[LoadSource]) -> None:
    """Write the loads file and say what is in it."""
    write_loads_file(path, sources)
    for s in sources:
        console.print(
            f"{s.name}: {len(s)} rows, top-{s.top_k} of {s.num_experts} experts, "
            f"tokens per row {int(s.num_tokens.min())}..{int(s.num_tokens.max())}"
        )
    console.print(f"wrote {path}")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="[NAME=]PATH",
        help="a moe-routing log, a folder of them (e.g. runs/<profile>/bench), a gate-log run "
        "or folder of runs, or a loads file",
    )
    parser.add_argument("--out", type=Path, required=True, help="the loads file to write")
    parser.add_argument("--top-k", type=int, default=2, help="gate logs: experts per token")
    parser.add_argument(
        "--max-rows",
        type=int,
        default=None,
        help="keep at most this many rows per source (a seeded draw), to keep the file small",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-rows draw")


def run_tool(args: argparse.Namespace) -> int:
    sources = [s for spec in args.sources for s in read_sources(spec, top_k=args.top_k)]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ArtifactError(f"source names repeat ({', '.join(names)}); name them NAME=PATH")
    if args.max_rows is not None:
        sources = [s.subsample(args.max_rows, args.seed) for s in sources]
    save_sources(args.out, sources)
    return 0
