"""Host time the vLLM routing plugin adds to an engine step, capture on vs off.

    python benchmarks/capture_host_time.py [--layers 32] [--tokens 16,256] [--rounds 15]

The plugin's hooks run on the host, on the step's critical path when the step is bound by
kernel launches (vLLM in eager mode, as the study ran it). This drives the plugin, installed
through its entry point, in the vLLM stand-in of the tests (tests/fixtures/vllm_standin:
vLLM's FusedMoE.select_experts and model runner call surface, routing on CPU tensors) with
decode steps of N requests over L MoE layers, capture off and on in interleaved rounds, and
reports the best round of each (the least disturbed by other processes) and their difference.
It does not measure what the device does (a GPU's kernels and copies):
benchmarks/capture_cost.py does, on a real engine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "vllm_standin"))

import torch  # noqa: E402

from artifact.engines.vllm.plugin import CONTROL_ENV, hooks, register  # noqa: E402


def step_times(runner, layers: int, tokens: int, rounds: int, steps: int, control: Path) -> dict:
    from vllm.v1.worker.gpu_model_runner import SchedulerOutput

    reqs = {f"r{i}": (100 + i, 50) for i in range(tokens)}  # decodes: one token each
    step = SchedulerOutput(
        num_scheduled_tokens={r: 1 for r in reqs},
        total_num_scheduled_tokens=tokens,
        requests=reqs,
        router_logits=[torch.randn(tokens, 8) for _ in range(layers)],
    )
    serial = iter(range(1, 10**6))

    def capture(path: Path | None) -> None:
        body = {"path": str(path) if path else None, "serial": next(serial)}
        tmp = control.with_name(control.name + ".tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(control)
        hooks.recorder().poll_once()

    best = {"off": float("inf"), "on": float("inf")}
    for _ in range(rounds):
        for arm in ("off", "on"):
            capture(control.with_name("x.routing") if arm == "on" else None)
            t0 = time.perf_counter()
            for _ in range(steps):
                runner.execute_model(step)
            best[arm] = min(best[arm], (time.perf_counter() - t0) / steps)
    capture(None)
    return {arm: 1e6 * t for arm, t in best.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32, help="MoE layers (Mixtral: 32)")
    parser.add_argument("--tokens", default="16,256", help="requests per decode step")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=50, help="steps timed per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        control = Path(tmp) / "control.json"
        os.environ[CONTROL_ENV] = str(control)
        os.environ.setdefault("VLLM_STANDIN_API", "0.11")
        register()
        from vllm.model_executor.layers.fused_moe import layer as moe
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        runner = GPUModelRunner([moe.FusedMoE(f"model.layers.{i}") for i in range(args.layers)])
        runner._dummy_run(2)  # binds the runner, finds the layers
        print(f"vLLM stand-in, {args.layers} MoE layers, best of {args.rounds} rounds (us/step)")
        print(f"{'requests':>8} {'off':>8} {'on':>8} {'capture':>8}")
        for tokens in (int(t) for t in args.tokens.split(",")):
            t = step_times(runner, args.layers, tokens, args.rounds, args.steps, control)
            print(f"{tokens:>8} {t['off']:>8.0f} {t['on']:>8.0f} {t['on'] - t['off']:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
