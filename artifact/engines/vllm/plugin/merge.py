"""Merge the per-rank routing logs of one capture into one moe-routing file.

Each rank wrote `<path>.rank<R>` (records carry their rank) and `<path>.rank<R>.done` (its
stats). Ranks of a data-parallel run record disjoint token slices, so the merged file holds
every real token once; summing records by (step, layer) adds the ranks up. The merged header
keeps each rank's expert map and stats under `meta.ranks`. Rank files are removed after a
successful merge (readers that glob `*.routing` must not count them twice).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from artifact.core.errors import ArtifactError
from artifact.core.io import atomic_open
from artifact.routing.format import PHASE_CODE, RoutingHeader, RoutingLog, odd_header

RANK_FILE = re.compile(r"\.rank(\d+)$")


def rank_log_paths(path: Path) -> list[Path]:
    ranks = {}
    for p in path.parent.glob(f"{path.name}.rank*"):
        if match := RANK_FILE.search(p.name):
            ranks[p] = int(match.group(1))
    return sorted(ranks, key=ranks.__getitem__)


def missing_routing(per_rank: list[dict]) -> str | None:
    """Why a capture cannot be trusted: a rank whose real steps ran MoE layers that gave the
    hooks no routing (None when every rank recorded what it ran)."""
    for rank in per_rank:
        unrouted = rank.get("unrouted_layer_calls") or {}
        real_steps = int(rank.get("steps", 0)) - int(rank.get("dummy_steps", 0))
        if not unrouted and (rank.get("steps_written", 0) or real_steps <= 0):
            continue
        kinds = ", ".join(
            f"{kind} ({calls} calls)" for kind, calls in sorted(unrouted.items())
        ) or ", ".join(rank.get("layer_types") or ["no MoE layer found"])
        return (
            f"rank {rank.get('rank', '?')} ran {real_steps} steps but its MoE layers gave no "
            f"routing: {kinds} called neither FusedMoE.select_experts nor received router "
            "logits the plugin could read (a vLLM MoE path the plugin does not know)"
        )
    return None


def merge_rank_logs(path: Path, rank_files: list[Path] | None = None) -> dict:
    """Write `path` from its rank files; return capture stats (steps, tokens, ranks)."""
    path = Path(path)
    rank_files = rank_files if rank_files is not None else rank_log_paths(path)
    if not rank_files:
        raise ArtifactError("no rank routing logs to merge", path=path)
    logs = [RoutingLog(p) for p in rank_files]
    first = logs[0].header
    if odd := odd_header(logs, ("num_experts", "top_k", "layer_names")):
        raise ArtifactError(
            f"rank logs disagree on experts/top-k/layers with {rank_files[0].name}",
            path=odd.path,
        )
    ranks = []
    for log, rank_file in zip(logs, rank_files, strict=True):
        done = rank_file.with_name(rank_file.name + ".done")
        stats = json.loads(done.read_text()) if done.exists() else {}
        ranks.append(
            {
                "rank": log.header.rank,
                "expert_map": list(log.header.expert_map) if log.header.expert_map else None,
                "records": log.num_records,
                "truncated": log.truncated,
                **stats,
            }
        )
    meta = dict(first.meta or {})
    for key in ("dp_rank", "tp_rank"):
        meta.pop(key, None)
    meta["ranks"] = ranks
    header = RoutingHeader(
        num_experts=first.num_experts,
        top_k=first.top_k,
        num_layers=first.num_layers,
        layer_names=first.layer_names,
        rank=0,
        world_size=max(len(logs), first.world_size),
        expert_map=None,
        source=f"{first.source}, {len(logs)} rank log(s) merged",
        meta=meta,
    )
    tokens = {"prefill": 0, "decode": 0, "unknown": 0}
    steps = 0
    with atomic_open(path, "wb") as fh:
        fh.write(json.dumps(header.to_json(), sort_keys=True).encode() + b"\n")
        for log in logs:
            for block in log.chunks():
                fh.write(block.tobytes())
                first_layer = block[block["layer"] == 0]
                for name, code in PHASE_CODE.items():
                    in_phase = first_layer["phase"] == code
                    tokens[name] += int(first_layer["num_tokens"][in_phase].sum())
                if block.size:
                    steps = max(steps, int(np.max(block["step"])) + 1)
    for rank_file in rank_files:
        rank_file.unlink(missing_ok=True)
        rank_file.with_name(rank_file.name + ".done").unlink(missing_ok=True)
    return {"steps": steps, "ranks": len(logs), "tokens": tokens, "per_rank": ranks}
