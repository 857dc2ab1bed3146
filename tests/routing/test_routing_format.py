"""The moe-routing v1 file: round trip, chunked reads, a crash-cut last record."""

import numpy as np
import pytest

from artifact.core.errors import ArtifactError
from artifact.routing.format import PHASE_CODE, RoutingHeader, RoutingLog, RoutingWriter


def _write(path, steps=5):
    header = RoutingHeader(
        num_experts=8, top_k=2, num_layers=2, layer_names=("l0", "l1"), source="test"
    )
    with RoutingWriter(path, header) as writer:
        for step in range(steps):
            rows = []
            for layer in range(2):
                counts = np.zeros(8, dtype=np.int64)
                counts[[step % 8, (step + layer + 1) % 8]] = 3
                rows.append((step, layer, PHASE_CODE["decode"], 3, counts))
            writer.write_step(rows)
    return header


def test_round_trip_and_chunks(tmp_path):
    path = tmp_path / "run.routing"
    header = _write(path)
    log = RoutingLog(path)
    assert log.header == header and log.num_records == 10 and not log.truncated
    records = log.read_all()
    assert (records["counts"].sum(axis=1) == 2 * records["num_tokens"]).all()
    assert [len(c) for c in log.chunks(chunk_records=4)] == [4, 4, 2]


def test_crash_cut_record_is_dropped_and_reported(tmp_path):
    path = tmp_path / "run.routing"
    _write(path)
    with open(path, "ab") as fh:
        fh.write(b"\x01" * 7)  # a record cut by a crash
    log = RoutingLog(path)
    assert log.truncated and log.num_records == 10


def test_bad_headers(tmp_path):
    empty = tmp_path / "empty.routing"
    empty.write_bytes(b"")
    with pytest.raises(ArtifactError, match="no complete header line"):
        RoutingLog(empty)
    other = tmp_path / "other.routing"
    other.write_bytes(b'{"format": "something"}\n')
    with pytest.raises(ArtifactError, match="not a moe-routing v1 file"):
        RoutingLog(other)
