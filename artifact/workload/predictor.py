"""ImbalancePredictor: a workload's predicted expert-load imbalance score, from its prompts alone.

The formula is the original study's, kept exactly so its dataset scores reproduce:

- T: the Mixtral token ids of every prompt (no special tokens), concatenated; V: the distinct
  ids; c_i: their counts.
- repetition = 1 - |V|/|T|; top-10 concentration = (sum of the 10 largest c_i)/|T|;
  inverse diversity = 1 - |V|/|T| (the study weighs this quantity twice under two names);
  inverse normalized entropy = 1 - H/log2(max(|V|, 2)), H the Shannon entropy (bits) of c/|T|;
  Gini of the ascending counts f_1..f_n = 2*sum(i*f_i)/(n*sum f) - (n+1)/n;
  bigram concentration = (sum of the 10 largest counts of consecutive id pairs)/(|T|-1);
  semantic similarity = (s+1)/2 with s the mean pairwise cosine of TF-IDF vectors of the texts.
- score = sum(w_k * x_k) / sum(w_k) over the features that could be computed, clamped to [0, 1].
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from artifact.core.errors import ArtifactError
from artifact.core.io import read_jsonl
from artifact.routing.measures import gini

# (feature name, weight), in the formula's order.
FEATURE_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("repetition", 0.25),
    ("top10_concentration", 0.20),
    ("inverse_diversity", 0.15),
    ("inverse_entropy", 0.10),
    ("gini", 0.10),
    ("bigram_concentration", 0.10),
    ("semantic_similarity", 0.10),
)
TOP_K = 10
SHORT_NAMES = {
    "repetition": "rep",
    "top10_concentration": "top10",
    "inverse_diversity": "inv_div",
    "inverse_entropy": "inv_ent",
    "gini": "gini",
    "bigram_concentration": "bigram",
    "semantic_similarity": "semantic",
}


@dataclass
class Prediction:
    score: float
    # Feature values in [0, 1] (None when a feature could not be computed).
    components: dict[str, float | None]
    raw_metrics: dict[str, float | int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"score": self.score, "components": self.components, "raw_metrics": self.raw_metrics}


def token_features(ids: list[int]) -> tuple[dict[str, float | None], dict[str, float | int]]:
    """The six token-stream features of one concatenated id stream."""
    n = len(ids)
    if n == 0:
        raise ValueError("no tokens")
    counter = Counter(ids)
    vocab = len(counter)
    counts = np.fromiter(counter.values(), dtype=np.float64, count=vocab)
    probs = counts / n
    entropy = float(-(probs * np.log2(probs)).sum())
    max_entropy = math.log2(max(vocab, 2))
    top = float(np.sort(counts)[::-1][:TOP_K].sum())
    features: dict[str, float | None] = {
        "repetition": 1.0 - vocab / n,
        "top10_concentration": top / n,
        "inverse_diversity": 1.0 - vocab / n,
        "inverse_entropy": 1.0 - entropy / max_entropy,
        "gini": float(gini(counts)),
        "bigram_concentration": None,
    }
    raw: dict[str, float | int] = {
        "num_tokens": n,
        "unique_tokens": vocab,
        "entropy_bits": entropy,
        "max_entropy_bits": max_entropy,
        "top10_tokens": int(top),
    }
    if n >= 2:
        bigrams = Counter(pairwise(ids))
        top_bigrams = sorted(bigrams.values(), reverse=True)[:TOP_K]
        features["bigram_concentration"] = sum(top_bigrams) / (n - 1)
        raw["unique_bigrams"] = len(bigrams)
    return features, raw


def semantic_similarity(texts: list[str]) -> float | None:
    """(s+1)/2 for s the mean pairwise TF-IDF cosine; None with <2 texts or no vocabulary."""
    if len(texts) < 2:
        return None
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(max_features=1000, stop_words="english", ngram_range=(1, 2))
    try:
        matrix = vectorizer.fit_transform(texts)
    except ValueError:  # empty vocabulary: only stop words or no words at all
        return None
    # Rows are L2-normalised, so the Gram matrix holds the cosines.
    gram = (matrix @ matrix.T).toarray()
    upper = np.triu_indices(len(texts), k=1)
    mean_cos = float(gram[upper].mean())
    return (mean_cos + 1.0) / 2.0


class ImbalancePredictor:
    """Scores a list of prompt texts; see the module docstring for the formula."""

    def __init__(self, semantic: bool = True):
        self.semantic = semantic

    def predict(self, texts: list[str]) -> Prediction:
        from artifact.workload.tokenizer import encode_batch

        stream: list[int] = []
        for ids in encode_batch(texts):
            stream.extend(ids)
        features, raw = token_features(stream)
        features["semantic_similarity"] = semantic_similarity(texts) if self.semantic else None
        weighted = total_weight = 0.0
        for name, weight in FEATURE_WEIGHTS:
            value = features[name]
            if value is not None:
                weighted += weight * value
                total_weight += weight
        raw["num_prompts"] = len(texts)
        raw["weight_used"] = total_weight
        score = min(1.0, max(0.0, weighted / total_weight))
        ordered = {name: features[name] for name, _ in FEATURE_WEIGHTS}
        return Prediction(score=score, components=ordered, raw_metrics=raw)

    def predict_file(self, path: str | Path) -> Prediction:
        records = read_jsonl(path, required=("text",))
        texts = []
        for lineno, rec in enumerate(records, start=1):
            if not isinstance(rec["text"], str):
                raise ArtifactError("'text' must be a string", path=path, where=str(lineno))
            texts.append(rec["text"])
        try:
            return self.predict(texts)
        except ValueError as exc:
            raise ArtifactError(f"cannot score: {exc} (every prompt is empty)", path=path) from None


# --- CLI tool: moe-artifact predict -----------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of {file, score, components, raw_metrics}",
    )
    parser.add_argument(
        "--no-semantic", action="store_true", help="leave out the TF-IDF similarity feature"
    )


def run_tool(args: argparse.Namespace) -> int:
    from rich.table import Table

    from artifact.core.console import console

    predictor = ImbalancePredictor(semantic=not args.no_semantic)
    results = [(path, predictor.predict_file(path)) for path in args.files]
    if args.json:
        payload = [{"file": str(path), **pred.to_json()} for path, pred in results]
        print(json.dumps(payload, indent=2))
        return 0
    table = Table(title="Predicted imbalance")
    table.add_column("file", overflow="fold")
    table.add_column("score", justify="right")
    for name, _ in FEATURE_WEIGHTS:
        table.add_column(SHORT_NAMES[name], justify="right")
    for path, pred in results:
        cells = ["-" if v is None else f"{v:.4f}" for v in pred.components.values()]
        table.add_row(str(path), f"{pred.score:.4f}", *cells)
    console.print(table)
    return 0
