"""The embedded engine: `transformers serve` (continuous batching) with routing capture.

Knob mapping (the study's vLLM names -> transformers' ContinuousBatchingConfig):
  max-num-seqs           -> max_requests_per_batch (requests scheduled into one forward pass)
  max-num-batched-tokens -> max_batch_tokens (tokens in one forward pass)
Modes select the experts implementation of the MoE blocks (`eager`: a loop over experts;
`grouped_mm`: one grouped GEMM; `batched_mm`: batched GEMMs over gathered expert weights).
Tensor/data/expert parallelism and EPLB do not exist in this engine: a mode asking for them
is refused.
"""

from __future__ import annotations

import sys

from artifact.config.profiles import Mode
from artifact.core.errors import ArtifactError
from artifact.engines.base import Engine, ServerLimits

EXPERTS_IMPLEMENTATIONS = ("eager", "grouped_mm", "batched_mm")
PAGE_SIZE = 256  # transformers' default tokens per KV page


def kv_blocks(limits: ServerLimits, max_model_len: int) -> int:
    """KV blocks for max_num_seqs requests of max_model_len tokens, with 2x headroom.

    Sizing the cache to the workload (instead of transformers' memory-based default of
    thousands of blocks) makes the first request ~80x faster on CPU, and a cache this size
    never needs to offload a request (offloading would re-run its tokens).
    """
    return 2 * limits.max_num_seqs * -(-max_model_len // PAGE_SIZE)


class TransformersEngine(Engine):
    kind = "transformers"

    def validate_mode(self, name: str, mode: Mode) -> None:
        where = f"field 'modes.{name}'"
        path = self.profile.path
        if mode.experts_implementation not in EXPERTS_IMPLEMENTATIONS:
            raise ArtifactError(
                f"experts_implementation must be one of {', '.join(EXPERTS_IMPLEMENTATIONS)} "
                f"for the transformers engine (got {mode.experts_implementation!r})",
                path=path,
                where=where,
            )
        unsupported = []
        if mode.tensor_parallel_size != 1:
            unsupported.append("tensor_parallel_size")
        if mode.data_parallel_size != 1:
            unsupported.append("data_parallel_size")
        if mode.enable_expert_parallel:
            unsupported.append("enable_expert_parallel")
        if mode.enable_eplb:
            unsupported.append("enable_eplb")
        if mode.all2all_backend:
            unsupported.append("all2all_backend")
        if mode.extra_args:
            unsupported.append("extra_args")
        if unsupported:
            raise ArtifactError(
                f"the transformers engine has no {', '.join(unsupported)} (one process, no "
                "parallelism); use the vllm engine for these knobs",
                path=path,
                where=where,
            )

    def command(self, mode: Mode, limits: ServerLimits, port: int) -> list[str]:
        engine = self.profile.engine
        return [
            sys.executable,
            "-m",
            "artifact.engines.transformers.server",
            "--model",
            str(self.model_dir),
            "--host",
            engine.host,
            "--port",
            str(port),
            "--device",
            engine.device,
            "--dtype",
            self.profile.model.dtype,
            "--experts-implementation",
            str(mode.experts_implementation),
            "--max-num-seqs",
            str(limits.max_num_seqs),
            "--max-num-batched-tokens",
            str(limits.max_num_batched_tokens),
            "--num-blocks",
            str(kv_blocks(limits, self.profile.model.max_model_len)),
        ]

    def check_provenance(self, mode_name: str, limits: ServerLimits, provenance: dict) -> list[str]:
        mode = self.profile.modes[mode_name]
        problems = []

        def expect(what: str, wanted, got) -> None:
            if wanted != got:
                problems.append(f"{what}: asked for {wanted!r}, the engine runs {got!r}")

        expect(
            "experts_implementation",
            mode.experts_implementation,
            provenance.get("experts_implementation"),
        )
        expect(
            "device", self.profile.engine.device, str(provenance.get("device", "")).split(":")[0]
        )
        expect("dtype", self.profile.model.dtype, provenance.get("dtype"))
        batching = provenance.get("continuous_batching", {})
        # The live values exist once a request has started the batching manager.
        held = batching.get("live") or batching.get("configured") or {}
        expect(
            "max-num-seqs (max_requests_per_batch)",
            limits.max_num_seqs,
            held.get("max_requests_per_batch"),
        )
        expect(
            "max-num-batched-tokens (max_batch_tokens)",
            limits.max_num_batched_tokens,
            held.get("max_batch_tokens"),
        )
        if provenance.get("sdpa_kernels", {}).get("cudnn"):
            problems.append(
                "cuDNN attention is enabled: it builds a graph per new attention shape, so "
                "step times depend on the shapes earlier runs met "
                "(artifact.engines.transformers.attention)"
            )
        if mode.experts_implementation == "grouped_mm" and "fallback" in str(
            provenance.get("grouped_mm_path")
        ):
            problems.append(
                "grouped_mm asked for, but transformers falls back to a per-group "
                "loop on this torch/device"
            )
        return problems
