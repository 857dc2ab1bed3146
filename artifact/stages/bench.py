"""Stage `bench`: the experiments against real servers, with routing captured per run.

Units (each resumable: a unit is finished when its `unit.json` exists and names only files
that exist; a damaged unit is redone from scratch, an interrupted one from its unfinished
launches; `--redo UNIT` redoes one,
UNIT as the progress line and the folder under bench/ name it, e.g.
`imbalance/eager/001_0.2720`):

- config sweep: one unit per (mode, max-num-seqs, max-num-batched-tokens); one server start
  per unit and launch, warm-up requests, then `repeat` measured runs on the sweep's fixed
  prompts;
- EPLB ablation: one unit per mode (`bench/eplb_ablation/<mode>/`), its own server, the
  same for the ablation's fixed prompts (`datasets/eplb_prompts.jsonl`);
- imbalance: one unit per (mode, dataset); one server per mode and launch, reused across
  the datasets;
- profiled passes: where the ablation (`nsys: true`) or a mode asks for kernel traces, after
  all timed units, a pass of each such unit's prompts on a server of its own under nsys,
  collected only around the pass (`<unit>/profile/`: `server.nsys-rep`, `profile.rep00.json`,
  marker `profile.json`). The EPLB ablation's arms get one pass per launch (the bench spec's
  `launches`, the arms taking turns), pass k's files named as launch k's
  (`server.launchNN.nsys-rep`, `profile.repNN.json`, `profile.launchNN.json`), each resumable on
  its own; a mode's other units, one pass. It is no measured run: no routing capture, not among
  the `unit.json` runs, and the timed servers never run under nsys (profiling perturbs timing);
- diagnostic passes: with `experiments.eplb_ablation.balancedness_pass`, after those, one
  pass of each EPLB arm's prompts on a server of its own started with the timed arm's
  command plus `--eplb-log-balancedness` (an all_reduce and a host sync per step, so never on
  a timed or profiled server); the balancedness values vLLM logged during the pass, parsed
  from its log, in `<unit>/diagnostic/balancedness.json` beside `server.log`. Untimed: its
  requests' results are not kept, nothing timed reads it.

Launches: a unit's measured runs come from the bench spec's `launches` independent server
starts (`repeat` runs on each; run k of launch l is repetition l x repeat + k). An
experiment runs in rounds, round l the l-th launch of every unit, so the modes alternate
(ABAB) instead of running in blocks: at a sweep point the modes take turns, and the
imbalance servers of the modes take turns. A unit is finished when all its launches are
(`unit.json`); the launches finished before an interruption are kept in `unit.partial.json`
and not rerun. Launch 0's server files have the plain names, launch l's sit beside them as
`server.launchNN.log`, `provenance.launchNN.json` (artifact.core.layout.UnitDir).

Only the selected experiments run (artifact.config.profiles.selected_experiments:
$MOE_ARTIFACT_EXPERIMENTS, else every enabled one).

Per measured run: `run.repNN.json` (vLLM result schema, see artifact.serving.client) and
`run.repNN.routing` (the routing of exactly that run's forward passes; warm-up is excluded).
Two checks per run, both fatal when they fail, since they mean the capture is wrong:
every layer's counts sum to top_k x the tokens the engine processed (prompt tokens plus
generated tokens fed back, from the server's usage), and the prompt-token counts equal an
offline replay of the same prompts on the same model (a seeded model served on this host,
by either engine: vLLM's capture is compared with transformers' reference MoE loop; up to the
profile's `engine.replay_tolerance`, the share of assignments that may move where kernels
round differently).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from artifact.config.profiles import BenchSpec, Profile, selected_experiments
from artifact.config.profiles import Engine as EngineSpec
from artifact.core.console import UnitProgress, console
from artifact.core.errors import ArtifactError, StageFailed
from artifact.core.layout import PROFILE_LABEL, RUN_LABEL, RunLayout, UnitDir
from artifact.core.records import (
    BalancednessRecord,
    DatasetMetadata,
    ProfileRecord,
    Provenance,
    ResultFile,
    UnitRecord,
    UnitRun,
    read_record,
    startup_failure,
    validate_record,
    write_record,
)
from artifact.core.runner import Stage, StageContext, StageOutcome, set_aside
from artifact.engines.base import ServerLimits, log_tail
from artifact.engines.vllm.engine import LOG_BALANCEDNESS
from artifact.routing.format import layer_totals
from artifact.serving.config import BenchConfig, load_prompts
from artifact.serving.probe import probe_server
from artifact.serving.request import ServerCapabilities
from artifact.serving.result_file import result_to_vllm_json
from artifact.serving.run import new_session, run_benchmark
from artifact.stages.install import installed_engine
from artifact.stages.serve import check_provenance

# The untimed passes after an experiment's timed units (Unit.untimed).
PROFILED = "profiled"  # under nsys
DIAGNOSTIC = "diagnostic"  # EPLB balancedness logged


@dataclasses.dataclass(frozen=True)
class Unit:
    experiment: str  # config_sweep | eplb_ablation | imbalance
    mode: str
    limits: ServerLimits
    prompts_file: Path
    bench: BenchSpec
    dataset: str | None = None  # imbalance: the dataset's file stem
    untimed: str | None = None  # PROFILED or DIAGNOSTIC: a pass after the timed unit

    @property
    def label(self) -> str:
        """The unit as the progress line names it (an untimed pass with its kind)."""
        return self.key + (f" ({self.untimed})" if self.untimed else "")

    @property
    def key(self) -> str:
        """The timed unit's folder under bench/ (an untimed pass's is inside it)."""
        tail = {"config_sweep": self.limits.label, "imbalance": self.dataset}.get(self.experiment)
        return "/".join(part for part in (self.experiment, self.mode, tail) if part)

    def folder(self, layout: RunLayout) -> UnitDir:
        timed = layout.bench_unit(self.key)
        return {None: timed, PROFILED: timed.profile, DIAGNOSTIC: timed.diagnostic}[self.untimed]

    @property
    def profiled(self) -> bool:
        return self.untimed == PROFILED

    @property
    def launches(self) -> int:
        """Server launches: the bench spec's for a timed unit and for the EPLB ablation's
        profiled passes (one pass per launch, the kernel tables' repetitions), else one."""
        if self.untimed == DIAGNOSTIC or (self.profiled and self.experiment != "eplb_ablation"):
            return 1
        return self.bench.launches

    def marker(self, layout: RunLayout, launch: int = 0) -> Path:
        """The file that says the unit (a profiled unit: its pass `launch`) is done; an
        untimed pass has no measured runs."""
        folder = self.folder(layout)
        if self.untimed == PROFILED:
            return folder.launch(launch).profile_marker
        return folder.balancedness if self.untimed == DIAGNOSTIC else folder.record

    def identity(self) -> dict:
        """What a unit's marker file records about it."""
        return {
            "experiment": self.experiment,
            "mode": self.mode,
            "dataset": self.dataset,
            "max_num_seqs": self.limits.max_num_seqs,
            "max_num_batched_tokens": self.limits.max_num_batched_tokens,
            "prompts": self.prompts_file.name,
        }

    def server_dir(self, layout: RunLayout, launch: int) -> UnitDir:
        """Where launch `launch`'s server files go: a sweep unit's own folder, or the folder
        its mode's units share (imbalance, EPLB ablation)."""
        own = self.folder(layout)
        if self.experiment != "config_sweep":
            own = layout.bench_unit(f"{self.experiment}/{self.mode}")
        return own.launch(launch)

    def finished_runs(self, layout: RunLayout) -> list[UnitRun]:
        """The runs of the launches finished before an interruption (`unit.partial.json`,
        when it is readable and names only files that exist), else none."""
        folder = self.folder(layout)
        try:
            runs = read_record(folder.partial_record, UnitRecord).runs
        except ArtifactError:
            return []
        present = all((folder.path / n).is_file() for r in runs for n in (r.result, r.routing))
        return runs if present else []

    def finished_launches(self, layout: RunLayout) -> set[int]:
        """The launches (an untimed unit: its passes) finished before an interruption."""
        if self.untimed:
            passes = range(self.launches)
            return {k for k in passes if self.unfinished(layout, k) is None}
        return {r.launch for r in self.finished_runs(layout)}

    def unfinished(self, layout: RunLayout, launch: int | None = None) -> str | None:
        """Why the unit (a profiled unit: its pass `launch`, else any pass) must (re)run, None
        when it is finished: its marker is readable and every file the marker names exists."""
        if launch is None and self.profiled:
            whys = [why for k in range(self.launches) if (why := self.unfinished(layout, k))]
            damaged = [why for why in whys if why not in ("not run", "unfinished")]
            return next(iter(damaged + whys), None)  # a damaged pass sets the unit aside
        marker = self.marker(layout, launch or 0)
        if not marker.exists():
            return "not run" if not marker.parent.exists() else "unfinished"
        try:
            if self.untimed == PROFILED:
                done = read_record(marker, ProfileRecord)
                names = [done.report, done.result]
            elif self.untimed == DIAGNOSTIC:
                names = [read_record(marker, BalancednessRecord).log]
            else:
                record = read_record(marker, UnitRecord)
                names = [name for run in record.runs for name in (run.result, run.routing)]
        except ArtifactError as exc:
            return str(exc)
        gone = [name for name in names if not (marker.parent / name).is_file()]
        return f"{', '.join(gone)} missing" if gone else None


def sweep_points(profile: Profile) -> list[ServerLimits]:
    sweep = profile.experiments.config_sweep
    assert sweep is not None  # asked for a selected experiment only
    if sweep.grid == "full":
        pairs = [(s, t) for s in sweep.max_num_seqs for t in sweep.max_num_batched_tokens]
    else:  # the study's cross through the fixed point
        pairs = [(s, sweep.fixed_max_num_batched_tokens) for s in sweep.max_num_seqs]
        pairs += [(sweep.fixed_max_num_seqs, t) for t in sweep.max_num_batched_tokens]
    return [ServerLimits(s, t) for s, t in dict.fromkeys(pairs)]


def chosen_datasets(metadata: DatasetMetadata, count: int | str) -> list[str]:
    """File names of `count` datasets spread evenly over the score range (all with 'all')."""
    files = [d.file for d in sorted(metadata.datasets, key=lambda d: d.score)]
    if isinstance(count, str) or count >= len(files):  # "all"
        return files
    picks = np.unique(np.round(np.linspace(0, len(files) - 1, int(count))).astype(int))
    return [files[i] for i in picks]


def plan_units(ctx: StageContext, experiments: list[str]) -> list[Unit]:
    """The units of the named experiments: timed units, then the profiled passes, then the
    diagnostic passes."""
    profile = ctx.profile
    layout = ctx.layout
    units: list[Unit] = []
    if "config_sweep" in experiments:
        sweep = profile.experiments.config_sweep
        assert sweep is not None  # a selected experiment is in the profile
        for limits in sweep_points(profile):  # the modes take turns at each point
            for mode in sweep.modes:
                units.append(Unit("config_sweep", mode, limits, layout.sweep_prompts, sweep.bench))
    nsys_ablation = balancedness = False
    if "eplb_ablation" in experiments:
        ablation = profile.experiments.eplb_ablation
        assert ablation is not None
        nsys_ablation, balancedness = ablation.nsys, ablation.balancedness_pass
        limits = ServerLimits(ablation.max_num_seqs, ablation.max_num_batched_tokens)
        for mode in ablation.modes:
            units.append(Unit("eplb_ablation", mode, limits, layout.eplb_prompts, ablation.bench))
    if "imbalance" in experiments:
        imbalance = profile.experiments.imbalance
        assert imbalance is not None
        metadata = read_record(layout.dataset_metadata, DatasetMetadata)
        limits = ServerLimits(imbalance.max_num_seqs, imbalance.max_num_batched_tokens)
        for mode in imbalance.modes:
            for name in chosen_datasets(metadata, imbalance.datasets):
                units.append(
                    Unit(
                        "imbalance",
                        mode,
                        limits,
                        layout.dataset(name),
                        imbalance.bench,
                        dataset=Path(name).stem,
                    )
                )
    profiled = [
        dataclasses.replace(u, untimed=PROFILED)
        for u in units
        if profile.modes[u.mode].nsys or (u.experiment == "eplb_ablation" and nsys_ablation)
    ]
    diagnostic = [
        dataclasses.replace(u, untimed=DIAGNOSTIC)
        for u in units
        if u.experiment == "eplb_ablation" and balancedness and profile.modes[u.mode].enable_eplb
    ]
    return units + profiled + diagnostic


def schedule(units: list[Unit]) -> list[tuple[Unit, int]]:
    """(unit, launch) in the order they run: per experiment, round l runs the l-th launch of
    each of its units (in plan order); the untimed passes last, in rounds as well."""
    timed = [u for u in units if not u.untimed]
    order: list[tuple[Unit, int]] = []
    for experiment in dict.fromkeys(u.experiment for u in timed):
        mine = [u for u in timed if u.experiment == experiment]
        for launch in range(max(u.bench.launches for u in mine)):
            order += [(u, launch) for u in mine if launch < u.bench.launches]
    untimed = [u for u in units if u.untimed]
    for launch in range(max((u.launches for u in untimed), default=0)):
        order += [(u, launch) for u in untimed if launch < u.launches]
    return order


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


def server_info(unit: Unit, provenance: Provenance) -> dict:
    """What a result file records about the server and the unit it measured."""
    return {
        "engine": provenance.engine,
        "engine_version": provenance.versions.get(provenance.engine),
        "mode": unit.mode,
        "max_num_seqs": unit.limits.max_num_seqs,
        "max_num_batched_tokens": unit.limits.max_num_batched_tokens,
        "experts_implementation": provenance.experts_implementation,
        "experiment": unit.experiment,
        "dataset": unit.dataset,
    }


def check_routing_totals(routing: Path, result: ResultFile, top_k: int) -> dict:
    """Every layer's counts sum to top_k x (prompt tokens + generated tokens fed back)."""
    usage_in = result.get("input_lens_usage")
    usage_out = result.get("output_lens_usage")
    if any(v is None for v in usage_in + usage_out):
        raise StageFailed(
            f"{routing}: the server reported no usage for some request; "
            "the routing total cannot be checked"
        )
    processed = sum(
        i + max(o - 1, 0)
        for i, o, e in zip(usage_in, usage_out, result.errors, strict=True)
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
        self._model: tuple[Any, Any] | None = None  # (model, tokenizer), loaded on first use

    def prompt_counts(
        self, implementation: str, prompts_file: Path, texts: list[str]
    ) -> np.ndarray:
        from artifact.engines.transformers.replay import load_model, replay

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

    def close(self) -> None:
        """Drop the model and give its GPU memory back (later stages run in this process)."""
        if self._model is not None:
            from artifact.engines.transformers.seeded_model import release_cached_gpu_memory

            self._model = None
            release_cached_gpu_memory(self.device)


class BenchStage(Stage):
    name = "bench"
    # serve checked every mode first; bench reads none of its files (a later experiment's
    # serve run adds files there and must not make this stage's earlier units stale).
    upstream = ("install", "datasets")
    requires = ("serve",)
    profile_sections = ("model", "engine", "modes", "experiments")
    per_experiment = True

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--redo",
            action="append",
            default=[],
            metavar="UNIT",
            help="redo one finished unit (repeatable), as the progress line names it, e.g. "
            "imbalance/eager/001_0.2720; its files are moved to bench.old-<time>/ first",
        )

    def redo_targets(self, ctx: StageContext) -> list[Path]:
        asked = [u.strip("/").removeprefix("bench/") for u in getattr(ctx.args, "redo", [])]
        if not asked:
            return []
        known = {u.key for u in plan_units(ctx, selected_experiments(ctx.profile))}
        for key in asked:
            if key not in known:
                some = ", ".join(sorted(known)[:3])
                raise ArtifactError(
                    f"--redo {key}: no such unit among the selected experiments' "
                    f"{len(known)} units (e.g. {some})"
                )
        return [ctx.layout.bench_unit(key).path for key in asked]

    def clear(self, ctx: StageContext, experiments: list[str] | None) -> None:
        if experiments is None:
            return super().clear(ctx, None)
        for name in experiments:
            shutil.rmtree(ctx.layout.bench_experiment(name), ignore_errors=True)

    def run(self, ctx: StageContext) -> StageOutcome:
        experiments = selected_experiments(ctx.profile)
        layout = ctx.layout
        units = plan_units(ctx, experiments)
        refused = {u.mode: why for u in units if (why := startup_failure(layout, u.mode))}
        units = [u for u in units if u.mode not in refused]
        not_run = "".join(
            f"; {mode} not run (its server died during start-up in serve: {why})"
            for mode, why in refused.items()
        )
        if not units:
            return StageOutcome(summary=f"no unit to run{not_run}")
        engine = installed_engine(ctx)
        replayer = None
        # A seeded model served on this host (not in a container) is a folder this process's
        # transformers can load: replay it whatever engine serves it.
        if ctx.profile.model.source == "seeded" and ctx.profile.engine.launcher == "bare":
            replayer = Replayer(
                engine.model_dir, layout.replay_cache, ctx.profile.engine, ctx.profile.model.dtype
            )
        pending = []
        for unit in units:
            why = unit.unfinished(layout)
            if why is None:
                continue
            pending.append(unit)
            if why not in ("not run", "unfinished"):  # a finished unit, damaged since
                console.print(f"  bench: redoing {unit.label}: {why}", soft_wrap=True)
                set_aside(ctx, self.name, [unit.folder(layout).path])
        if len(pending) < len(units):
            console.print(
                f"  bench: {len(units) - len(pending)} of {len(units)} units already done, resuming"
            )
        todo = [
            (u, launch)
            for u, launch in schedule(pending)
            if launch not in u.finished_launches(layout)
        ]
        server, server_key = None, None
        runs = profiles = diagnostics = 0
        try:
            with UnitProgress("bench", len(todo)) as progress:
                for unit, launch in todo:
                    of = unit.launches
                    progress.start(unit.label + (f" launch {launch + 1}/{of}" if of > 1 else ""))
                    if unit.untimed:
                        if server is not None:
                            server.stop()
                            server = None
                        if unit.untimed == PROFILED:
                            self._profile_unit(engine, unit, unit.folder(layout).launch(launch))
                            profiles += 1
                        else:
                            self._balancedness_unit(engine, unit, unit.folder(layout))
                            diagnostics += 1
                        progress.done()
                        continue
                    # Imbalance units of one mode share a server per launch; the others get
                    # their own.
                    server_dir = unit.server_dir(layout, launch)
                    if server is None or server_dir != server_key:
                        if server is not None:
                            server.stop()
                        server_dir.path.mkdir(parents=True, exist_ok=True)
                        server = engine.start(unit.mode, unit.limits, server_dir.server_log)
                        server_key = server_dir
                        capabilities = self._warm_up(server, unit)
                        provenance = self._provenance(engine, server, unit, server_dir.provenance)
                        write_record(server_dir.provenance, provenance)
                    runs += self._run_unit(
                        server, capabilities, unit, launch, layout, provenance, replayer
                    )
                    progress.done()
        finally:
            if server is not None:
                server.stop()
            if replayer is not None:
                replayer.close()
        profiled = f", {profiles} profiled passes under nsys" if profiles else ""
        if diagnostics:
            profiled += f", {diagnostics} untimed EPLB balancedness passes"
        return StageOutcome(
            summary=f"{', '.join(experiments)}: {len(units)} units ({len(todo)} run now, "
            f"{runs} measured runs{profiled}), routing checked against token totals"
            + (" and offline replay" if replayer is not None else "")
            + not_run
        )

    @staticmethod
    def _provenance(engine, server, unit: Unit, path: Path) -> Provenance:
        """The live server's provenance (to be written to `path`), checked against the profile."""
        provenance = server.provenance()
        check_provenance(engine, unit.mode, unit.limits, provenance)
        return validate_record(provenance, Provenance, path, "the engine did not report it")

    def _profile_unit(self, engine, unit: Unit, folder: UnitDir) -> None:
        """One pass (`folder`'s launch) of the unit's prompts on its own server under nsys,
        collected only around the pass (after start-up and warm-up; `server.profile_window()`)."""
        path = folder.result(PROFILE_LABEL, folder.launch_index)
        own = (folder.profile_marker, folder.nsys_report, folder.server_log, folder.provenance)
        for stale in (*own, path):
            stale.unlink(missing_ok=True)  # partial output of an interrupted pass
        folder.path.mkdir(parents=True, exist_ok=True)
        report = folder.nsys_report
        log = folder.server_log
        prompts = load_prompts(unit.prompts_file)
        server = engine.start(unit.mode, unit.limits, log, nsys_report=report)
        try:
            capabilities = self._warm_up(server, unit)
            provenance = self._provenance(engine, server, unit, folder.provenance)
            with server.profile_window():  # the report holds this pass only
                result = asyncio.run(
                    run_benchmark(
                        bench_config(server.base_url, server.model_id, unit.bench),
                        prompts,
                        label=PROFILE_LABEL,
                        repetition=folder.launch_index,
                        server_info={
                            **server_info(unit, provenance),
                            "nsys_report": report.name,
                            "launch": folder.launch_index,
                        },
                        capabilities=capabilities,
                    )
                )
            server.check_alive(f"{unit.key} (profiled pass)")
        finally:
            code = server.stop()
        if not report.is_file():
            raise StageFailed(
                f"{report}: no nsys report after the profiled server stopped (exit code "
                f"{code}); last lines of {log}:\n{log_tail(log)}"
            )
        completed = self._write_result(result, path).completed
        if completed != len(prompts):
            raise StageFailed(
                f"{path}: only {completed} of {len(prompts)} profiled requests completed"
            )
        write_record(folder.provenance, provenance)
        marker = ProfileRecord(
            **unit.identity(),
            report=report.name,
            report_bytes=report.stat().st_size,
            result=path.name,
            completed=completed,
        )
        write_record(folder.profile_marker, marker)

    def _balancedness_unit(self, engine, unit: Unit, folder: UnitDir) -> None:
        """One untimed pass of the unit's prompts on its own server, started as the timed
        arm's plus LOG_BALANCEDNESS; the balancedness vLLM logged during the pass (after
        start-up and warm-up), parsed from the server's log once it stopped."""
        shutil.rmtree(folder.path, ignore_errors=True)  # partial output of an interrupted pass
        log = folder.server_log
        prompts = load_prompts(unit.prompts_file)
        server = engine.start(unit.mode, unit.limits, log, extra_args=(LOG_BALANCEDNESS,))
        try:
            capabilities = self._warm_up(server, unit)
            # checked against the mode as the timed arm's server is (build, EPLB on, manager)
            self._provenance(engine, server, unit, log)
            before = len(server.provenance().get("eplb_balancedness", []))
            result = asyncio.run(
                run_benchmark(
                    bench_config(server.base_url, server.model_id, unit.bench),
                    prompts,
                    label=DIAGNOSTIC,
                    capabilities=capabilities,
                )
            )
            server.check_alive(f"{unit.label} pass")
        finally:
            server.stop()
        provenance = server.provenance()  # the whole log, written out by the stopped server
        values = provenance.get("eplb_balancedness", [])[before:]
        completed = sum(not r.error for r in result.records)
        if completed != len(prompts) or not values:
            raise StageFailed(
                f"{log}: {completed} of {len(prompts)} diagnostic requests completed, "
                f"{len(values)} 'EPLB step: ... balancedness=' lines logged during them "
                f"(is EPLB on and the flag accepted?); last lines:\n{log_tail(log)}"
            )
        record = BalancednessRecord(
            **unit.identity(),
            log=log.name,
            argv=provenance["launch"]["argv"],
            completed=completed,
            values=values,
            count=len(values),
            min=min(values),
            mean=float(np.mean(values)),
            max=max(values),
        )
        write_record(folder.balancedness, record)

    @staticmethod
    def _write_result(result, path: Path) -> ResultFile:
        record = validate_record(result_to_vllm_json(result), ResultFile, path)
        write_record(path, record)
        return record

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
        launch: int,
        layout: RunLayout,
        provenance: Provenance,
        replayer: Replayer | None,
    ) -> int:
        """Launch `launch`'s measured runs of the unit; the unit's record when it was the last."""
        folder = unit.folder(layout)
        earlier = [r for r in unit.finished_runs(layout) if r.launch != launch]
        kept = {name for r in earlier for name in (r.result, r.routing)}
        for stale in folder.runs(RUN_LABEL):  # partial output of an interrupted launch
            if stale.name not in kept:
                stale.unlink()
        folder.path.mkdir(parents=True, exist_ok=True)
        prompts = load_prompts(unit.prompts_file)
        config = bench_config(server.base_url, server.model_id, unit.bench)
        info = {**server_info(unit, provenance), "launch": launch}
        runs = []
        first = launch * unit.bench.repeat
        for rep in range(first, first + unit.bench.repeat):
            routing = folder.routing(RUN_LABEL, rep)
            meta = {"unit": unit.key, "repetition": rep, "launch": launch}
            server.start_routing(routing, meta=meta)
            try:
                result = asyncio.run(
                    run_benchmark(
                        config,
                        prompts,
                        label=RUN_LABEL,
                        repetition=rep,
                        server_info=info,
                        capabilities=capabilities,
                    )
                )
            finally:
                server.check_alive(f"{unit.key} repetition {rep}")
                stats = server.stop_routing()
            path = folder.result(RUN_LABEL, rep)
            data = self._write_result(result, path)
            if data.completed != len(prompts):
                raise StageFailed(
                    f"{path}: only {data.completed} of {len(prompts)} requests "
                    f"completed; first error: {next(e for e in data.errors if e)}"
                )
            totals = check_routing_totals(routing, data, provenance.top_k)
            replay_ok, mismatch = None, None
            if replayer is not None:
                # vLLM runs its own MoE kernel: replayed by transformers' reference loop
                implementation = provenance.experts_implementation or "eager"
                expected = replayer.prompt_counts(
                    implementation,
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
                UnitRun(
                    repetition=rep,
                    launch=launch,
                    result=path.name,
                    routing=routing.name,
                    capture=stats,
                    **totals,
                    replay_match=replay_ok,
                    replay_mismatch=mismatch,
                )
            )
        every = sorted(earlier + runs, key=lambda r: r.repetition)
        if {r.launch for r in every} == set(range(unit.bench.launches)):
            write_record(folder.record, UnitRecord(**unit.identity(), runs=every))
            folder.partial_record.unlink(missing_ok=True)
        else:
            write_record(folder.partial_record, UnitRecord(**unit.identity(), runs=every))
        return len(runs)


STAGE = BenchStage()
