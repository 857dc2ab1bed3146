"""The routing hooks inside vLLM's worker processes.

What each rank records, per engine step and MoE layer, split by phase (prompt tokens vs
generated tokens fed back), as moe-routing v1 records (artifact.routing.format):

- tensor parallel: every rank routes the same tokens, so only TP rank 0 writes;
- data parallel + expert parallel: `select_experts` sees the all-gathered global batch, in
  DP-rank order; each DP rank records only its own slice of it (offsets from the forward
  context's DP metadata) and skips its own dummy batches (the 1-token passes an idle rank
  runs to join the collectives). Summing the ranks' logs gives each real token once.

Counts are per global expert id. With EPLB, `select_experts` returns physical ids (replicas
included); the hooks then recount the logical choice from the router logits (plain
softmax top-k, Mixtral's routing) and say so in the header (`meta.ids`).

No host sync and no kernel launch per layer: a layer's hook keeps its ids (a reference) and
the host-side phase of each token; the step's end counts them all on their device and copies
the counts to the host once (artifact.routing.counting).

Control: the server writes a JSON control file (`MOE_ARTIFACT_ROUTING_CONTROL`):
`{"path": "/run/x.routing", "meta": {...}}` starts a capture, `{"path": null}` stops it. A
thread polls it (every 0.2 s) so a stop lands while the engine is idle; each rank then
closes `<path>.rank<R>` and writes `<path>.rank<R>.done` (its stats), which the server
waits for before merging the ranks into `<path>` (artifact.engines.vllm.plugin.merge).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from artifact.core.io import resolve_within
from artifact.engines.vllm.plugin import CONTROL_ENV, logger
from artifact.routing.counting import PassCounts, PendingSteps
from artifact.routing.format import PHASES, RoutingHeader, RoutingWriter

POLL_S = 0.2
_installed = False


def rank_log_path(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.name}.rank{rank}")


class Recorder:
    """Per-process state: the current step, layer and writer."""

    def __init__(self, control_path: str | None):
        self.control_path = Path(control_path) if control_path else None
        self.lock = threading.RLock()
        self.local = threading.local()
        self.writer: RoutingWriter | None = None
        self.writer_path: Path | None = None
        self.unwritten = PendingSteps()  # counted steps whose copy to the host may be under way
        self.layers: list[tuple[str, Any]] | None = None  # (name, module) in model order
        self.layer_index: dict[str, int] = {}
        self.runner: Any = None
        self.dp_rank = 0
        self.dp_size = 1
        self.tp_rank = 0
        self.world_rank = 0
        self.world_size = 1
        self.logs = True
        self.step = 0
        self.steps_written = 0
        self.tokens = {"prefill": 0, "decode": 0, "unknown": 0}
        self.dummy_steps = 0
        # MoE layer calls of real steps that yielded no routing (neither select_experts nor
        # router logits the hooks could read), by the layer's type: stop_routing refuses them.
        self.unrouted: dict[str, int] = {}
        self.warnings: list[str] = []
        self._serial: Any = None
        self._mtime: tuple[int, int] | None = None
        self._pending: dict | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # --- rank and model discovery ----------------------------------------------------------
    def bind_runner(self, runner: Any) -> None:
        if self.runner is not None:
            return
        self.runner = runner
        parallel = getattr(runner, "parallel_config", None) or getattr(
            getattr(runner, "vllm_config", None), "parallel_config", None
        )
        self.dp_rank = int(getattr(parallel, "data_parallel_rank", 0) or 0)
        self.dp_size = int(getattr(parallel, "data_parallel_size", 1) or 1)
        try:
            from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

            self.tp_rank = int(get_tensor_model_parallel_rank())
        except Exception:
            self.tp_rank = 0
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                self.world_rank, self.world_size = dist.get_rank(), dist.get_world_size()
        except Exception:
            pass
        self.logs = self.tp_rank == 0
        if self.control_path is not None and self.logs and self._thread is None:
            self._thread = threading.Thread(
                target=self._poll, name="moe-artifact-routing", daemon=True
            )
            self._thread.start()

    def discover_layers(self) -> None:
        if self.layers is not None or self.runner is None:
            return
        model = getattr(self.runner, "model", None)
        if model is None or not hasattr(model, "named_modules"):
            return
        from vllm.model_executor.layers.fused_moe.layer import FusedMoE

        layers = []
        for name, module in model.named_modules():
            if isinstance(module, FusedMoE):
                layers.append((getattr(module, "layer_name", None) or name, module))
        if layers:
            self.layers = layers
            self.layer_index = {name: i for i, (name, _) in enumerate(layers)}

    def moe_layers(self) -> list[tuple[str, Any]]:
        if self.layers is None:
            raise RuntimeError("the MoE layers are not discovered yet")
        return self.layers

    def num_experts(self) -> int:
        module = self.moe_layers()[0][1]
        for attr in ("logical_num_experts", "global_num_experts", "num_experts"):
            value = getattr(module, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        raise RuntimeError("cannot tell the number of experts of the MoE layers")

    def expert_map(self) -> list[int] | None:
        """Local -> global expert ids of this rank (None when it holds every expert)."""
        emap = getattr(self.moe_layers()[0][1], "expert_map", None)
        if emap is None:
            return None
        values = [int(v) for v in emap.tolist()]
        local = {loc: glob for glob, loc in enumerate(values) if loc >= 0}
        return [local[i] for i in sorted(local)]

    # --- control ---------------------------------------------------------------------------
    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            with contextlib.suppress(Exception):
                self.poll_once()

    def poll_once(self) -> None:
        """Read the control file if it changed; apply stops at once, starts when possible."""
        with self.lock:
            self._poll_locked()

    def _poll_locked(self) -> None:
        control_path = self.control_path
        if control_path is None:
            return
        try:
            stat = control_path.stat()
        except FileNotFoundError:
            return
        if (stat.st_mtime_ns, stat.st_ino) == self._mtime:
            return
        try:
            control = json.loads(control_path.read_text())
        except (OSError, json.JSONDecodeError):
            return  # half-written: the next poll sees the renamed file
        self._mtime = (stat.st_mtime_ns, stat.st_ino)
        if control.get("serial") == self._serial:
            return
        self._serial = control.get("serial")
        self._close()
        wanted = control.get("path")
        if wanted and resolve_within(wanted, control_path.parent) is None:
            logger.warning("routing log %s is outside %s: not written", wanted, control_path.parent)
            wanted = None
        self._pending = control if wanted and self.logs else None
        if self._pending is not None and self.layers is not None:
            self._open(self._pending)

    def _open(self, control: dict) -> None:
        path = rank_log_path(Path(control["path"]), self.dp_rank)
        layers = self.moe_layers()
        names = tuple(name for name, _ in layers)
        meta = dict(control.get("meta") or {})
        meta.update(
            {
                "dp_rank": self.dp_rank,
                "dp_size": self.dp_size,
                "tp_rank": self.tp_rank,
                "ids": "logical",
                "slice": "own DP slice of the gathered batch, dummy batches skipped"
                if self.dp_size > 1
                else "whole batch",
            }
        )
        expert_map = self.expert_map()
        header = RoutingHeader(
            num_experts=self.num_experts(),
            top_k=int(getattr(layers[0][1], "top_k", 2)),
            num_layers=len(names),
            layer_names=names,
            rank=self.dp_rank,
            world_size=self.dp_size,
            expert_map=None if expert_map is None else tuple(expert_map),
            source=f"moe-artifact vllm plugin (vllm {_vllm_version()})",
            meta=meta,
        )
        path.with_name(path.name + ".done").unlink(missing_ok=True)
        self.writer = RoutingWriter(path, header)
        self.writer_path = path
        self.step = 0
        self.steps_written = 0
        self.dummy_steps = 0
        self.unrouted = {}
        self.tokens = {"prefill": 0, "decode": 0, "unknown": 0}
        self._pending = None

    def _close(self) -> None:
        writer, path = self.writer, self.writer_path
        if writer is None or path is None:
            return
        for rows in self.unwritten.drain():
            writer.write_step(rows)
        writer.close()
        stats = {
            "rank": self.dp_rank,
            "steps": self.step,
            "steps_written": self.steps_written,
            "dummy_steps": self.dummy_steps,
            "unrouted_layer_calls": dict(self.unrouted),
            "layer_types": sorted({layer_type(module) for _, module in self.layers or []}),
            "tokens": dict(self.tokens),
            "warnings": self.warnings[:10],
        }
        done = path.with_name(path.name + ".done")
        tmp = done.with_name(done.name + ".tmp")
        tmp.write_text(json.dumps(stats, sort_keys=True))
        os.replace(tmp, done)
        self.writer = None
        self.writer_path = None

    # --- step -------------------------------------------------------------------------------
    def begin_step(self, runner: Any, scheduler_output: Any, dummy: bool) -> None:
        self.bind_runner(runner)
        local = self.local
        local.depth = getattr(local, "depth", 0) + 1
        if local.depth > 1:
            return  # nested (a dummy run inside a step): part of the outer step
        with self.lock:
            if self.layers is None:
                self.discover_layers()
            if self._pending is not None and self.layers is not None:
                self._open(self._pending)
            writer = local.writer = self.writer if self.logs else None
            local.counts = None
            if writer is not None:
                local.counts = PassCounts(len(self.moe_layers()), writer.header.num_experts)
        local.scheduler_output = scheduler_output
        local.dummy = dummy
        local.mask = None
        local.layer = None

    def end_step(self) -> None:
        local = self.local
        local.depth -= 1
        if local.depth > 0:
            return
        writer: RoutingWriter | None = getattr(local, "writer", None)
        counts: PassCounts | None = getattr(local, "counts", None)
        local.writer, local.counts = None, None
        if writer is None or counts is None:
            return
        with self.lock:
            if writer is not self.writer:
                return  # the capture stopped (or restarted) during this step
            if local.dummy:
                self.dummy_steps += 1
            # the step's counting and its one copy to the host, launched without waiting
            counted = counts.count(self.step)
            if counted.tokens:
                for (layer, phase), ntok in counted.tokens:
                    if layer == 0:
                        self.tokens[PHASES[phase]] += ntok
                self.unwritten.push(counted)
                self.steps_written += 1  # written once its copy lands, at the latest on close
            for rows in self.unwritten.ready():
                writer.write_step(rows)
            self.step += 1

    # --- layers -----------------------------------------------------------------------------
    def enter_layer(self, layer: Any, local_tokens: int) -> Any:
        local = self.local
        previous = (getattr(local, "layer", None), getattr(local, "selected", False))
        local.layer, local.selected = (layer, local_tokens), False
        return previous

    def exit_layer(self, previous: Any) -> None:
        local = self.local
        if previous[0] is None and not local.selected and self._capturing():
            kind = layer_type(local.layer[0])
            self.unrouted[kind] = self.unrouted.get(kind, 0) + 1
        # A nested call (forward_impl -> forward_impl_chunked) that counted counts for both.
        local.layer, local.selected = previous[0], previous[1] or local.selected

    def _capturing(self) -> bool:
        """A real (not dummy) step of a rank that is writing a capture."""
        local = self.local
        return getattr(local, "writer", None) is not None and not getattr(local, "dummy", False)

    def on_select(self, arguments: Callable[[], dict], result: Any) -> None:
        """`arguments()`: select_experts' arguments by name, read only while capturing."""
        self.local.selected = True
        if not self._capturing():
            return
        args = arguments()
        if args.get("enable_eplb"):
            self._record(lambda: self._logical_ids(args, result[1]))
        else:
            self._record(lambda: result[1])

    def on_router_logits(self, layer: Any, router_logits: Any) -> None:
        """A MoE layer that ran without select_experts (vLLM's CPU MoE, IPEX, picks experts
        itself): the layer's own top-k of what it received (softmax and renormalisation keep
        the order of the logits)."""
        if getattr(self.local, "selected", True) or router_logits is None:
            return
        import torch

        self._record(lambda: torch.topk(router_logits, int(layer.top_k), dim=-1).indices)
        self.local.selected = True

    def _record(self, expert_ids: Any) -> None:
        """Count this layer's expert ids (`expert_ids()`: computed only when capturing)."""
        local = self.local
        # a dummy step: this rank's own slice is a dummy batch, nothing real to count
        if not self._capturing() or getattr(local, "layer", None) is None:
            return
        layer, local_tokens = local.layer
        name = getattr(layer, "layer_name", None)
        if name not in self.layer_index:
            return
        index = self.layer_index[name]
        ids = expert_ids()
        total = int(ids.shape[0])
        if total > local_tokens:  # the gathered global batch: keep this rank's slice
            offset = self._dp_offset(total)
            if offset is None:
                self._warn(f"cannot place rank {self.dp_rank} in a batch of {total} tokens")
                return
            ids = ids[offset : offset + local_tokens]
            chunked = False
        else:
            chunked = total < local_tokens  # chunked forward: a piece of this rank's tokens
        real = self._real_tokens(local_tokens)
        if not chunked and real < ids.shape[0]:
            ids = ids[:real]
        # no host sync and no device work from here on: slices, counted when the step ends
        local.counts.add(index, ids, None if chunked else self._prefill_mask(real))

    def _logical_ids(self, args: dict, ids: Any) -> Any:
        """Logical expert ids when EPLB maps them to physical replicas (softmax top-k)."""
        plain = (
            not args.get("use_grouped_topk")
            and args.get("custom_routing_function") is None
            and args.get("scoring_func", "softmax") == "softmax"
        )
        if not plain:
            self._warn("EPLB with non-plain routing: physical expert ids recorded")
            return ids
        import torch

        return torch.topk(args["router_logits"], int(args["top_k"]), dim=-1).indices

    def _dp_offset(self, total: int) -> int | None:
        try:
            from vllm.forward_context import get_forward_context

            meta = get_forward_context().dp_metadata
        except Exception:
            return None
        if meta is None:
            return None
        sizes = None
        if getattr(meta, "num_tokens_across_dp_cpu", None) is not None:
            sizes = _ints(meta.num_tokens_across_dp_cpu)
        elif getattr(meta, "cu_tokens_across_dp_cpu", None) is not None:
            cu = _ints(meta.cu_tokens_across_dp_cpu)
            sizes = [b - a for a, b in zip([0, *cu[:-1]], cu, strict=True)]
        if not sizes or sum(sizes) != total or self.dp_rank >= len(sizes):
            return None
        return sum(sizes[: self.dp_rank])

    def _real_tokens(self, local_tokens: int) -> int:
        sched = getattr(self.local, "scheduler_output", None)
        total = getattr(sched, "total_num_scheduled_tokens", None)
        if isinstance(total, int) and 0 < total <= local_tokens:
            return total
        return local_tokens

    def _prefill_mask(self, real: int) -> np.ndarray | None:
        """bool[real] on the host: True for prompt tokens (position < prompt length), None if
        unknown. Made once per step."""
        local = self.local
        if local.mask is None or local.mask.shape[0] != real:
            local.mask = phase_mask(self.runner, local.scheduler_output, real)
        return local.mask

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            logger.warning("moe-artifact routing: %s", message)


def phase_mask(runner: Any, scheduler_output: Any, real: int) -> np.ndarray | None:
    """Prompt-token mask of this step's batch, laid out as the runner lays it out.

    The batch holds the persistent batch's requests in order, each with its scheduled
    tokens; a token at position < the request's prompt length is a prompt token.
    """
    try:
        batch = runner.input_batch
        scheduled = scheduler_output.num_scheduled_tokens
        rows, sizes = [], []
        for i, req_id in enumerate(batch.req_ids):
            n = int(scheduled.get(req_id, 0)) if req_id is not None else 0
            if n:
                rows.append(i)
                sizes.append(n)
        # vectorised (a step may hold hundreds of requests): each token's position is its
        # request's computed tokens plus its place among the request's scheduled tokens
        n_tokens = np.array(sizes, dtype=np.int64)
        start = np.asarray(batch.num_computed_tokens_cpu)[rows].astype(np.int64)
        prompt = np.asarray(batch.num_prompt_tokens)[rows]
        first = np.cumsum(n_tokens) - n_tokens
        position = np.arange(int(n_tokens.sum())) - np.repeat(first - start, n_tokens)
        mask = position < np.repeat(prompt, n_tokens)
    except (AttributeError, TypeError, IndexError, KeyError, ValueError):
        return None
    return mask if mask.shape[0] == real else None


def _ints(values: Any) -> list[int]:
    """A CPU tensor's (or a sequence's) values: one `tolist`, not one `int()` per element."""
    return [int(x) for x in (values.tolist() if hasattr(values, "tolist") else values)]


def layer_type(module: Any) -> str:
    """A MoE layer's class and the method that computes it (e.g. FusedMoE/CPUFusedMOE)."""
    method = getattr(module, "quant_method", None)
    name = type(module).__name__
    return f"{name} ({type(method).__name__})" if method is not None else name


def _vllm_version() -> str:
    try:
        import vllm

        return str(getattr(vllm, "__version__", "?"))
    except Exception:
        return "?"


RECORDER: Recorder | None = None


def recorder() -> Recorder:
    global RECORDER
    if RECORDER is None:
        RECORDER = Recorder(os.environ.get(CONTROL_ENV))
    return RECORDER


def install(fused_moe_cls: Any = None, runner_cls: Any = None) -> None:
    """Wrap vLLM's MoE layer and model runner (once per process)."""
    global _installed
    if _installed:
        return
    if fused_moe_cls is None:
        from vllm.model_executor.layers.fused_moe.layer import FusedMoE

        fused_moe_cls = FusedMoE
    if runner_cls is None:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        runner_cls = GPUModelRunner
    rec = recorder()  # the wrappers look the recorder up per call (tests reset it)

    original_select = inspect.getattr_static(fused_moe_cls, "select_experts")
    select = original_select.__func__ if isinstance(original_select, staticmethod) else None
    if select is None:
        raise TypeError("FusedMoE.select_experts is not a staticmethod in this vLLM")
    signature = inspect.signature(select)

    @functools.wraps(select)
    def select_experts(*args, **kwargs):
        result = select(*args, **kwargs)
        rec = recorder()
        try:
            # vLLM passes keywords: binding them to the signature (~20 us) is needed only
            # for positional arguments
            rec.on_select(
                lambda: signature.bind(*args, **kwargs).arguments if args else kwargs, result
            )
        except Exception as exc:  # recording must never break serving
            rec._warn(f"select_experts hook failed: {exc!r}")
        return result

    fused_moe_cls.select_experts = staticmethod(select_experts)

    for name in ("forward_impl", "forward_impl_chunked"):
        method = fused_moe_cls.__dict__.get(name)
        if method is None:
            continue
        setattr(fused_moe_cls, name, _wrap_layer(method))

    for name, dummy in (("execute_model", False), ("_dummy_run", True)):
        method = getattr(runner_cls, name, None)
        if method is None:
            raise TypeError(f"{runner_cls.__name__}.{name} not found in this vLLM")
        setattr(runner_cls, name, _wrap_step(method, dummy))
    _installed = True
    # artifact.engines.vllm.provenance reads this line ("routing_plugin": "active")
    logger.info(
        "moe-artifact routing plugin active: hooks on %s.select_experts and %s.execute_model "
        "(control file %s)",
        fused_moe_cls.__name__,
        runner_cls.__name__,
        rec.control_path or "-",
    )


def _wrap_layer(method):
    @functools.wraps(method)
    def wrapper(self, hidden_states, *args, **kwargs):
        rec = recorder()
        previous = rec.enter_layer(self, int(hidden_states.shape[0]))
        try:
            return method(self, hidden_states, *args, **kwargs)
        finally:
            try:
                rec.on_router_logits(self, args[0] if args else kwargs.get("router_logits"))
            except Exception as exc:  # recording must never break serving
                rec._warn(f"router-logits capture failed: {exc!r}")
            rec.exit_layer(previous)

    return wrapper


def _wrap_step(method, dummy: bool):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        rec = recorder()
        scheduler_output = None
        if not dummy:
            scheduler_output = args[0] if args else kwargs.get("scheduler_output")
        try:
            rec.begin_step(self, scheduler_output, dummy)
        except Exception as exc:
            rec.local.depth = 0
            rec.local.writer = None
            rec._warn(f"step hook failed: {exc!r}")
            return method(self, *args, **kwargs)
        try:
            return method(self, *args, **kwargs)
        finally:
            try:
                rec.end_step()
            except Exception as exc:
                rec._warn(f"step hook failed: {exc!r}")

    return wrapper


def reset() -> None:
    """Forget the installed hooks and the recorder (tests install into fresh stand-ins)."""
    global _installed, RECORDER
    _installed = False
    if RECORDER is not None:
        RECORDER._stop.set()
        with RECORDER.lock:
            RECORDER._close()
    RECORDER = None
