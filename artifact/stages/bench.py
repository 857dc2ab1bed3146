"""Stage `bench`: the experiments against real servers, with routing captured per run.

Units (each resumable: a unit is finished when its `unit.json` exists, and an interrupted
unit is redone from scratch):

- config sweep: one unit per (mode, max-num-seqs, max-num-batched-tokens); one server start
  per unit, warm-up requests, then `repeat` measured runs on the sweep's fixed prompts;
- imbalance: one unit per (mode, dataset); one server per mode, reused across datasets.

Only the selected experiments run (artifact.profiles.selected_experiments:
$MOE_ARTIFACT_EXPERIMENTS, else every enabled one).

Per measured run: `run.repNN.json` (vLLM result schema, see artifact.benchclient) and
`run.repNN.routing` (the routing of exactly that run's forward passes; warm-up is excluded).
Two checks per run, both fatal when they fail, since they mean the capture is wrong:
every layer's counts sum to top_k x the tokens the engine processed (prompt tokens plus
generated tokens fed back, from the server's usage), and the prompt-token counts equal an
offline replay of the same prompts on the same model (engines that can replay; up to the
profile's `engine.replay_tolerance`, the share of assignments that may move, for bf16 on a GPU).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path

import numpy as np

from artifact.benchclient import (
    BenchConfig,
    ServerCapabilities,
    load_prompts,
    new_session,
    probe_server,
    result_filename,
    run_benchmark,
    write_result,
)
from artifact.console import console, progress_bar
from artifact.engines import ServerLimits, get_engine
from artifact.errors import StageFailed
from artifact.io import atomic_write_json, read_json
from artifact.profiles import BenchSpec, Profile, selected_experiments
from artifact.profiles import Engine as EngineSpec
from artifact.routing import layer_totals
from artifact.stages import Stage, StageContext, StageOutcome
from artifact.stages.datasets import SWEEP_PROMPTS
from artifact.stages.install import installed_model_dir
from artifact.stages.serve import check_provenance

RUN_LABEL = "run"  # result files are run.repNN.json, routing logs run.repNN.routing


@dataclasses.dataclass(frozen=True)
class Unit:
    experiment: str  # config_sweep | imbalance
    mode: str
    limits: ServerLimits
    prompts_file: Path
    bench: BenchSpec
    dataset: str | None = None  # imbalance: the dataset's file stem

    @property
    def key(self) -> str:
        tail = self.dataset if self.dataset else self.limits.label
        return f"{self.experiment}/{self.mode}/{tail}"


def sweep_points(profile: Profile) -> list[ServerLimits]:
    sweep = profile.experiments.config_sweep
    if sweep.grid == "full":
        pairs = [(s, t) for s in sweep.max_num_seqs for t in sweep.max_num_batched_tokens]
    else:  # the study's cross through the fixed point
        pairs = [(s, sweep.fixed_max_num_batched_tokens) for s in sweep.max_num_seqs]
        pairs += [(sweep.fixed_max_num_seqs, t) for t in sweep.max_num_batched_tokens]
    return [ServerLimits(s, t) for s, t in dict.fromkeys(pairs)]


def chosen_datasets(metadata: dict, count: int | str) -> list[str]:
    """File names of `count` datasets spread evenly over the score range (all with 'all')."""
    files = [d["file"] for d in sorted(metadata["datasets"], key=lambda d: d["score"])]
    if count == "all" or count >= len(files):
        return files
    picks = np.unique(np.round(np.linspace(0, len(files) - 1, int(count))).astype(int))
    return [files[i] for i in picks]


def plan_units(ctx: StageContext, experiments: list[str]) -> list[Unit]:
    """The units of the named experiments."""
    profile = ctx.profile
    data_dir = ctx.stage_dir("datasets")
    units: list[Unit] = []
    if "config_sweep" in experiments:
        sweep = profile.experiments.config_sweep
        for mode in sweep.modes:
            for limits in sweep_points(profile):
                units.append(
                    Unit("config_sweep", mode, limits, data_dir / SWEEP_PROMPTS, sweep.bench)
                )
    if "imbalance" in experiments:
        imbalance = profile.experiments.imbalance
        metadata = read_json(data_dir / "metadata.json")
        limits = ServerLimits(imbalance.max_num_seqs, imbalance.max_num_batched_tokens)
        for mode in imbalance.modes:
            for name in chosen_datasets(metadata, imbalance.datasets):
                units.append(
                    Unit(
                        "imbalance",
                        mode,
                        limits,
                        data_dir / name,
                        imbalance.bench,
                        dataset=Path(name).stem,
                    )
                )
    return units


def bench_config(base_url: str, model: str, spec: BenchSpec) -> BenchConfig:
    return BenchConfig(
        base_url=base_url,
        model=model,
        request_rate=spec.request_rate,
        burstiness=spec.burstiness,
        max_concurrency=spec.max_concurrency,
        output_len=spec.output_len,
        warmup_requests=0,  # warm-up is sent separately, outside the routing capture
        seed=spec.seed,
        request_timeout_s=spec.request_timeout_s,
        metric_percentiles=tuple(spec.metric_percentiles),
    )


def check_routing_totals(routing: Path, result: dict, top_k: int) -> dict:
    """Every layer's counts sum to top_k x (prompt tokens + generated tokens fed back)."""
    usage_in = result["input_lens_usage"]
    usage_out = result["output_lens_usage"]
    if any(v is None for v in usage_in + usage_out):
        raise StageFailed(
            f"{routing}: the server reported no usage for some request; "
            "the routing total cannot be checked"
        )
    processed = sum(
        i + max(o - 1, 0)
        for i, o, e in zip(usage_in, usage_out, result["errors"], strict=True)
        if not e
    )
    per_layer = layer_totals(routing).sum(axis=1)
    if not (per_layer == top_k * processed).all():
        raise StageFailed(
            f"{routing}: per-layer routing counts {per_layer.tolist()} do not all equal "
            f"top_k x processed tokens = {top_k} x {processed}"
        )
    return {"processed_tokens": processed, "assignments_per_layer": int(per_layer[0])}


def replay_mismatch(expected: np.ndarray, got: np.ndarray) -> float:
    """Share of expert assignments that moved: per layer, half the L1 distance between the
    per-expert counts (a lower bound on the tokens routed differently), over all layers."""
    if expected.shape != got.shape:
        return 1.0
    total = expected.sum()
    return float(np.abs(expected - got).sum() / 2 / total) if total else 0.0


class Replayer:
    """Offline replay of prompt sets on one copy of the model, per experts implementation."""

    def __init__(self, model_dir: Path, out_dir: Path, engine: EngineSpec, dtype: str):
        self.model_dir, self.out_dir, self.dtype = model_dir, out_dir, dtype
        self.device, self.tolerance = engine.device, engine.replay_tolerance
        self._model = None

    def prompt_counts(
        self, implementation: str, prompts_file: Path, texts: list[str]
    ) -> np.ndarray:
        from artifact.engines.replay import load_model, replay

        target = self.out_dir / implementation / f"{prompts_file.stem}.routing"
        if not target.exists():
            if self._model is None:
                self._model = load_model(self.model_dir, self.dtype, self.device)
            model, tokenizer = self._model
            model.set_experts_implementation(implementation)
            tmp = target.with_name(f".{target.name}.tmp")
            replay(model, tokenizer, texts, tmp, meta={"prompts": prompts_file.name})
            tmp.replace(target)
        return layer_totals(target)


class BenchStage(Stage):
    name = "bench"
    description = "run the config sweep and imbalance experiments, capturing routing per run"
    # serve checked every mode first; bench reads none of its files (a later experiment's
    # serve run adds files there and must not make this stage's earlier units stale).
    upstream = ("install", "datasets")
    requires = ("serve",)
    profile_sections = ("model", "engine", "modes", "experiments")
    per_experiment = True

    def clear(self, ctx: StageContext, experiments: list[str] | None) -> None:
        if experiments is None:
            return super().clear(ctx, None)
        for name in experiments:
            shutil.rmtree(ctx.stage_dir(self.name) / name, ignore_errors=True)

    def run(self, ctx: StageContext) -> StageOutcome:
        experiments = selected_experiments(ctx.profile)
        units = plan_units(ctx, experiments)
        if not units:
            return StageOutcome(summary="no experiment enabled in the profile")
        out = ctx.stage_dir(self.name)
        engine = get_engine(ctx.profile, installed_model_dir(ctx))
        replayer = None
        if ctx.profile.engine.kind == "transformers":
            replayer = Replayer(
                engine.model_dir, out / "replay", ctx.profile.engine, ctx.profile.model.dtype
            )
        todo = [u for u in units if not (out / u.key / "unit.json").exists()]
        if len(todo) < len(units):
            console.print(
                f"  bench: {len(units) - len(todo)} of {len(units)} units already done, resuming"
            )
        server, server_key = None, None
        runs = 0
        try:
            with progress_bar() as bar:
                task = bar.add_task("bench units", total=len(todo))
                for unit in todo:
                    # Imbalance units of one mode share a server; sweep units get their own.
                    key = (
                        unit.experiment,
                        unit.mode,
                        unit.limits if unit.experiment == "config_sweep" else None,
                    )
                    if server is None or key != server_key:
                        if server is not None:
                            server.stop()
                        server_dir = out / unit.experiment / unit.mode
                        if unit.experiment == "config_sweep":
                            server_dir = out / unit.key
                        server = engine.start(unit.mode, unit.limits, server_dir / "server.log")
                        server_key = key
                        capabilities = self._warm_up(server, unit)
                        provenance = server.provenance()
                        check_provenance(engine, unit.mode, unit.limits, provenance)
                        atomic_write_json(server_dir / "provenance.json", provenance)
                    runs += self._run_unit(
                        server, capabilities, unit, out / unit.key, provenance, replayer
                    )
                    bar.advance(task)
        finally:
            if server is not None:
                server.stop()
        return StageOutcome(
            summary=f"{len(units)} units ({len(todo)} run now, {runs} measured runs), "
            "routing checked against token totals and offline replay"
        )

    def _warm_up(self, server, unit: Unit) -> ServerCapabilities:
        """Probe what the server accepts and send the warm-up requests, before any capture."""
        config = bench_config(server.base_url, server.model_id, unit.bench)

        async def probe_and_warm() -> ServerCapabilities:
            async with new_session(config) as session:
                _, capabilities = await probe_server(session, config)
                n = unit.bench.warmup_requests
                if n:
                    await run_benchmark(
                        dataclasses.replace(config, num_prompts=n),
                        load_prompts(unit.prompts_file),
                        label="warmup",
                        session=session,
                        capabilities=capabilities,
                    )
                return capabilities

        capabilities = asyncio.run(probe_and_warm())
        server.check_alive("warm-up")
        return capabilities

    def _run_unit(
        self,
        server,
        capabilities: ServerCapabilities,
        unit: Unit,
        unit_dir: Path,
        provenance: dict,
        replayer: Replayer | None,
    ) -> int:
        if unit_dir.exists() and unit.experiment == "imbalance":
            shutil.rmtree(unit_dir)  # partial output of an interrupted unit
        else:
            for stale in unit_dir.glob(f"{RUN_LABEL}.rep*"):
                stale.unlink()
        unit_dir.mkdir(parents=True, exist_ok=True)
        prompts = load_prompts(unit.prompts_file)
        config = bench_config(server.base_url, server.model_id, unit.bench)
        server_info = {
            "engine": provenance.get("engine"),
            "engine_version": provenance.get("versions", {}).get("transformers"),
            "mode": unit.mode,
            "max_num_seqs": unit.limits.max_num_seqs,
            "max_num_batched_tokens": unit.limits.max_num_batched_tokens,
            "experts_implementation": provenance.get("experts_implementation"),
            "experiment": unit.experiment,
            "dataset": unit.dataset,
        }
        runs = []
        for rep in range(unit.bench.repeat):
            routing = (unit_dir / result_filename(RUN_LABEL, rep)).with_suffix(".routing")
            server.start_routing(routing, meta={"unit": unit.key, "repetition": rep})
            try:
                result = asyncio.run(
                    run_benchmark(
                        config,
                        prompts,
                        label=RUN_LABEL,
                        repetition=rep,
                        server_info=server_info,
                        capabilities=capabilities,
                    )
                )
            finally:
                server.check_alive(f"{unit.key} repetition {rep}")
                stats = server.stop_routing()
            path = write_result(result, unit_dir)
            data = read_json(path)
            if data["completed"] != len(prompts):
                raise StageFailed(
                    f"{path}: only {data['completed']} of {len(prompts)} requests "
                    f"completed; first error: {next(e for e in data['errors'] if e)}"
                )
            totals = check_routing_totals(routing, data, provenance["top_k"])
            replay_ok, mismatch = None, None
            if replayer is not None:
                expected = replayer.prompt_counts(
                    provenance["experts_implementation"],
                    unit.prompts_file,
                    [p.text for p in prompts],
                )
                got = layer_totals(routing, "prefill")
                mismatch = replay_mismatch(expected, got)
                tolerance = replayer.tolerance
                # The prompt tokens each layer saw must agree exactly whatever the numerics
                # (a capture that splits prompt from generated tokens wrongly fails here);
                # only which experts they went to may differ, by the profile's tolerance.
                same_tokens = expected.shape == got.shape and np.array_equal(
                    expected.sum(1), got.sum(1)
                )
                replay_ok = same_tokens and mismatch <= tolerance
                if not replay_ok:
                    raise StageFailed(
                        f"{routing}: prompt-token routing differs from the offline replay of "
                        f"{unit.prompts_file.name}: {mismatch:.3%} of the assignments moved "
                        f"(engine.replay_tolerance {tolerance:.3%}); prompt tokens per layer "
                        f"{got.sum(1).tolist()} vs {expected.sum(1).tolist()} (must be equal)"
                    )
            runs.append(
                {
                    "repetition": rep,
                    "result": path.name,
                    "routing": routing.name,
                    "capture": stats,
                    **totals,
                    "replay_match": replay_ok,
                    "replay_mismatch": mismatch,
                }
            )
        atomic_write_json(
            unit_dir / "unit.json",
            {
                "experiment": unit.experiment,
                "mode": unit.mode,
                "dataset": unit.dataset,
                "max_num_seqs": unit.limits.max_num_seqs,
                "max_num_batched_tokens": unit.limits.max_num_batched_tokens,
                "prompts": unit.prompts_file.name,
                "runs": runs,
            },
        )
        return len(runs)


STAGE = BenchStage()
