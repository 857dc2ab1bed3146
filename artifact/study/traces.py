"""The study's trace directories: `trace_collection/<Model>-<engine>-<Platform>[<mode>_<max_seqs>_
<batch_tokens>[_eplbon|_eplboff]]-<group>/`, with `results_json/`, `logs/` and a workload card.

The directory name is the configuration a trace claims; `parse_trace_name` is its one reader.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

TRACE_NAME = re.compile(
    r"^(?P<model>[^-\[\]]+)-(?P<engine>[^-\[\]]+)-(?P<platform>[^-\[\]]+)"
    r"\[(?P<mode>[A-Za-z0-9]+)_(?P<max_num_seqs>\d+)_(?P<max_num_batched_tokens>\d+)"
    r"(?:_(?P<eplb>eplbon|eplboff))?\]-(?P<group>.+)$"
)
# The engine part: vLLM tensor parallel (TP) or expert parallel (EP) over <size> GPUs.
VLLM_ENGINE = re.compile(r"^vllm(?P<parallel>TP|EP)(?P<size>\d+)$")


def parse_trace_name(name: str) -> dict[str, Any] | None:
    """Configuration encoded in an original trace directory's name, or None."""
    m = TRACE_NAME.match(name)
    if not m:
        return None
    eplb = m.group("eplb")
    return {
        "model": m.group("model"),
        "engine": m.group("engine"),
        "platform": m.group("platform"),
        "mode": m.group("mode"),
        "max_num_seqs": int(m.group("max_num_seqs")),
        "max_num_batched_tokens": int(m.group("max_num_batched_tokens")),
        "eplb": None if eplb is None else eplb == "eplbon",
        "group": m.group("group"),
    }


def vllm_parallel(engine: str) -> tuple[bool, int] | None:
    """(expert parallel, GPUs) of a trace name's engine part (`vllmEP4`), None if not vLLM's."""
    m = VLLM_ENGINE.match(engine)
    return None if m is None else (m.group("parallel") == "EP", int(m.group("size")))


def trace_card(trace: Path) -> Path | None:
    """The workload card of a trace directory: the one named after it, else the first."""
    cards = sorted([*trace.glob("*.yaml"), *trace.glob("*.yml")])
    own = [card for card in cards if card.stem == trace.name]
    return (own or cards)[0] if cards else None


def trace_dir_of_log(log: Path) -> Path:
    """`<trace>/logs/x.log` -> `<trace>`."""
    return log.parent.parent if log.parent.name == "logs" else log.parent
