"""GPUModelRunner: a persistent batch and execute_model / _dummy_run step entry points."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from vllm.model_executor.layers.fused_moe.layer import FusedMoE


@dataclass
class SchedulerOutput:
    """num_scheduled_tokens per request, plus what the stand-in needs to run the step."""

    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    # request id -> (tokens already computed, prompt length), in batch order
    requests: dict[str, tuple[int, int]] = field(default_factory=dict)
    router_logits: list[torch.Tensor] = field(default_factory=list)  # per layer [tokens, E]
    pad_to: int | None = None


class InputBatch:
    def __init__(self):
        self.req_ids: list[str | None] = []
        self.num_computed_tokens_cpu = np.zeros(64, dtype=np.int32)
        self.num_prompt_tokens = np.zeros(64, dtype=np.int32)


class Model(torch.nn.Module):
    def __init__(self, layers: list[FusedMoE]):
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)


class GPUModelRunner:
    def __init__(self, layers: list[FusedMoE], dp_rank: int = 0, dp_size: int = 1):
        self.model = Model(layers)
        self.parallel_config = SimpleNamespace(
            data_parallel_rank=dp_rank, data_parallel_size=dp_size
        )
        self.input_batch = InputBatch()

    def _update_states(self, scheduler_output: SchedulerOutput) -> None:
        self.input_batch.req_ids = list(scheduler_output.requests)
        for i, (computed, prompt) in enumerate(scheduler_output.requests.values()):
            self.input_batch.num_computed_tokens_cpu[i] = computed
            self.input_batch.num_prompt_tokens[i] = prompt

    def execute_model(self, scheduler_output: SchedulerOutput, intermediate_tensors=None):
        self._update_states(scheduler_output)
        n = scheduler_output.total_num_scheduled_tokens
        padded = scheduler_output.pad_to or n
        for layer, logits in zip(self.model.layers, scheduler_output.router_logits, strict=True):
            if padded > n:
                logits = torch.cat([logits, torch.zeros(padded - n, logits.shape[1])])
            layer(torch.zeros(padded, 4), logits)
        return SimpleNamespace(req_ids=self.input_batch.req_ids)

    def _dummy_run(self, num_tokens: int, **kwargs):
        for layer in self.model.layers:
            layer(torch.zeros(num_tokens, 4), torch.zeros(num_tokens, layer.global_num_experts))
        return None
