"""Forward context with the data-parallel token counts (field names per vLLM version)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm import API


@dataclass
class DPMetadata:
    max_tokens_across_dp_cpu: torch.Tensor
    cu_tokens_across_dp_cpu: torch.Tensor | None = None  # 0.10.x
    num_tokens_across_dp_cpu: torch.Tensor | None = None  # 0.11.0

    @staticmethod
    def make(sizes: list[int]) -> DPMetadata:
        t = torch.tensor(sizes, dtype=torch.int32)
        if API == "0.11":
            return DPMetadata(t.max(), num_tokens_across_dp_cpu=t)
        return DPMetadata(t.max(), cu_tokens_across_dp_cpu=torch.cumsum(t, 0))


@dataclass
class ForwardContext:
    dp_metadata: DPMetadata | None = None


_CONTEXT = ForwardContext()


def get_forward_context() -> ForwardContext:
    return _CONTEXT


def set_dp_sizes(sizes: list[int] | None) -> None:
    _CONTEXT.dp_metadata = DPMetadata.make(sizes) if sizes else None
