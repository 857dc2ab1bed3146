"""Workload cards: the study's `*.yaml` description of a served configuration.

`read_card` is the one reader (a YAML mapping, or one error line naming the file); the
functions below pick the fields the tools use out of the mapping it returns.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from artifact.core.errors import ArtifactError

# "Baseline (Triton MoE)", "DefaultAll2All (FlashInfer MoE)" in a card's description.
CARD_MODE_CLAIM = re.compile(r"(?P<family>Baseline|DefaultAll2All)\s*\((?P<claim>[^)]*)\)", re.I)


def read_card(path: str | Path) -> dict[str, Any]:
    """The card as a mapping."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError("workload card not found", path=path) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{mark.line + 1}" if mark is not None else None
        raise ArtifactError(
            f"workload card is not valid YAML: {exc.problem}", path=path, where=where
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ArtifactError(f"cannot read the workload card: {exc}", path=path) from None
    if not isinstance(raw, dict):
        raise ArtifactError("workload card is not a YAML mapping", path=path)
    return raw


def _get(card: dict, *keys: str) -> Any:
    node: Any = card
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def card_fields(card: dict) -> dict[str, Any]:
    """The configuration a card states (fields it leaves out are left out)."""
    fields = {
        "moe": _get(card, "workload", "model", "moe"),
        "model_family": _get(card, "workload", "model", "model_family"),
        "max_num_seqs": _get(card, "workload", "data", "max-num-seqs"),
        "max_num_batched_tokens": _get(card, "workload", "data", "max-num-batched-tokens"),
        "framework": _get(card, "Model-executor", "framework", "name"),
        "tp": _get(card, "Model-executor", "model_plan_parallelization", "tp"),
        "ep": _get(card, "Model-executor", "model_plan_parallelization", "ep"),
        "eplb": _get(card, "Model-executor", "expert_parallel", "eplb"),
    }
    return {k: v for k, v in fields.items() if v is not None}


def card_description(card: dict) -> str:
    return " ".join(str(card.get("description", "")).split())


def card_mode_claims(card: dict) -> list[tuple[str, str, str]]:
    """(family, claim, words) for each mode the description makes a claim about: family
    'baseline' or 'all2all', the claim in parentheses, and the words as the card puts them."""
    return [
        (
            "baseline" if m.group("family").lower() == "baseline" else "all2all",
            m.group("claim"),
            f"{m.group('family')} ({m.group('claim')})",
        )
        for m in CARD_MODE_CLAIM.finditer(card_description(card))
    ]


def card_hardware(card: dict) -> str | None:
    """The GPU model the card names."""
    model = _get(card, "workload", "hardware", "xpu_spec", "model")
    return str(model) if model else None


def card_gpu_count(card: dict) -> int:
    return int(_get(card, "workload", "hardware", "xpu_spec", "total_count") or 1)
