"""Expert placements for expert parallelism: which experts' weights each rank holds.

A `Placement` lists, per rank, its *slots*: the logical expert whose weights each slot holds.
An expert with slots on several ranks is replicated; its assignments are dealt round-robin
over its replicas (artifact.gpu.parallel.layer.deal), as evenly as whole assignments allow.
Two kinds (`PlacementSpec`):

- `linear`: vLLM's default, contiguous blocks of E/R experts per rank (the first E % R ranks
  one more; artifact.routing.measures.ExpertPlacement.contiguous); no replicas.
- `eplb[:N]`: the greedy algorithm of DeepSeek's EPLB, which vLLM's EPLB runs
  (`rebalance_experts`; for Mixtral, one expert group on one node, its steps reduce to
  `replicate_experts` then `balanced_packing`), over N redundant slots (default N = R, one
  per rank), computed from the expert loads of the batch it serves:
  1. replicate: N times, give one more replica to the expert with the highest load per
     replica;
  2. pack: take the E + N replicas, each carrying its expert's load / replica count, in
     descending load (ties: lower expert id first), and put each on the rank with the least
     load so far among those with a free slot (every rank has (E + N) / R slots; ties:
     lower rank first).
  Like the original, packing may put two replicas of an expert on one rank (they then
  split that rank's share of it); N = 0 only moves experts between ranks.

Computed from the loads of the very batch it runs, `eplb` is an oracle: the most any
placement of this kind can recover. vLLM's EPLB places from a window of past steps, so it
recovers at most this much, and less when the hot experts change from step to step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from artifact.core.errors import ArtifactError
from artifact.routing.measures import ExpertPlacement


@dataclass(frozen=True)
class Placement:
    """slots[r] = the logical experts of rank r's slots (one replica each)."""

    name: str
    slots: tuple[tuple[int, ...], ...]
    num_experts: int

    def __post_init__(self) -> None:
        held = [e for rank in self.slots for e in rank]
        bad = [e for e in held if not 0 <= e < self.num_experts]
        if bad:
            raise ArtifactError(f"placement {self.name}: expert {bad[0]} outside 0..E-1")
        missing = sorted(set(range(self.num_experts)) - set(held))
        if missing:
            raise ArtifactError(f"placement {self.name}: no rank holds expert {missing[0]}")

    @property
    def num_ranks(self) -> int:
        return len(self.slots)

    @property
    def num_slots(self) -> int:
        return sum(len(rank) for rank in self.slots)

    def describe(self) -> str:
        """Rank by rank, e.g. `0,1,2,3|4,5,6,7`."""
        return "|".join(",".join(map(str, rank)) for rank in self.slots)

    @cached_property
    def replica_counts(self) -> np.ndarray:
        """(E,) number of slots of each expert."""
        held = [e for rank in self.slots for e in rank]
        return np.bincount(held, minlength=self.num_experts)

    @cached_property
    def tables(self) -> dict[str, np.ndarray]:
        """Index tables over physical slots, numbered rank-major (rank 0's slots first):

        - `replica` (E, max replicas): the physical slot of each replica of each expert
          (ranks in ascending order; -1 past the expert's count);
        - `count` (E,): replicas per expert;
        - `rank`, `local` (P,): the rank that holds each physical slot and its index there.
        """
        counts = self.replica_counts
        replica = np.full((self.num_experts, int(counts.max())), -1, dtype=np.int64)
        filled = np.zeros(self.num_experts, dtype=np.int64)
        rank_of: list[int] = []
        local_of: list[int] = []
        for r, experts in enumerate(self.slots):
            for i, e in enumerate(experts):
                replica[e, filled[e]] = len(rank_of)
                filled[e] += 1
                rank_of.append(r)
                local_of.append(i)
        return {
            "replica": replica,
            "count": counts.astype(np.int64),
            "rank": np.asarray(rank_of, dtype=np.int64),
            "local": np.asarray(local_of, dtype=np.int64),
        }


def linear(num_experts: int, num_ranks: int) -> Placement:
    ranks = np.asarray(ExpertPlacement.contiguous(num_experts, num_ranks).rank_of_expert)
    slots = tuple(tuple(int(e) for e in np.flatnonzero(ranks == r)) for r in range(num_ranks))
    if any(not s for s in slots):
        raise ArtifactError(f"linear placement of {num_experts} experts leaves a rank empty")
    return Placement("linear", slots, num_experts)


def eplb(loads, num_ranks: int, redundant: int) -> Placement:
    """The greedy replicate-then-pack placement described in the module docstring."""
    loads = np.asarray(loads, dtype=np.float64)
    num_experts = len(loads)
    check_eplb(num_experts, num_ranks, redundant)
    per_rank = (num_experts + redundant) // num_ranks
    count = np.ones(num_experts, dtype=np.int64)
    for _ in range(redundant):
        count[int(np.argmax(loads / count))] += 1
    replicas = sorted(
        ((loads[e] / count[e], e) for e in range(num_experts) for _ in range(count[e])),
        key=lambda item: (-item[0], item[1]),
    )
    held: list[list[int]] = [[] for _ in range(num_ranks)]
    rank_load = np.zeros(num_ranks)
    for load, e in replicas:
        free = [r for r in range(num_ranks) if len(held[r]) < per_rank]
        r = min(free, key=lambda r: (rank_load[r], r))
        held[r].append(e)
        rank_load[r] += load
    return Placement(f"eplb:{redundant}", tuple(tuple(sorted(h)) for h in held), num_experts)


def check_eplb(num_experts: int, num_ranks: int, redundant: int) -> None:
    if redundant < 0 or (num_experts + redundant) % num_ranks:
        raise ArtifactError(
            f"eplb:{redundant}: experts + redundant slots ({num_experts} + {redundant}) must "
            f"divide evenly over {num_ranks} ranks"
        )


@dataclass(frozen=True)
class PlacementSpec:
    """`linear`, or `eplb` with `redundant` slots (built from each batch's expert loads)."""

    kind: str
    redundant: int = 0

    @property
    def name(self) -> str:
        return "linear" if self.kind == "linear" else f"eplb:{self.redundant}"

    def build(self, loads: np.ndarray, num_ranks: int) -> Placement:
        if self.kind == "linear":
            return linear(len(loads), num_ranks)
        return eplb(loads, num_ranks, self.redundant)


def parse_placements(text: str, num_experts: int, num_ranks: int) -> list[PlacementSpec]:
    """Comma list of `linear`, `eplb` (N = R redundant slots) or `eplb:N`."""
    specs = []
    for item in (part.strip() for part in text.split(",")):
        kind, _, count = item.partition(":")
        if kind == "linear" and not count:
            spec = PlacementSpec("linear")
            linear(num_experts, num_ranks)  # raises where a rank would hold no expert
        elif kind == "eplb":
            try:
                spec = PlacementSpec("eplb", int(count) if count else num_ranks)
            except ValueError:
                raise ArtifactError(f"placement {item!r}: expected eplb:N, N an integer") from None
            check_eplb(num_experts, num_ranks, spec.redundant)
        else:
            raise ArtifactError(f"unknown placement {item!r}; choose from linear, eplb, eplb:N")
        specs.append(spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ArtifactError(f"placements repeat: {text!r}")
    return specs
