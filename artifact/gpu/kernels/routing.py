"""Routings for the MoE layer benchmark: top-k expert ids for T tokens (numpy, seeded).

- `balanced`: every expert gets k*T/E assignments exactly (the remainder, when E does not
  divide k*T, goes to experts spread over the index range, so contiguous EP ranks stay even);
- `uniform`: each token picks k distinct experts uniformly at random;
- `zipf-S`: each token draws k distinct experts without replacement with probability
  proportional to rank^-S over a random ranking of the experts (S = 0 is uniform); since a
  token cannot pick an expert twice, no expert gets more than T of the k*T assignments;
- `replay:NAME`: a logged step's expert loads (a `LoadSource` row drawn at random), scaled to
  T tokens by largest remainder, and realized exactly: the expert loads of the ids are those
  counts. At the step's own token count (`native`) the loads are used as logged.

Every routing hands each token k distinct experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from artifact.core.errors import ArtifactError
from artifact.gpu.kernels.loads import LoadSource


def spread_order(num_experts: int) -> np.ndarray:
    """Experts in van der Corput order (0, 4, 2, 6, 1, 5, 3, 7 for 8): consecutive entries are
    far apart, so any prefix is spread over every contiguous block of experts."""
    bits = max(1, (num_experts - 1).bit_length())
    keys = [int(f"{e:0{bits}b}"[::-1], 2) for e in range(num_experts)]
    return np.argsort(keys, kind="stable")


def scale_loads(loads: np.ndarray, tokens: int, top_k: int) -> np.ndarray:
    """Integer loads summing to top_k*tokens in the proportions of `loads`, none above tokens.

    Shares above 1/top_k are capped (a token holds an expert once) and the excess goes to
    the others in proportion; rounding is by largest remainder, ties to `spread_order`.
    """
    loads = np.asarray(loads, dtype=np.float64)
    num_experts = len(loads)
    if top_k > num_experts:
        raise ArtifactError(f"top-{top_k} routing needs at least {top_k} experts")
    target = float(top_k * tokens)
    share = loads / loads.sum()
    capped = np.zeros(num_experts, dtype=bool)
    while True:
        free = np.where(capped, 0.0, share)
        if free.sum() == 0:  # only zero-load experts left: they split the rest evenly
            free = np.where(capped, 0.0, 1.0)
        exact = np.where(capped, tokens, free * (target - tokens * capped.sum()) / free.sum())
        over = exact > tokens * (1 + 1e-12)
        if not over.any():
            break
        capped |= over
    counts = np.minimum(np.floor(exact), tokens).astype(np.int64)
    remainder = exact - counts
    rank = np.empty(num_experts, dtype=np.int64)
    rank[spread_order(num_experts)] = np.arange(num_experts)
    order = np.lexsort((rank, -remainder, counts >= tokens))
    counts[order[: round(target) - int(counts.sum())]] += 1
    return counts


def ids_from_loads(counts: np.ndarray, top_k: int, rng: np.random.Generator) -> np.ndarray:
    """(T, top_k) expert ids whose per-expert counts are exactly `counts` (sum top_k*T, each
    at most T), tokens and slots in random order.

    Assignments sorted by expert fill the slots column by column: token t gets entries t,
    t+T, ..., so an expert (a run of at most T entries) never lands twice on one token.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    tokens, rest = divmod(total, top_k)
    if rest or (counts > tokens).any() or (counts < 0).any():
        raise ArtifactError(
            f"expert loads {counts.tolist()} cannot be realized as top-{top_k} routing"
        )
    flat = np.repeat(np.arange(len(counts)), counts)
    ids = flat.reshape(top_k, tokens).T[rng.permutation(tokens)]
    return np.take_along_axis(ids, rng.random(ids.shape).argsort(axis=1), axis=1)


def routing_weights(tokens: int, top_k: int, rng: np.random.Generator) -> np.ndarray:
    """Positive per-token weights summing to 1 (Mixtral renormalizes its top-k)."""
    w = rng.random((tokens, top_k)) + 0.1
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class RoutingSpec:
    """One routing: kind in balanced|uniform|zipf|replay; exponent (zipf); source (replay)."""

    kind: str
    exponent: float = 0.0
    source: LoadSource | None = None

    @property
    def name(self) -> str:
        if self.kind == "zipf":
            return f"zipf-{self.exponent:g}"
        if self.kind == "replay":
            return f"replay:{self.replay_source.name}"
        return self.kind

    @property
    def replay_source(self) -> LoadSource:
        if self.source is None:
            raise ArtifactError(f"routing {self.kind!r} has no replay source")
        return self.source

    def draw(
        self, tokens: int, num_experts: int, top_k: int, rng: np.random.Generator
    ) -> np.ndarray:
        """(tokens, top_k) int64 expert ids."""
        if self.kind == "balanced":
            loads = np.ones(num_experts)
            return ids_from_loads(scale_loads(loads, tokens, top_k), top_k, rng)
        if self.kind == "uniform":
            return rng.random((tokens, num_experts)).argsort(axis=1)[:, :top_k]
        if self.kind == "zipf":
            p = np.arange(1, num_experts + 1, dtype=np.float64) ** -self.exponent
            logp = np.log(p[rng.permutation(num_experts)])
            keys = logp + rng.gumbel(size=(tokens, num_experts))
            return np.argsort(-keys, axis=1)[:, :top_k]
        if self.kind == "replay":
            return ids_from_loads(self.replay_loads(tokens, rng), top_k, rng)
        raise ArtifactError(f"unknown routing kind {self.kind!r}")

    def replay_loads(
        self, tokens: int, rng: np.random.Generator, row: int | None = None
    ) -> np.ndarray:
        """A logged step's loads (row, else a random row) scaled to `tokens`."""
        source = self.replay_source
        if row is None:
            row = int(rng.integers(len(source)))
        return scale_loads(source.loads[row], tokens, source.top_k)


def parse_routings(
    text: str, zipf: list[float], sources: list[LoadSource], num_experts: int, top_k: int
) -> list[RoutingSpec]:
    """balanced, uniform, zipf-S for each exponent, replay:NAME for each source.

    `text` is a comma list of kinds to keep (balanced,uniform,zipf,replay) or `all`.
    """
    kinds = ("balanced", "uniform", "zipf", "replay")
    wanted = kinds if text == "all" else tuple(k.strip() for k in text.split(","))
    bad = [k for k in wanted if k not in kinds]
    if bad:
        raise ArtifactError(f"unknown routing {bad[0]!r}; choose from {', '.join(kinds)}, all")
    specs = [RoutingSpec(k) for k in ("balanced", "uniform") if k in wanted]
    if "zipf" in wanted:
        specs += [RoutingSpec("zipf", exponent=s) for s in zipf]
    if "replay" in wanted:
        for source in sources:
            if (source.num_experts, source.top_k) != (num_experts, top_k):
                raise ArtifactError(
                    f"replay source '{source.name}' is top-{source.top_k} of "
                    f"{source.num_experts} experts; the layer is top-{top_k} of {num_experts}",
                    path=source.origin,
                )
            specs.append(RoutingSpec("replay", source=source))
    return specs
