"""`moe-artifact calibrate`: A/A launches of one configuration; the margins their spread implies.

    moe-artifact calibrate --profile local [--launches 4] [--mode M] [--run-dir DIR]

Runs the profile's config-sweep fixed point (max-num-seqs and max-num-batched-tokens fixed,
one mode: the sweep's first unless --mode) on `--launches` independent server starts, each
with the sweep's warm-up and `repeat` measured runs, through the ordinary install, datasets,
serve and bench stages (a derived profile `<profile>-calibrate`, written into its run
directory, default `runs/<profile>-calibrate`; resumable like any run). Every launch runs the
same configuration, so any difference between two launches is noise: per metric (mean TTFT,
mean TPOT, output throughput) it takes each launch's median, the relative difference of
every pair of launches |m_i - m_j| / mean(m_i, m_j), and their largest, the smallest
relative margin an equivalence or non-inferiority claim can use without calling noise a
difference. It writes `calibrate/calibration.json` (CalibrationRecord) and prints the
margins; reproduce/CLAIMS.md records the run that set the claims' margins.
"""

from __future__ import annotations

import argparse
import copy
import itertools
from pathlib import Path

import numpy as np
import yaml

from artifact.config.profiles import Profile, default_profile_name, load_profile
from artifact.core.console import console
from artifact.core.errors import ArtifactError
from artifact.core.io import atomic_write_text
from artifact.core.manifest import RunDir
from artifact.core.records import (
    CalibrationRecord,
    MetricCalibration,
    ResultFile,
    UnitRecord,
    read_record,
    write_record,
)
from artifact.core.runner import StageContext, run_stage
from artifact.stages import load_stage

METRICS = ("mean_ttft_ms", "mean_tpot_ms", "output_throughput")
STAGES = ("install", "datasets", "serve", "bench")


def calibration_profile(profile: Profile, mode: str | None, launches: int) -> dict:
    """The raw profile of the A/A run: the sweep's fixed point, one mode, `launches` launches."""
    sweep = profile.experiments.config_sweep
    if sweep is None or not sweep.enabled:
        raise ArtifactError(
            "calibrate runs the config sweep's fixed point: this profile has no enabled sweep",
            path=profile.path,
            where="field 'experiments.config_sweep'",
        )
    mode = mode or sweep.modes[0]
    if mode not in profile.modes:
        raise ArtifactError(
            f"--mode {mode}: no such mode; modes: {', '.join(profile.modes)}", path=profile.path
        )
    raw = copy.deepcopy(profile.raw)
    raw["name"] = f"{profile.name}-calibrate"
    raw.pop("slurm", None)
    point = {
        **raw["experiments"]["config_sweep"],
        "enabled": True,
        "modes": [mode],
        "max_num_seqs": [sweep.fixed_max_num_seqs],
        "max_num_batched_tokens": [sweep.fixed_max_num_batched_tokens],
    }
    point["bench"] = {**point.get("bench", {}), "launches": launches}
    raw["experiments"] = {"config_sweep": point}
    return raw


def calibrate_metric(by_launch: list[list[float]]) -> MetricCalibration:
    """The A/A spread of one metric, from its values per launch (at least 2 launches)."""
    medians = [float(np.median(v)) for v in by_launch]
    diffs = [abs(a - b) / ((a + b) / 2) for a, b in itertools.combinations(medians, 2)]
    m = np.asarray(medians)
    run_cvs = [float(np.std(v, ddof=1) / np.mean(v)) for v in by_launch if len(v) > 1]
    return MetricCalibration(
        launch_medians=medians,
        aa_rel_diffs=diffs,
        max_rel_diff=max(diffs),
        launch_cv=float(m.std(ddof=1) / m.mean()),
        run_cv=float(np.median(run_cvs)) if run_cvs else 0.0,
    )


def calibration(unit_record: Path, profile: Profile) -> CalibrationRecord:
    """The calibration record of the A/A run's one unit."""
    unit = read_record(unit_record, UnitRecord)
    values: dict[str, dict[int, list[float]]] = {m: {} for m in METRICS}
    for run in unit.runs:
        result = read_record(unit_record.parent / run.result, ResultFile)
        for metric in METRICS:
            values[metric].setdefault(run.launch, []).append(float(result.get(metric)))
    sweep = profile.experiments.config_sweep
    assert sweep is not None  # calibration_profile made it
    return CalibrationRecord(
        profile=profile.name,
        mode=unit.mode,
        max_num_seqs=unit.max_num_seqs,
        max_num_batched_tokens=unit.max_num_batched_tokens,
        launches=sweep.bench.launches,
        repeat=sweep.bench.repeat,
        metrics={m: calibrate_metric(list(values[m].values())) for m in METRICS},
    )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=None, help="profile name or YAML path")
    parser.add_argument("--mode", default=None, help="the mode to run (default: the sweep's first)")
    parser.add_argument(
        "--launches", type=int, default=4, help="independent server launches (>= 2; default 4)"
    )
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="default: runs/<profile>-calibrate"
    )


def run_tool(args: argparse.Namespace) -> int:
    if args.launches < 2:
        raise ArtifactError(f"--launches {args.launches}: an A/A comparison needs at least 2")
    base = load_profile(args.profile or default_profile_name())
    raw = calibration_profile(base, args.mode, args.launches)
    run_dir = RunDir(args.run_dir or Path("runs") / raw["name"])
    path = run_dir.layout.calibration_profile(raw["name"])
    atomic_write_text(path, yaml.safe_dump(raw, sort_keys=False))
    profile = load_profile(path)
    ctx = StageContext(profile=profile, run_dir=run_dir)
    for name in STAGES:
        run_stage(load_stage(name), ctx)
    (unit,) = run_dir.layout.bench_unit_records()
    record = calibration(unit, profile)
    write_record(run_dir.layout.calibration, record)
    console.print(
        f"calibrate: {record.mode} at max-num-seqs {record.max_num_seqs}, max-num-batched-tokens "
        f"{record.max_num_batched_tokens}: {record.launches} launches x {record.repeat} runs "
        f"-> {run_dir.layout.calibration}"
    )
    for metric, cal in record.metrics.items():
        console.print(
            f"  {metric}: launch medians {', '.join(f'{v:.4g}' for v in cal.launch_medians)}; "
            f"A/A relative difference up to {cal.max_rel_diff:.1%} (launch CV "
            f"{cal.launch_cv:.1%}, runs within a launch {cal.run_cv:.1%}): a relative margin "
            f"below {cal.max_rel_diff:.1%} calls noise a difference",
            soft_wrap=True,
        )
    return 0
