"""FusedMoE with vLLM's select_experts signature and return shape, per version."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vllm import API

# Test hook: the all2all dispatch (all-gather of the DP ranks' tokens), or None.
DISPATCH: Callable | None = None


def _route(router_logits, top_k, renormalize):
    weights = torch.softmax(router_logits.float(), dim=-1)
    topk_weights, topk_ids = torch.topk(weights, top_k, dim=-1)
    if renormalize:
        topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
    return topk_weights, topk_ids.to(torch.int32)


def _to_physical(topk_ids, logical_to_physical_map):
    return logical_to_physical_map[topk_ids.long(), 0].to(torch.int32)


class FusedMoE(torch.nn.Module):
    def __init__(
        self,
        prefix: str,
        num_experts: int = 8,
        top_k: int = 2,
        ep_rank: int = 0,
        ep_size: int = 1,
        enable_eplb: bool = False,
    ):
        super().__init__()
        self.layer_name = prefix
        self.top_k = top_k
        self.global_num_experts = num_experts
        if API == "0.11":
            self.logical_num_experts = num_experts
        self.enable_eplb = enable_eplb
        self.expert_map = None
        if ep_size > 1:
            per = num_experts // ep_size
            emap = torch.full((num_experts,), -1, dtype=torch.int32)
            emap[ep_rank * per : (ep_rank + 1) * per] = torch.arange(per, dtype=torch.int32)
            self.expert_map = emap
        # physical id of each logical expert's first replica (a permutation, for the test)
        self.logical_to_physical_map = torch.roll(torch.arange(num_experts), 1).unsqueeze(1)
        self.calls: list = []

    def forward(self, hidden_states, router_logits):
        return self.forward_impl(hidden_states, router_logits)

    def forward_impl(self, hidden_states, router_logits):
        if DISPATCH is not None:
            hidden_states, router_logits = DISPATCH(hidden_states, router_logits)
        result = FusedMoE.select_experts(
            hidden_states=hidden_states,
            router_logits=router_logits,
            top_k=self.top_k,
            use_grouped_topk=False,
            renormalize=True,
            enable_eplb=self.enable_eplb,
            expert_map=self.expert_map,
            logical_to_physical_map=self.logical_to_physical_map if self.enable_eplb else None,
        )
        self.calls.append(result)
        return hidden_states

    if API == "0.11":

        @staticmethod
        def select_experts(
            hidden_states: torch.Tensor,
            router_logits: torch.Tensor,
            top_k: int,
            use_grouped_topk: bool,
            renormalize: bool,
            topk_group: int | None = None,
            num_expert_group: int | None = None,
            custom_routing_function: Callable | None = None,
            scoring_func: str = "softmax",
            routed_scaling_factor: float = 1.0,
            e_score_correction_bias: torch.Tensor | None = None,
            indices_type: torch.dtype | None = None,
            enable_eplb: bool = False,
            expert_map: torch.Tensor | None = None,
            expert_load_view: torch.Tensor | None = None,
            logical_to_physical_map: torch.Tensor | None = None,
            logical_replica_count: torch.Tensor | None = None,
            global_num_experts: int | None = None,
            zero_expert_num: int | None = None,
            zero_expert_type: str | None = None,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
            topk_weights, topk_ids = _route(router_logits, top_k, renormalize)
            if enable_eplb:
                topk_ids = _to_physical(topk_ids, logical_to_physical_map)
            return topk_weights, topk_ids, None

    else:

        @staticmethod
        def select_experts(
            hidden_states: torch.Tensor,
            router_logits: torch.Tensor,
            top_k: int,
            use_grouped_topk: bool,
            renormalize: bool,
            topk_group: int | None = None,
            num_expert_group: int | None = None,
            custom_routing_function: Callable | None = None,
            scoring_func: str = "softmax",
            routed_scaling_factor: float = 1.0,
            e_score_correction_bias: torch.Tensor | None = None,
            indices_type: torch.dtype | None = None,
            enable_eplb: bool = False,
            expert_map: torch.Tensor | None = None,
            expert_load_view: torch.Tensor | None = None,
            logical_to_physical_map: torch.Tensor | None = None,
            logical_replica_count: torch.Tensor | None = None,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            topk_weights, topk_ids = _route(router_logits, top_k, renormalize)
            if enable_eplb:
                topk_ids = _to_physical(topk_ids, logical_to_physical_map)
            return topk_weights, topk_ids
