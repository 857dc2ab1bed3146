"""Routing logs: per forward pass, per MoE layer, how many tokens each expert received.

Format `moe-routing` v1, one file per run (`*.routing`), appendable and readable after a
crash:

- line 1: a JSON header ending in a newline: format, version, num_experts, top_k, num_layers,
  layer_names, rank, world_size, expert_map (local -> global expert ids of this rank; null
  when the rank holds all experts), source (what wrote it), and free-form `meta`;
- then fixed-size little-endian records (see `record_dtype`), one per (step, layer, phase):
  step (engine forward pass, int64), layer (int16), rank (int16), phase (uint8: 0 prefill,
  1 decode, 2 unknown), num_tokens (int32: tokens of that phase in that pass), counts
  (int32[num_experts]: top-k assignments per global expert; sums to top_k * num_tokens).

A pass that mixes prefill and decode tokens (continuous batching) writes two records with
the same step, one per phase, so prompt and generated tokens stay separable. Records are
flushed once per step; a crash can only cut the last record, which readers drop and report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from artifact.core.errors import ArtifactError

FORMAT = "moe-routing"
VERSION = 1
PHASES = ("prefill", "decode", "unknown")
PHASE_CODE = {name: code for code, name in enumerate(PHASES)}
DEFAULT_CHUNK_RECORDS = 1 << 16


def record_dtype(num_experts: int) -> np.dtype:
    return np.dtype(
        [
            ("step", "<i8"),
            ("layer", "<i2"),
            ("rank", "<i2"),
            ("phase", "u1"),
            ("_pad", "V3"),
            ("num_tokens", "<i4"),
            ("counts", "<i4", (num_experts,)),
        ]
    )


@dataclass(frozen=True)
class RoutingHeader:
    num_experts: int
    top_k: int
    num_layers: int
    layer_names: tuple[str, ...] = ()
    rank: int = 0
    world_size: int = 1
    expert_map: tuple[int, ...] | None = None
    source: str = ""
    meta: dict | None = None

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "num_layers": self.num_layers,
            "layer_names": list(self.layer_names),
            "rank": self.rank,
            "world_size": self.world_size,
            "expert_map": list(self.expert_map) if self.expert_map is not None else None,
            "source": self.source,
            "meta": self.meta or {},
        }

    @classmethod
    def from_json(cls, data: dict, path: Path) -> RoutingHeader:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ArtifactError(
                f"not a {FORMAT} v{VERSION} file (header says "
                f"{data.get('format')!r} v{data.get('version')!r})",
                path=path,
            )
        try:
            return cls(
                num_experts=int(data["num_experts"]),
                top_k=int(data["top_k"]),
                num_layers=int(data["num_layers"]),
                layer_names=tuple(data.get("layer_names") or ()),
                rank=int(data.get("rank", 0)),
                world_size=int(data.get("world_size", 1)),
                expert_map=tuple(data["expert_map"]) if data.get("expert_map") else None,
                source=str(data.get("source", "")),
                meta=data.get("meta") or None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"routing header is missing or has a bad field: {exc}", path=path
            ) from None


class RoutingWriter:
    """Appends records; call `write_step` once per forward pass (flushes)."""

    def __init__(self, path: str | Path, header: RoutingHeader, fsync_every: int = 0):
        self.path = Path(path)
        self.header = header
        self.dtype = record_dtype(header.num_experts)
        self.fsync_every = fsync_every
        self._steps = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._fh.write(json.dumps(header.to_json(), sort_keys=True).encode() + b"\n")
        self._fh.flush()

    def write_step(self, rows: list[tuple[int, int, int, int, np.ndarray]]) -> None:
        """rows: (step, layer, phase_code, num_tokens, counts[num_experts]) for one pass."""
        if not rows:
            return
        block = np.zeros(len(rows), dtype=self.dtype)
        # by column: the capture writes every step of a timed run (a row loop took ~4 us a row)
        steps, layers, phases, num_tokens, counts = zip(*rows, strict=True)
        block["step"] = steps
        block["layer"] = layers
        block["rank"] = self.header.rank
        block["phase"] = phases
        block["num_tokens"] = num_tokens
        block["counts"] = counts
        self._fh.write(block.tobytes())
        self._fh.flush()
        self._steps += 1
        if self.fsync_every and self._steps % self.fsync_every == 0:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> RoutingWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RoutingLog:
    """Reader: header plus records in chunks (memory bounded by the chunk, not the file)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                line = fh.readline()
                self.data_offset = fh.tell()
        except FileNotFoundError:
            raise ArtifactError("routing log not found", path=self.path) from None
        if not line.endswith(b"\n"):
            raise ArtifactError(
                "routing log has no complete header line (empty or cut)", path=self.path
            )
        try:
            header = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"routing header is not JSON: {exc.msg}", path=self.path) from None
        self.header = RoutingHeader.from_json(header, self.path)
        self.dtype = record_dtype(self.header.num_experts)
        payload = self.path.stat().st_size - self.data_offset
        self.num_records, self.trailing_bytes = divmod(payload, self.dtype.itemsize)

    @property
    def truncated(self) -> bool:
        """True when the writer died mid-record; the partial record is ignored."""
        return self.trailing_bytes != 0

    def chunks(self, chunk_records: int = DEFAULT_CHUNK_RECORDS) -> Iterator[np.ndarray]:
        with open(self.path, "rb") as fh:
            fh.seek(self.data_offset)
            remaining = self.num_records
            while remaining:
                n = min(chunk_records, remaining)
                block = np.fromfile(fh, dtype=self.dtype, count=n)
                if block.size != n:
                    raise ArtifactError("routing log changed while it was read", path=self.path)
                remaining -= n
                yield block

    def read_all(self) -> np.ndarray:
        parts = list(self.chunks())
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)


def odd_header(logs: list[RoutingLog], fields: tuple[str, ...]) -> RoutingLog | None:
    """The first log whose header differs from the first log's in one of `fields`, or None."""
    want = [getattr(logs[0].header, name) for name in fields]
    return next((log for log in logs[1:] if [getattr(log.header, n) for n in fields] != want), None)


def layer_totals(path: str | Path, phase: str | None = None) -> np.ndarray:
    """Expert counts summed over all steps, per layer: int64[num_layers, num_experts]
    (one phase only when `phase` is given)."""
    log = RoutingLog(path)
    totals = np.zeros((log.header.num_layers, log.header.num_experts), dtype=np.int64)
    for chunk in log.chunks():
        if phase is not None:
            chunk = chunk[chunk["phase"] == PHASE_CODE[phase]]
        np.add.at(totals, chunk["layer"], chunk["counts"])
    return totals
