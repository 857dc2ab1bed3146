"""The vLLM routing plugin against a stand-in of the call surface it wraps.

tests/fixtures/vllm_standin/ mimics vLLM's FusedMoE.select_experts (2-tuple at 0.10.x / 2f13319f,
3-tuple at 0.11.0, same parameter names), FusedMoE.forward_impl, the forward context's DP
metadata (cu_tokens_across_dp_cpu vs num_tokens_across_dp_cpu) and the model runner's
execute_model / _dummy_run. The plugin is installed through its entry point function and
the real import paths (`vllm.model_executor.layers.fused_moe.layer`, ...), as in vLLM.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from artifact.engines.vllm.plugin.merge import merge_rank_logs  # noqa: E402
from artifact.routing.format import PHASE_CODE, RoutingLog  # noqa: E402

STANDIN = Path(__file__).resolve().parents[1] / "fixtures" / "vllm_standin"
E, K, LAYERS = 8, 2, 3


def _purge() -> None:
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


@pytest.fixture(params=["0.10", "0.11"])
def vllm(request, monkeypatch, tmp_path):
    """The stand-in vLLM of one API generation, with the plugin registered."""
    from artifact.engines.vllm.plugin import hooks, register

    monkeypatch.setenv("VLLM_STANDIN_API", request.param)
    monkeypatch.setenv("MOE_ARTIFACT_ROUTING_CONTROL", str(tmp_path / "control.json"))
    monkeypatch.syspath_prepend(str(STANDIN))
    _purge()
    hooks.reset()
    register()
    import vllm as standin

    assert hooks._installed and request.param == standin.API
    yield standin
    hooks.reset()
    _purge()


def modules():
    from vllm.distributed import parallel_state
    from vllm.forward_context import set_dp_sizes
    from vllm.model_executor.layers.fused_moe import layer as moe
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner, SchedulerOutput

    return moe, GPUModelRunner, SchedulerOutput, set_dp_sizes, parallel_state


def control(tmp_path: Path, path: Path | None, serial: int, meta: dict | None = None) -> None:
    from artifact.engines.vllm.plugin import hooks

    target = tmp_path / "control.json"
    tmp = tmp_path / "control.json.tmp"
    tmp.write_text(
        json.dumps({"path": str(path) if path else None, "meta": meta, "serial": serial})
    )
    tmp.replace(target)
    hooks.recorder().poll_once()


def counts_of(logits: torch.Tensor) -> np.ndarray:
    ids = torch.topk(logits, K, dim=-1).indices
    return np.bincount(ids.reshape(-1).numpy(), minlength=E)


def batch(gen, reqs: dict[str, tuple[int, int, int]]):
    """reqs: id -> (computed, prompt, scheduled); returns SchedulerOutput fields + masks."""
    total = sum(n for _, _, n in reqs.values())
    logits = [torch.randn(total, E, generator=gen) for _ in range(LAYERS)]
    mask = np.concatenate([np.arange(c, c + n) < p for c, p, n in reqs.values()])
    return total, logits, mask


def scheduled(SchedulerOutput, reqs: dict[str, tuple[int, int, int]], total, logits, **extra):
    """The SchedulerOutput of `batch`'s requests."""
    return SchedulerOutput(
        num_scheduled_tokens={r: n for r, (_, _, n) in reqs.items()},
        total_num_scheduled_tokens=total,
        requests={r: (c, p) for r, (c, p, _) in reqs.items()},
        router_logits=logits,
        **extra,
    )


@pytest.mark.parametrize("cpu_moe", [False, True])
def test_tensor_parallel_rank0_records_every_step_by_phase(vllm, tmp_path, monkeypatch, cpu_moe):
    """With `cpu_moe` the layer never calls select_experts (vLLM's CPU MoE): the capture takes
    the layer's top-k of the router logits it received, with the same counts."""
    moe, Runner, SchedulerOutput, _, _ = modules()
    monkeypatch.setattr(moe, "CPU_MOE", cpu_moe)
    layers = [moe.FusedMoE(f"model.layers.{i}.block_sparse_moe.experts") for i in range(LAYERS)]
    runner = Runner(layers)
    runner._dummy_run(4)  # start-up profiling run: binds the runner, finds the layers
    cap = tmp_path / "cap.routing"
    control(tmp_path, cap, 1, {"unit": "u1"})
    gen = torch.Generator().manual_seed(0)
    expected = np.zeros((2, LAYERS, 2, E), dtype=np.int64)  # step, layer, phase, expert
    plans = [
        {"a": (0, 5, 5), "b": (7, 7, 1), "c": (2, 6, 4)},  # prefill, decode, chunked prefill
        {"a": (5, 5, 1), "b": (8, 7, 1)},  # decode only
    ]
    for step, reqs in enumerate(plans):
        total, logits, mask = batch(gen, reqs)
        # padding past the scheduled tokens is not counted
        runner.execute_model(scheduled(SchedulerOutput, reqs, total, logits, pad_to=total + 3))
        for i, lg in enumerate(logits):
            expected[step, i, 0] = counts_of(lg[torch.from_numpy(mask)])
            expected[step, i, 1] = counts_of(lg[torch.from_numpy(~mask)])
        # flushed per step: readable while the capture runs
        assert RoutingLog(f"{cap}.rank0").num_records > 0
    # the wrapped select_experts returns vLLM's tuple unchanged
    assert len(layers[0].calls[-1]) == (3 if vllm.API == "0.11" and not cpu_moe else 2)
    control(tmp_path, None, 2)
    log = RoutingLog(f"{cap}.rank0")
    h = log.header
    assert (h.num_experts, h.top_k, h.num_layers, h.rank, h.world_size) == (E, K, LAYERS, 0, 1)
    assert h.layer_names[0] == "model.layers.0.block_sparse_moe.experts"
    assert h.expert_map is None and h.meta["unit"] == "u1"
    assert vllm.__version__ in h.source
    rec = log.read_all()
    got = np.zeros_like(expected)
    for r in rec:
        got[r["step"], r["layer"], r["phase"]] += r["counts"]
        assert r["counts"].sum() == K * r["num_tokens"]
    assert np.array_equal(got, expected)
    done = json.loads(Path(f"{cap}.rank0.done").read_text())
    assert done["tokens"] == {"prefill": 9, "decode": 3, "unknown": 0} and done["steps"] == 2


def test_other_tensor_parallel_ranks_write_nothing(vllm, tmp_path):
    moe, Runner, _, _, parallel_state = modules()
    parallel_state.TP_RANK = 1
    try:
        runner = Runner([moe.FusedMoE("l0")])
        runner._dummy_run(2)
        control(tmp_path, tmp_path / "cap.routing", 1)
        runner._dummy_run(2)
        control(tmp_path, None, 2)
    finally:
        parallel_state.TP_RANK = 0
    assert not list(tmp_path.glob("cap.routing.rank*"))


def test_data_parallel_ranks_record_their_own_slice_and_merge_to_the_global_batch(vllm, tmp_path):
    """Four DP ranks replay the same engine steps (each sees the all-gathered batch)."""
    moe, Runner, SchedulerOutput, set_dp_sizes, _ = modules()
    gen = torch.Generator().manual_seed(1)
    # per step, per rank: requests (None: the rank is idle and runs a 1-token dummy batch)
    steps = [
        [{"a": (0, 4, 4)}, {"b": (0, 3, 3), "c": (6, 6, 1)}, None, {"d": (0, 2, 2)}],
        [{"a": (4, 4, 1)}, None, None, {"d": (2, 2, 1)}],
    ]
    plans = []
    for ranks in steps:
        plans.append([None if reqs is None else (reqs, *batch(gen, reqs)) for reqs in ranks])
    truth = np.zeros((LAYERS, 2, E), dtype=np.int64)
    for ranks in plans:
        for plan in ranks:
            if plan is not None:
                _, _, logits, mask = plan
                for i, lg in enumerate(logits):
                    truth[i, 0] += counts_of(lg[torch.from_numpy(mask)])
                    truth[i, 1] += counts_of(lg[torch.from_numpy(~mask)])
    cap = tmp_path / "cap.routing"
    from artifact.engines.vllm.plugin import hooks

    for rank in range(4):
        hooks.reset()
        layers = [moe.FusedMoE(f"l{i}", ep_rank=rank, ep_size=4) for i in range(LAYERS)]
        runner = Runner(layers, dp_rank=rank, dp_size=4)
        runner._dummy_run(1)
        control(tmp_path, cap, 10 + rank)
        for ranks in plans:
            sizes = [1 if p is None else p[1] for p in ranks]
            layer_no = iter(range(10**6))

            def dispatch(hidden, logits, ranks=ranks, sizes=sizes, layer_no=layer_no, rank=rank):
                i = next(layer_no) % LAYERS
                parts = [torch.zeros(1, E) if p is None else p[2][i] for p in ranks]
                assert logits.shape[0] == sizes[rank]
                return torch.zeros(sum(sizes), 4), torch.cat(parts)

            set_dp_sizes(sizes)
            moe.DISPATCH = dispatch
            try:
                plan = ranks[rank]
                if plan is None:
                    runner._dummy_run(1)
                else:
                    reqs, total, logits, _ = plan
                    runner.execute_model(scheduled(SchedulerOutput, reqs, total, logits))
            finally:
                moe.DISPATCH = None
                set_dp_sizes(None)
        control(tmp_path, None, 20 + rank)
        header = RoutingLog(f"{cap}.rank{rank}").header
        assert header.rank == rank and header.world_size == 4
        assert list(header.expert_map) == [2 * rank, 2 * rank + 1]
    stats = merge_rank_logs(cap)
    assert stats["ranks"] == 4
    idle = {r["rank"]: r["dummy_steps"] for r in stats["per_rank"]}
    assert idle == {0: 0, 1: 1, 2: 2, 3: 0}
    merged = RoutingLog(cap).read_all()
    got = np.zeros_like(truth)
    for r in merged:
        got[r["layer"], r["phase"]] += r["counts"]
    assert np.array_equal(got, truth)
    assert stats["tokens"]["prefill"] == 4 + 3 + 2 and stats["tokens"]["decode"] == 1 + 1 + 1
    assert int(merged["phase"].max()) <= PHASE_CODE["decode"]


def test_eplb_physical_ids_are_counted_as_logical_experts(vllm, tmp_path):
    moe, Runner, SchedulerOutput, _, _ = modules()
    layer = moe.FusedMoE("l0", enable_eplb=True)
    runner = Runner([layer])
    runner._dummy_run(1)
    cap = tmp_path / "cap.routing"
    control(tmp_path, cap, 1)
    gen = torch.Generator().manual_seed(2)
    total, logits, _ = batch(gen, {"a": (0, 6, 6)})
    runner.execute_model(
        SchedulerOutput(
            num_scheduled_tokens={"a": 6},
            total_num_scheduled_tokens=total,
            requests={"a": (0, 6)},
            router_logits=logits[:1],
        )
    )
    physical = layer.calls[-1][1]
    logical = torch.topk(logits[0], K, dim=-1).indices
    assert not torch.equal(physical.long(), logical)  # the stand-in maps to replicas
    control(tmp_path, None, 2)
    rec = RoutingLog(f"{cap}.rank0").read_all()
    assert np.array_equal(rec[0]["counts"], counts_of(logits[0]))


def test_a_capture_stops_while_the_engine_is_idle_and_restarts(vllm, tmp_path):
    moe, Runner, _, _, _ = modules()
    runner = Runner([moe.FusedMoE("l0")])
    runner._dummy_run(1)
    control(tmp_path, tmp_path / "one.routing", 1)
    control(tmp_path, tmp_path / "two.routing", 2)  # restart closes the first
    assert Path(f"{tmp_path}/one.routing.rank0.done").exists()
    control(tmp_path, None, 3)
    assert Path(f"{tmp_path}/two.routing.rank0.done").exists()
    assert RoutingLog(f"{tmp_path}/two.routing.rank0").num_records == 0


def test_register_is_a_no_op_without_the_control_variable(monkeypatch):
    from artifact.engines.vllm.plugin import hooks, register

    monkeypatch.delenv("MOE_ARTIFACT_ROUTING_CONTROL", raising=False)
    hooks.reset()
    register()
    assert not hooks._installed


def test_register_never_raises_into_vllm(monkeypatch, caplog):
    from artifact.engines.vllm.plugin import hooks, register

    monkeypatch.setenv("MOE_ARTIFACT_ROUTING_CONTROL", "/tmp/x.json")
    monkeypatch.setitem(sys.modules, "vllm", None)  # vLLM not importable
    hooks.reset()
    register()
    assert not hooks._installed
    assert "not installed" in caplog.text


def test_an_active_plugin_says_so_in_the_server_log(vllm, caplog):
    """Through a `vllm.` logger (vLLM's handlers print only those), read back by provenance."""
    import logging

    from artifact.engines.vllm.plugin import hooks, register
    from artifact.engines.vllm.provenance import parse_log_text

    hooks.reset()
    _purge()
    with caplog.at_level(logging.INFO, logger="vllm"):
        register()
    (record,) = [r for r in caplog.records if "routing plugin" in r.getMessage()]
    assert record.name.startswith("vllm.") and record.levelno == logging.INFO
    line = f"(Worker_TP0 pid=7) INFO 01-02 03:04:05 [hooks.py:1] {record.getMessage()}"
    assert parse_log_text(line).routing_plugin == "active"


def test_a_capture_whose_moe_layers_gave_no_routing_is_refused_naming_the_layer_type(
    vllm, tmp_path
):
    """A MoE path the hooks never see (its own forward_impl routes inside): steps ran, no
    record was written, and the merge's stats say so with the layer's type."""
    from artifact.engines.vllm.plugin.merge import missing_routing

    moe, Runner, SchedulerOutput, _, _ = modules()

    class RoutesInside(moe.FusedMoE):
        def forward_impl(self, hidden_states, router_logits):
            return hidden_states

    runner = Runner([RoutesInside(f"l{i}") for i in range(LAYERS)])
    runner._dummy_run(1)
    cap = tmp_path / "cap.routing"
    control(tmp_path, cap, 1)
    gen = torch.Generator().manual_seed(0)
    reqs = {"a": (0, 5, 5)}
    total, logits, _ = batch(gen, reqs)
    runner.execute_model(scheduled(SchedulerOutput, reqs, total, logits))
    control(tmp_path, None, 2)
    stats = merge_rank_logs(cap)
    problem = missing_routing(stats["per_rank"])
    assert problem is not None and "RoutesInside" in problem and "ran 1 steps" in problem


def test_unrouted_layer_calls_are_counted_by_type_and_refused():
    from artifact.engines.vllm.plugin.merge import missing_routing

    whole = {"rank": 0, "steps": 3, "dummy_steps": 0, "steps_written": 3}
    assert missing_routing([whole]) is None
    assert missing_routing([{**whole, "steps": 0, "steps_written": 0}]) is None  # idle
    problem = missing_routing([whole, {**whole, "rank": 1, "unrouted_layer_calls": {"X": 4}}])
    assert problem is not None and problem.startswith("rank 1") and "X (4 calls)" in problem


def test_a_control_file_naming_a_log_outside_its_folder_writes_nothing(vllm, tmp_path):
    """The control file's folder bounds what the plugin writes (hostile or mistaken paths)."""
    moe, Runner, SchedulerOutput, _, _ = modules()
    runner = Runner([moe.FusedMoE(f"model.layers.{i}.block_sparse_moe.experts") for i in range(3)])
    runner._dummy_run(4)
    gen = torch.Generator().manual_seed(0)
    reqs = {"a": (0, 5, 5)}
    victim = tmp_path.parent / f"{tmp_path.name}-victim.routing"
    (tmp_path / "escape").symlink_to(tmp_path.parent)
    hostile = [victim, tmp_path / ".." / victim.name, tmp_path / "escape" / victim.name]
    for serial, path in enumerate([*hostile, tmp_path / "ok.routing"], start=1):
        control(tmp_path, path, serial)
        runner.execute_model(scheduled(SchedulerOutput, reqs, *batch(gen, reqs)[:2]))
    assert not list(tmp_path.parent.glob(f"{victim.name}*"))
    assert Path(f"{tmp_path / 'ok.routing'}.rank0").exists()


def test_the_layer_hooks_never_wait_for_the_device_and_copy_once_per_step(vllm, tmp_path):
    """Router logits on `meta` (tests/fixtures/meta_device.py): a host sync inside a layer hook
    (bincount, boolean-mask indexing, .item()) raises there and the hook warns; the step's
    counts reach the host in one copy."""
    from meta_device import HostCopies

    from artifact.engines.vllm.plugin import hooks

    moe, Runner, SchedulerOutput, _, _ = modules()
    runner = Runner([moe.FusedMoE(f"l{i}") for i in range(LAYERS)])
    runner._dummy_run(2)
    cap = tmp_path / "cap.routing"
    control(tmp_path, cap, 1)
    plans = [{"a": (0, 5, 5), "b": (7, 7, 1)}, {"a": (5, 5, 1), "b": (8, 7, 1)}]
    with HostCopies() as copies:
        for reqs in plans:
            total = sum(n for _, _, n in reqs.values())
            logits = [torch.empty(total, E, device="meta") for _ in range(LAYERS)]
            runner.execute_model(scheduled(SchedulerOutput, reqs, total, logits))
    assert hooks.recorder().warnings == []
    assert copies.count == len(plans)
    control(tmp_path, None, 2)
    done = json.loads(Path(f"{cap}.rank0.done").read_text())
    assert done["tokens"] == {"prefill": 5, "decode": 3, "unknown": 0}


def test_select_experts_called_with_positional_arguments_is_counted(vllm, tmp_path, monkeypatch):
    from artifact.engines.vllm.plugin import hooks

    """vLLM passes keywords (read as they are); positional ones are bound to the signature
    (here the router logits and top_k, which the EPLB recount reads)."""
    moe, Runner, SchedulerOutput, _, _ = modules()
    monkeypatch.setattr(moe, "POSITIONAL_SELECT", True)
    runner = Runner([moe.FusedMoE(f"l{i}", enable_eplb=True) for i in range(LAYERS)])
    runner._dummy_run(1)
    cap = tmp_path / "cap.routing"
    control(tmp_path, cap, 1)
    gen = torch.Generator().manual_seed(3)
    reqs = {"a": (0, 4, 4), "b": (6, 5, 1)}
    total, logits, mask = batch(gen, reqs)
    runner.execute_model(scheduled(SchedulerOutput, reqs, total, logits))
    control(tmp_path, None, 2)
    rec = RoutingLog(f"{cap}.rank0").read_all()
    assert len(rec) == 2 * LAYERS
    for r in rec:
        phase_mask = mask if r["phase"] == PHASE_CODE["prefill"] else ~mask
        want = counts_of(logits[r["layer"]][torch.from_numpy(phase_mask)])  # logical ids
        assert np.array_equal(r["counts"], want)
    assert hooks.recorder().warnings == []


def test_phase_mask_marks_the_tokens_before_each_prompts_end_in_batch_order():
    """Against the per-request rule on random persistent batches (empty slots, requests with
    nothing scheduled, prompts partly computed, decodes)."""
    from types import SimpleNamespace

    from artifact.engines.vllm.plugin.hooks import phase_mask

    rng = np.random.default_rng(0)
    for _ in range(50):
        slots = int(rng.integers(1, 40))
        req_ids = [None if rng.random() < 0.2 else f"r{i}" for i in range(slots)]
        computed = rng.integers(0, 50, slots).astype(np.int32)
        prompt = rng.integers(1, 50, slots).astype(np.int32)
        scheduled = {r: int(rng.integers(0, 6)) for r in req_ids if r is not None}
        want = [
            c + j < p
            for r, c, p in zip(req_ids, computed, prompt, strict=True)
            if r is not None
            for j in range(scheduled[r])
        ]
        runner = SimpleNamespace(
            input_batch=SimpleNamespace(
                req_ids=req_ids, num_computed_tokens_cpu=computed, num_prompt_tokens=prompt
            )
        )
        got = phase_mask(runner, SimpleNamespace(num_scheduled_tokens=scheduled), len(want))
        assert got is not None and got.tolist() == want
        assert phase_mask(runner, SimpleNamespace(num_scheduled_tokens=scheduled), 999) is None
