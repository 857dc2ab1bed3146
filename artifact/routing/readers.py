"""Reading our routing logs (`moe-routing` v1) as checked *blocks*, and `Skipped` entries.

A block is a numpy structured array with the fields step, layer, rank, phase (codes of
`artifact.routing.format.PHASES`), num_tokens and counts (E loads per row), one row per
(step, layer, rank, phase). The original study's gate logs are read into the same blocks by
`artifact.study.gate_logs`. With `skip_bad`, a bad input is left out and returned as a
`Skipped` entry so the caller can report it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artifact.core.errors import ArtifactError
from artifact.routing.format import DEFAULT_CHUNK_RECORDS, PHASES, RoutingLog


@dataclass(frozen=True)
class Skipped:
    """Input left out under --skip-bad (or a crash-cut record dropped), and why."""

    path: str
    reason: str

    @classmethod
    def from_error(cls, exc: ArtifactError, path: str | Path) -> Skipped:
        """The error's own file (else `path`) and its message without the file prefix."""
        where = f"{exc.where}: " if exc.where else ""
        return cls(exc.path or str(path), where + exc.detail)

    def to_json(self) -> dict:
        return {"path": self.path, "reason": self.reason}


def check_routing_block(block: np.ndarray, log: RoutingLog, first_record: int) -> None:
    """Records a writer cannot produce: a layer outside the header's, an unknown phase,
    negative counts or token counts."""
    problems = (
        (block["layer"] < 0) | (block["layer"] >= log.header.num_layers),
        block["phase"] >= len(PHASES),
        block["num_tokens"] < 0,
        (block["counts"] < 0).any(axis=1),
    )
    what = (
        f"layer outside 0..{log.header.num_layers - 1}",
        "unknown phase code",
        "negative num_tokens",
        "negative expert count",
    )
    for mask, text in zip(problems, what, strict=True):
        if mask.any():
            index = first_record + int(np.argmax(mask))
            raise ArtifactError(f"corrupt record: {text}", path=log.path, where=f"record {index}")


def routing_blocks(
    log: RoutingLog, chunk_records: int = DEFAULT_CHUNK_RECORDS
) -> Iterator[np.ndarray]:
    """The log's records in checked chunks (memory bounded by the chunk)."""
    first = 0
    for block in log.chunks(chunk_records):
        check_routing_block(block, log, first)
        first += len(block)
        yield block
