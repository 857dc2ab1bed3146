"""What a trace of the study claims to have run, as an `Expectation` for the vLLM log checks
(`moe-artifact provenance --expect auto`): its directory name and the workload card beside it.
"""

from __future__ import annotations

from pathlib import Path

from artifact.engines.vllm.provenance import Expectation, card_family_claims, kernel_from_words
from artifact.study.cards import card_description, card_hardware, read_card
from artifact.study.traces import parse_trace_name, trace_card, vllm_parallel


def expectation_from_study_dir(run_dir: Path) -> Expectation | None:
    """The mode a directory of the original study's trace collection claims to be.

    The name carries engine, mode and limits (`...vllmEP4-...[defaultall2all_32_8192_eplbon]`);
    the workload card beside it may add a kernel claim ('Baseline (Triton MoE)') and the EPLB
    setting.
    """
    named = parse_trace_name(run_dir.name)
    parallel = vllm_parallel(named["engine"]) if named else None
    if named is None or parallel is None:
        return None
    expert, size = parallel
    eplb = named["eplb"]
    exp = Expectation(
        name=named["mode"] + ("" if eplb is None else "_eplbon" if eplb else "_eplboff"),
        source=f"directory name {run_dir.name}",
        tensor_parallel_size=1 if expert else size,
        data_parallel_size=size if expert else 1,
        enable_expert_parallel=expert,
        enable_eplb=bool(eplb),
        all2all_backend="default" if expert else None,
        max_num_seqs=named["max_num_seqs"],
        max_num_batched_tokens=named["max_num_batched_tokens"],
    )
    card_path = trace_card(run_dir)
    if card_path is not None:
        card = read_card(card_path)
        exp.source += f" and card {card_path.name}"
        words = card_description(card)
        family = "all2all" if expert else "baseline"
        claims = card_family_claims(card)
        if family in claims:
            exp.moe_kernel, exp.moe_kernel_claim = claims[family]
        elif kernel := kernel_from_words(words):
            exp.moe_kernel, exp.moe_kernel_claim = kernel, words
        # The directory name is the claim; a card that disagrees with it is noted, not used.
        ep_card = (card.get("Model-executor") or {}).get("expert_parallel") or {}
        if "eplb" in ep_card and bool(ep_card["eplb"]) != exp.enable_eplb:
            exp.notes.append(
                f"card {card_path.name} says eplb: {ep_card['eplb']}, the directory name claims "
                f"EPLB {'on' if exp.enable_eplb else 'off'}"
            )
        if hw := card_hardware(card):
            exp.gpu_model = hw
    return exp
