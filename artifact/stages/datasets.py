"""Stage `datasets`: generate the imbalance workload suite and score it.

Writes `datasets/NNN_<score>.jsonl` (`{"id","text","category"}` per line, NNN in ascending
score order), `datasets/metadata.json` (seed, strategy, score, components, raw metrics and
content hash of each file), `datasets/sweep_prompts.jsonl` (the config sweep's fixed
prompts) and `datasets/eplb_prompts.jsonl` (the EPLB ablation's `prompts` fixed prompts,
drawn the same way from another seed stream). Deterministic: the same seed gives
byte-identical files.
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np

from artifact.core.console import track
from artifact.core.io import atomic_write_text, sha256_bytes, sha256_file
from artifact.core.records import DatasetEntry, DatasetMetadata, write_record
from artifact.core.runner import Stage, StageContext, StageOutcome
from artifact.workload.corpus import CORPUS_FILE, build, candidate_pool, fixed_prompts, select_even
from artifact.workload.predictor import FEATURE_WEIGHTS, ImbalancePredictor
from artifact.workload.tokenizer import tokenizer_path

GENERATOR_VERSION = 1


def dataset_filename(index: int, score: float) -> str:
    return f"{index:03d}_{score:.4f}.jsonl"


def to_jsonl(prompts: list[dict]) -> str:
    return "".join(
        json.dumps(
            {"id": p["id"], "text": p["text"], "category": p["category"]}, ensure_ascii=False
        )
        + "\n"
        for p in prompts
    )


class DatasetsStage(Stage):
    name = "datasets"
    # experiments: the sweep's and the ablation's prompt counts size their prompt files
    profile_sections = ("datasets", "experiments")

    def extra_inputs(self, ctx: StageContext) -> dict[str, str]:
        package = resources.files("artifact")
        code = b"".join(
            (package / rel).read_bytes()
            for rel in ("workload/corpus.py", "workload/predictor.py", "stages/datasets.py")
        )
        return {
            "corpus": sha256_bytes((package / "data" / CORPUS_FILE).read_bytes()),
            "generator_code": sha256_bytes(code),
            "tokenizer": sha256_file(tokenizer_path()),
        }

    def run(self, ctx: StageContext) -> StageOutcome:
        spec = ctx.profile.datasets
        layout = ctx.layout
        predictor = ImbalancePredictor()
        pool = candidate_pool(spec.seed)
        built, scored = [], []
        for cand in track(pool, "scoring candidate datasets"):
            prompts = build(cand, spec.prompts_per_dataset)
            built.append(prompts)
            scored.append(predictor.predict([p["text"] for p in prompts]))
        chosen = select_even([s.score for s in scored], [c.family for c in pool], spec.count)
        entries = []
        for index, ci in enumerate(chosen, start=1):
            prediction = scored[ci]
            filename = dataset_filename(index, prediction.score)
            text = to_jsonl(built[ci])
            target = layout.dataset(filename)
            if not (target.exists() and target.read_text(encoding="utf-8") == text):
                atomic_write_text(target, text)
            entries.append(
                DatasetEntry(
                    index=index,
                    file=filename,
                    family=pool[ci].family,
                    strategy=pool[ci].strategy,
                    params=pool[ci].params,
                    seed=pool[ci].seed,
                    n_samples=len(built[ci]),
                    score=prediction.score,
                    score_str=f"{prediction.score:.4f}",
                    components=prediction.components,
                    raw_metrics=prediction.raw_metrics,
                    sha256=sha256_bytes(text.encode("utf-8")),
                )
            )
        # Files of an earlier, different selection would confuse readers: remove them.
        keep = {e.file for e in entries}
        for stale in layout.dataset_files():
            if stale.name not in keep:
                stale.unlink()
        scores = np.array([e.score for e in entries])
        gaps = np.diff(scores) if len(scores) > 1 else np.array([0.0])
        metadata = DatasetMetadata(
            generator_version=GENERATOR_VERSION,
            seed=spec.seed,
            prompts_per_dataset=spec.prompts_per_dataset,
            n_datasets=len(entries),
            candidates_scored=len(pool),
            weights=dict(FEATURE_WEIGHTS),
            score_range=[float(scores.min()), float(scores.max())],
            score_span=float(scores.max() - scores.min()),
            max_gap=float(gaps.max()),
            score_mean=float(scores.mean()),
            score_std=float(scores.std()),
            datasets=entries,
        )
        write_record(layout.dataset_metadata, metadata)
        experiments = ctx.profile.experiments
        for exp, path, name in (
            (experiments.config_sweep, layout.sweep_prompts, "sweep"),
            (experiments.eplb_ablation, layout.eplb_prompts, "eplb"),
        ):
            if exp is not None and exp.enabled:
                atomic_write_text(path, to_jsonl(fixed_prompts(exp.prompts, spec.seed, name)))
        return StageOutcome(
            summary=(
                f"{len(entries)} datasets of {spec.prompts_per_dataset} prompts, scores "
                f"{scores.min():.3f}-{scores.max():.3f} (span {scores.max() - scores.min():.3f},"
                f" largest gap {gaps.max():.4f}), from {len(pool)} candidates"
            ),
            details={"score_span": metadata.score_span, "max_gap": metadata.max_gap},
        )


STAGE = DatasetsStage()
