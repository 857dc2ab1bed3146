"""Workload datasets for the imbalance experiment: families of prompt sets over a domain corpus.

Every dataset is a list of prompts `{"id", "text", "category"}` (category = the prompt's
domain) drawn from the package's own query corpus (`data/domain_queries.json`, 25 domains).
Families, each fully determined by (seed, family, parameter):

- repetition:    a fraction p of the prompts are one repeated query, the rest natural mixed
                 text: from natural text (p=0) to identical prompts (p=1);
- semantic:      one domain, a few, many, or all 25 uniformly;
- structure:     every prompt wraps a query in one of k shared templates (boilerplate that
                 repeats across prompts), k and the boilerplate length varied;
- concentration: a fraction q of the prompts from one dominant domain, the rest uniform;
- mixture:       a random number of domains with Dirichlet weights.

The suite is built by scoring a dense pool of candidates with the ImbalancePredictor and
picking, for evenly spaced target scores, the nearest unused candidate, so the selected
scores cover the reachable range evenly.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from artifact.core.errors import ArtifactError

CORPUS_FILE = "domain_queries.json"

# Shared boilerplate for the structure family: short to long, so the repeated share varies.
TEMPLATES = (
    "Question: {q}",
    "Please answer briefly. {q}",
    "You are a helpful assistant. Answer the following question clearly. {q}",
    "Task: answer the user's question.\nUser question: {q}\nAnswer in three short paragraphs.",
    "Read the question below and give a step-by-step answer with an example at the end.\n"
    "Question: {q}\nFormat: numbered steps, then one example.",
    "System: you are an expert tutor who explains things simply and accurately.\n"
    "Instructions: answer the question, define every technical term you use, keep it under "
    "two hundred words, and end with a one-sentence summary.\nQuestion: {q}\nAnswer:",
)


@functools.lru_cache(maxsize=1)
def load_corpus() -> dict[str, tuple[str, ...]]:
    """Domain -> queries, from the package data."""
    path = resources.files("artifact") / "data" / CORPUS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        domains = data["domains"]
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"cannot read the query corpus: {exc}", path=str(path)) from None
    return {name: tuple(queries) for name, queries in domains.items()}


@dataclass(frozen=True)
class Spec:
    """One candidate dataset: a family, its parameters, and its own seed."""

    family: str
    params: dict = field(default_factory=dict)
    seed: int = 0

    @property
    def strategy(self) -> str:
        parts = [self.family]
        for key, value in self.params.items():
            parts.append(f"{key}{value:g}" if isinstance(value, float) else f"{key}{value}")
        return "_".join(str(p) for p in parts)


def _rng(spec: Spec) -> np.random.Generator:
    return np.random.default_rng(spec.seed)


def _draw(rng: np.random.Generator, corpus, domains: list[str], weights, n: int):
    """n distinct (domain, query) pairs, domains drawn by weight, queries without replacement."""
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights / weights.sum()
    picks = rng.choice(len(domains), size=n, p=weights)
    used: dict[str, set[int]] = {d: set() for d in domains}
    out = []
    for di in picks:
        domain = domains[di]
        pool = [i for i in range(len(corpus[domain])) if i not in used[domain]]
        if not pool:  # domain exhausted: take from the least used other domain
            domain = min(domains, key=lambda d: len(used[d]))
            pool = [i for i in range(len(corpus[domain])) if i not in used[domain]]
        qi = int(rng.choice(pool))
        used[domain].add(qi)
        out.append((domain, corpus[domain][qi]))
    return out


def build(spec: Spec, n: int) -> list[dict]:
    """The prompts of one dataset."""
    corpus = load_corpus()
    all_domains = sorted(corpus)
    rng = _rng(spec)
    p = spec.params
    if spec.family == "repetition":
        repeated = round(p["p"] * n)
        base = _draw(rng, corpus, all_domains, np.ones(len(all_domains)), n)
        pairs = [base[0]] * repeated + base[repeated:]
    elif spec.family == "semantic":
        chosen = [all_domains[i] for i in rng.choice(len(all_domains), p["domains"], replace=False)]
        pairs = _draw(rng, corpus, chosen, np.ones(len(chosen)), n)
    elif spec.family == "structure":
        templates = TEMPLATES[p["length"] : p["length"] + p["templates"]]
        raw = _draw(rng, corpus, all_domains, np.ones(len(all_domains)), n)
        pairs = [(d, templates[i % len(templates)].format(q=q)) for i, (d, q) in enumerate(raw)]
    elif spec.family == "concentration":
        dominant = all_domains[p["domain"] % len(all_domains)]
        others = [d for d in all_domains if d != dominant]
        shares = [p["q"]] + [(1 - p["q"]) / len(others)] * len(others)
        pairs = _draw(rng, corpus, [dominant, *others], shares, n)
    elif spec.family == "mixture":
        k = int(rng.integers(2, len(all_domains) + 1))
        chosen = [all_domains[i] for i in rng.choice(len(all_domains), k, replace=False)]
        mix = rng.dirichlet(np.full(k, p["alpha"]))
        pairs = _draw(rng, corpus, chosen, mix + 1e-9, n)
    else:
        raise ArtifactError(f"unknown dataset family '{spec.family}'")
    return [
        {"id": f"{spec.strategy}_{i}", "text": text, "category": domain}
        for i, (domain, text) in enumerate(pairs)
    ]


# Fixed prompt sets and their seed streams: the config sweep's, the EPLB ablation's.
FIXED_PROMPT_STREAMS = {"sweep": 1, "eplb": 2}


def fixed_prompts(n: int, seed: int, name: str = "sweep") -> list[dict]:
    """A fixed prompt set (`sweep` or `eplb`): mixed domains, each wrapped in a template of
    rising length (so prompt lengths vary from a few to about a hundred tokens); each set
    draws from its own seed stream, ids `<name>_<i>`."""
    corpus = load_corpus()
    domains = sorted(corpus)
    rng = np.random.default_rng(np.random.SeedSequence([seed, FIXED_PROMPT_STREAMS[name]]))
    pairs = _draw(rng, corpus, domains, np.ones(len(domains)), n)
    return [
        {"id": f"{name}_{i}", "text": TEMPLATES[i % len(TEMPLATES)].format(q=q), "category": d}
        for i, (d, q) in enumerate(pairs)
    ]


def candidate_pool(seed: int) -> list[Spec]:
    """A dense, deterministic pool of candidates over every family."""
    ss = np.random.SeedSequence(seed)
    specs: list[Spec] = []
    for p in np.linspace(0.0, 1.0, 61):
        specs.append(Spec("repetition", {"p": round(float(p), 4)}))
    for k in (1, 2, 3, 5, 8, 12, 25):
        for rep in range(4):
            specs.append(Spec("semantic", {"domains": k, "rep": rep}))
    for length in range(len(TEMPLATES)):
        for k in (1, 2, 3):
            if length + k <= len(TEMPLATES):
                specs.append(Spec("structure", {"length": length, "templates": k}))
    for q in np.linspace(0.1, 1.0, 19):
        for domain in (0, 5, 10, 15, 20):
            specs.append(Spec("concentration", {"q": round(float(q), 2), "domain": domain}))
    for alpha in (0.1, 0.2, 0.5, 1.0, 3.0):
        for rep in range(6):
            specs.append(Spec("mixture", {"alpha": alpha, "rep": rep}))
    children = ss.spawn(len(specs))
    return [
        Spec(s.family, s.params, int(child.generate_state(1, dtype=np.uint64)[0]))
        for s, child in zip(specs, children, strict=True)
    ]


def select_even(scores: list[float], families: list[str], count: int) -> list[int]:
    """Indices of `count` candidates spread evenly over the reachable score range.

    For each of `count` evenly spaced target scores, take an unused candidate within half a
    spacing of the target, preferring the family used least so far (so every family is
    represented), else the nearest unused candidate.
    """
    values = np.asarray(scores, dtype=np.float64)
    if count >= len(values):
        return sorted(range(len(values)), key=lambda i: (scores[i], i))
    targets = np.linspace(values.min(), values.max(), count)
    half_spacing = (targets[1] - targets[0]) / 2 if count > 1 else np.inf
    used = np.zeros(len(values), dtype=bool)
    family_use: dict[str, int] = dict.fromkeys(families, 0)
    chosen: list[int] = []
    for target in targets:
        distance = np.abs(values - target)
        distance[used] = np.inf
        near = np.flatnonzero(distance <= half_spacing)
        if near.size:
            best = int(min(near, key=lambda i: (family_use[families[i]], distance[i], i)))
        else:
            best = int(np.argmin(distance))
        used[best] = True
        family_use[families[best]] += 1
        chosen.append(best)
    return sorted(chosen, key=lambda i: (scores[i], i))
