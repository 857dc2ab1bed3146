"""Check the routing plugin against an installed vLLM: its targets exist and accept the hooks.

    python containers/vllm_plugin_check.py [--expect-version 0.11.0]

Needs vLLM importable (no GPU: the CPU platform is forced when none is detected). Checks:
the `vllm.general_plugins` entry point names `artifact.engines.vllm.plugin:register` (when the
artifact is installed as a distribution); FusedMoE.select_experts is a staticmethod whose
parameters include the ones the hook reads; FusedMoE.forward_impl, GPUModelRunner.execute_model
and _dummy_run exist; InputBatch keeps num_computed_tokens_cpu / num_prompt_tokens; the
forward context's DPMetadata has the token counts the DP slicing reads; and install() wraps
all of them. Prints one line per check, exits 1 when any fails.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from importlib import metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect-version", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOE_ARTIFACT_ROUTING_CONTROL", "/nonexistent/control.json")
    import vllm
    import vllm.platforms as platforms

    try:
        if not platforms.current_platform.is_cuda():
            raise RuntimeError
    except Exception:
        from vllm.platforms.cpu import CpuPlatform

        platforms._current_platform = CpuPlatform()
    results: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        results.append((name, bool(ok), detail))

    check(
        "vllm version",
        args.expect_version is None or vllm.__version__ == args.expect_version,
        vllm.__version__,
    )
    eps = metadata.entry_points(group="vllm.general_plugins")
    ours = [ep for ep in eps if ep.value == "artifact.engines.vllm.plugin:register"]
    check("entry point vllm.general_plugins", bool(ours), ", ".join(ep.name for ep in eps))

    from vllm.forward_context import DPMetadata
    from vllm.model_executor.layers.fused_moe.layer import FusedMoE
    from vllm.v1.worker.gpu_input_batch import InputBatch
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    static = inspect.getattr_static(FusedMoE, "select_experts")
    check("FusedMoE.select_experts is a staticmethod", isinstance(static, staticmethod))
    params = set(inspect.signature(static.__func__).parameters)
    needed = {"hidden_states", "router_logits", "top_k", "use_grouped_topk", "enable_eplb"}
    check("select_experts parameters", needed <= params, ", ".join(sorted(needed - params)))
    ret = str(inspect.signature(static.__func__).return_annotation)
    check("select_experts return", "tuple" in ret, ret)
    check("FusedMoE.forward_impl", callable(getattr(FusedMoE, "forward_impl", None)))
    check("GPUModelRunner.execute_model", callable(getattr(GPUModelRunner, "execute_model", None)))
    check("GPUModelRunner._dummy_run", callable(getattr(GPUModelRunner, "_dummy_run", None)))
    source = inspect.getsource(InputBatch)
    for attr in ("num_computed_tokens_cpu", "num_prompt_tokens", "req_ids"):
        check(f"InputBatch.{attr}", attr in source)
    fields = set(getattr(DPMetadata, "__dataclass_fields__", {}))
    check(
        "DPMetadata token counts",
        bool(fields & {"num_tokens_across_dp_cpu", "cu_tokens_across_dp_cpu"}),
        ", ".join(sorted(fields)),
    )
    from artifact.engines.vllm.plugin import hooks

    hooks.install()
    wrapped = [
        getattr(inspect.getattr_static(FusedMoE, "select_experts").__func__, "__wrapped__", None),
        getattr(FusedMoE.forward_impl, "__wrapped__", None),
        getattr(GPUModelRunner.execute_model, "__wrapped__", None),
        getattr(GPUModelRunner._dummy_run, "__wrapped__", None),
    ]
    check("install() wrapped every target", all(w is not None for w in wrapped))
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f" ({detail})" if detail else ""))
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
