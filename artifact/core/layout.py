"""Every path inside a run directory (`runs/<profile>/`), named here and nowhere else.

```
manifest.json                      one record per stage (artifact.core.manifest)
install/model.json, images.json    what the engine serves
datasets/metadata.json             the suite: one entry per NNN_<score>.jsonl beside it
datasets/sweep_prompts.jsonl, eplb_prompts.jsonl
serve/<mode>/provenance.json, server.log
bench/<experiment>/<mode>/...      a unit folder (UnitDir) per unit; imbalance units share
                                   their mode's server folder, one level up; with several
                                   launches, launch k >= 1's server files are named
                                   server.launchNN.log, provenance.launchNN.json
bench/<unit>/profile/              its profiled passes under nsys, pass k >= 1's files named
                                   server.launchNN.nsys-rep, profile.launchNN.json
bench/<unit>/diagnostic/           the EPLB arm's untimed balancedness pass (balancedness.json)
bench/replay/                      offline replays of the prompt sets
imbalance/<table>.csv|json, eplb.json, nsys/<report path>.kernels.csv
plots/figures.json, report.md, report.html
check/claims.json, claims.md
calibrate/calibration.json         A/A launches (runs/<profile>-calibrate), beside
                                   calibrate/<profile>-calibrate.yaml, the profile they ran
kernels/, parallel/ (GPU stages: replay_loads.json, summary.json, torchrun.log)
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from artifact.core.errors import ArtifactError
from artifact.core.tables import table_file

RUN_LABEL = "run"  # measured runs: run.repNN.json and run.repNN.routing
PROFILE_LABEL = "profile"  # the profiled pass: profile.rep00.json beside server.nsys-rep
UNIT_RECORD = "unit.json"
UNIT_PARTIAL = "unit.partial.json"  # the launches of a unit finished so far
PROVENANCE = "provenance.json"
BALANCEDNESS = "balancedness.json"
# A name that becomes one path component (profile, mode, experiment, dataset, image).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SAFE_NAME_RULE = "letters, digits, '_', '.', '-', starting with a letter or digit, no '..'"
SET_ASIDE = ".old-"  # `<stage>.old-<time>/`: outputs moved aside, never deleted silently


def safe_name(name: str) -> bool:
    return bool(SAFE_NAME.fullmatch(name)) and ".." not in name


def launch_of(server_file: Path) -> int:
    """The launch a server file belongs to (`provenance.launch02.json`: 2; plain names: 0)."""
    found = re.search(r"\.launch(\d+)\.", server_file.name)
    return int(found.group(1)) if found else 0


@dataclass(frozen=True)
class UnitDir:
    """A folder of one server's files: a serve mode, a bench unit or its profiled pass.
    With several launches, launch k >= 1's server files sit beside launch 0's (in the
    folder the server may write routing logs under), named `<name>.launchNN.<ext>`."""

    path: Path
    launch_index: int = 0

    def _server_file(self, name: str) -> Path:
        if self.launch_index:
            stem, ext = name.split(".", 1)
            name = f"{stem}.launch{self.launch_index:02d}.{ext}"
        return self.path / name

    @property
    def record(self) -> Path:
        """`unit.json`: a timed unit is finished when it exists."""
        return self.path / UNIT_RECORD

    @property
    def partial_record(self) -> Path:
        """`unit.partial.json`: the runs of the launches finished so far, while some are not."""
        return self.path / UNIT_PARTIAL

    def launch(self, index: int) -> UnitDir:
        """The same folder with launch `index`'s server files (launch 0: the plain names)."""
        return UnitDir(self.path, index)

    @property
    def profile_marker(self) -> Path:
        """`profile.json`: a profiled pass is finished when it exists (pass k >= 1 of the
        EPLB ablation's: `profile.launchNN.json`)."""
        return self._server_file("profile.json")

    @property
    def provenance(self) -> Path:
        return self._server_file(PROVENANCE)

    @property
    def server_log(self) -> Path:
        return self._server_file("server.log")

    @property
    def startup_failure(self) -> Path:
        """`startup-failure.json`: a serve mode whose server exited during start-up."""
        return self.path / "startup-failure.json"

    @property
    def routing_control(self) -> Path:
        """The routing plugin's control file (vLLM engine), beside the server log."""
        return self._server_file("routing-control.json")

    @property
    def nsys_report(self) -> Path:
        return self._server_file("server.nsys-rep")

    @property
    def profile(self) -> UnitDir:
        """The profiled pass of this unit, in a folder of its own."""
        return UnitDir(self.path / "profile")

    @property
    def diagnostic(self) -> UnitDir:
        """The untimed diagnostic pass of this unit (EPLB balancedness), in a folder of its own."""
        return UnitDir(self.path / "diagnostic")

    @property
    def balancedness(self) -> Path:
        """`balancedness.json`: a diagnostic pass is finished when it exists."""
        return self.path / BALANCEDNESS

    def result(self, label: str, repetition: int) -> Path:
        """A run's result file (vLLM's schema), `<label>.repNN.json`."""
        return self.path / f"{label}.rep{repetition:02d}.json"

    def routing(self, label: str, repetition: int) -> Path:
        """The routing log of exactly that run's forward passes."""
        return self.result(label, repetition).with_suffix(".routing")

    def runs(self, label: str = RUN_LABEL) -> list[Path]:
        """Every file of the measured runs (results and routing logs)."""
        return sorted(self.path.glob(f"{label}.rep*"))


class RunLayout:
    """The run directory's paths; see the module docstring for the tree."""

    def __init__(self, root: str | Path, elsewhere: dict[str, Path] | None = None):
        self.root = Path(root)
        # Stages whose outputs go to another folder (check, plots on a read-only run dir).
        self.elsewhere = elsewhere or {}

    def inside(self, *names: str) -> Path:
        """root/<names...>, each a safe name (a hostile mode or file name cannot leave root)."""
        for name in names:
            if not safe_name(name):
                raise ArtifactError(
                    f"{name!r} cannot name a folder of the run directory; allowed: "
                    + SAFE_NAME_RULE,
                    path=self.root,
                )
        return self.root.joinpath(*names)

    def stage(self, name: str) -> Path:
        """The folder of a stage's outputs."""
        return self.elsewhere.get(name) or self.inside(name)

    def set_aside(self, stage: str, stamp: str) -> Path:
        """`<stage>.old-<stamp>/`: where outputs that are no longer current are moved."""
        return self.inside(f"{stage}{SET_ASIDE}{stamp}")

    # manifest
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def manifest_lock(self) -> Path:
        return self.root / ".manifest.lock"

    @property
    def run_lock(self) -> Path:
        """flock'ed while a stage runs (artifact.core.lock); its holder is in run_lock_record."""
        return self.root / ".lock"

    @property
    def run_lock_record(self) -> Path:
        return self.root / ".lock.json"

    # install
    @property
    def model_record(self) -> Path:
        return self.stage("install") / "model.json"

    @property
    def images_record(self) -> Path:
        return self.stage("install") / "images.json"

    @property
    def vllm_surface(self) -> Path:
        """`install/vllm-surface.json`: flags and variables read from the installed vLLM."""
        return self.stage("install") / "vllm-surface.json"

    def image_record(self, name: str, suffix: str = "json") -> Path:
        """`install/images/<name>.<suffix>`: one built image (`.build.json`: the build's info)."""
        return self.inside("install", "images", f"{name}.{suffix}")

    def install_log(self, name: str) -> Path:
        """`install/logs/<name>.log`: an image build or the weights download."""
        return self.inside("install", "logs", f"{name}.log")

    # datasets
    @property
    def dataset_metadata(self) -> Path:
        return self.stage("datasets") / "metadata.json"

    def dataset(self, filename: str) -> Path:
        """A dataset file, by the name metadata.json gives it."""
        return self.inside("datasets", filename)

    def dataset_files(self) -> list[Path]:
        """The suite's dataset files now on disk (`NNN_<score>.jsonl`)."""
        return sorted(self.stage("datasets").glob("[0-9]*.jsonl"))

    @property
    def sweep_prompts(self) -> Path:
        return self.stage("datasets") / "sweep_prompts.jsonl"

    @property
    def eplb_prompts(self) -> Path:
        return self.stage("datasets") / "eplb_prompts.jsonl"

    # serve
    def serve_mode(self, mode: str) -> UnitDir:
        return UnitDir(self.inside("serve", mode))

    # bench
    def bench_experiment(self, experiment: str) -> Path:
        return self.inside("bench", experiment)

    def bench_unit(self, key: str) -> UnitDir:
        """A unit's folder: `<experiment>/<mode>[/<limits label or dataset>]` under bench/."""
        return UnitDir(self.inside("bench", *key.split("/")))

    def bench_unit_records(self) -> list[Path]:
        """Every finished timed unit's `unit.json`, in path order."""
        return sorted(self.stage("bench").rglob(UNIT_RECORD))

    def bench_provenances(self) -> list[Path]:
        """Every bench server's `provenance.json` (a mode's, a sweep unit's, a profiled pass's;
        `provenance.launchNN.json` of later launches)."""
        return sorted(self.stage("bench").rglob("provenance*.json"))

    def bench_balancedness(self) -> list[Path]:
        """Every diagnostic pass's `balancedness.json`."""
        return sorted(self.stage("bench").rglob(BALANCEDNESS))

    def bench_reports(self) -> list[Path]:
        """Every nsys report of the profiled passes."""
        return sorted(self.stage("bench").rglob("*.nsys-rep"))

    def has_routing_logs(self) -> bool:
        bench = self.stage("bench")
        return bench.is_dir() and any(bench.rglob("*.routing"))

    @property
    def replay_cache(self) -> Path:
        return self.stage("bench") / "replay"

    # imbalance
    def table(self, name: str, ext: str = "json", stage: str = "imbalance") -> Path:
        """`<stage>/<name>.<ext>`: runs, correlations, per_layer, ..., eplb (stage imbalance,
        or study-import for a run directory of the study's data)."""
        return table_file(self.stage(stage), name, ext)

    def kernel_summary(self, report: Path) -> Path:
        """The CUDA kernel summary of an nsys report under bench/ (`nsys stats`)."""
        rel = report.relative_to(self.stage("bench"))
        return self.stage("imbalance") / "nsys" / rel.parent / f"{report.stem}.kernels.csv"

    # calibrate (a run directory of its own, runs/<profile>-calibrate)
    @property
    def calibration(self) -> Path:
        return self.stage("calibrate") / "calibration.json"

    def calibration_profile(self, name: str) -> Path:
        """The derived profile the A/A run ran (`calibrate/<name>.yaml`)."""
        return self.inside("calibrate", f"{name}.yaml")

    # plots and check
    @property
    def figures(self) -> Path:
        return self.stage("plots") / "figures.json"

    @property
    def report_md(self) -> Path:
        return self.stage("plots") / "report.md"

    @property
    def report_html(self) -> Path:
        return self.stage("plots") / "report.html"

    @property
    def claims_json(self) -> Path:
        return self.stage("check") / "claims.json"

    @property
    def claims_md(self) -> Path:
        return self.stage("check") / "claims.md"

    # GPU stages
    @property
    def parallel_replay_loads(self) -> Path:
        return self.stage("parallel") / "replay_loads.json"

    @property
    def parallel_summary(self) -> Path:
        return self.stage("parallel") / "summary.json"

    @property
    def parallel_log(self) -> Path:
        return self.stage("parallel") / "torchrun.log"
