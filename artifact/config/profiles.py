"""Profiles: `reproduce/profiles/<name>.yaml`, validated on load.

A profile names the model, the engine, the modes (named server configurations), the
experiments and the hardware it expects. Validation is strict (unknown fields are errors) and
every error names the file, the field and what is allowed, in one line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from artifact.config.loader import read_yaml, validate
from artifact.core.errors import ArtifactError
from artifact.core.layout import SAFE_NAME_RULE, safe_name

PROFILE_DIR_ENV = "MOE_ARTIFACT_PROFILE_DIR"
SLURM_TIME = re.compile(r"(\d+-)?\d{1,2}:\d{2}:\d{2}")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
# Architecture fields of a seeded model that count something: each at least 1.
ARCHITECTURE_COUNTS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "num_local_experts",
    "num_experts_per_tok",
    "max_position_embeddings",
)
Count = Annotated[int, Field(ge=1)]


def project_root() -> Path:
    """The checkout root (where reproduce/ and expected_results/ live)."""
    return Path(__file__).resolve().parents[2]


def profile_dir() -> Path:
    return Path(os.environ.get(PROFILE_DIR_ENV, project_root() / "reproduce" / "profiles"))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hardware(Strict):
    kind: Literal["cpu", "cuda"]
    gpus: int = Field(0, ge=0)
    gpu_model: str | None = None
    min_cpu_cores: int = Field(1, ge=1)
    description: str = ""


class ModelSpec(Strict):
    name: str
    source: Literal["seeded", "hub"]
    hub_id: str | None = None
    seed: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # MixtralConfig keyword arguments for a seeded model (hidden_size, num_local_experts, ...).
    architecture: dict[str, int | float] = Field(default_factory=dict)
    max_model_len: int = Field(4096, ge=16)

    @field_validator("architecture")
    @classmethod
    def _shape(cls, arch: dict[str, int | float]) -> dict[str, int | float]:
        for key in ARCHITECTURE_COUNTS:
            value = arch.get(key, 1)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} is {value!r}; allowed: a whole number >= 1")
        experts, top_k = arch.get("num_local_experts"), arch.get("num_experts_per_tok")
        if experts is not None and top_k is not None and top_k > experts:
            raise ValueError(
                f"num_experts_per_tok is {top_k}, more than num_local_experts {experts}; "
                "allowed: 1 <= num_experts_per_tok <= num_local_experts"
            )
        for key in ("rms_norm_eps", "rope_theta"):
            if key in arch and not arch[key] > 0:
                raise ValueError(f"{key} is {arch[key]!r}; allowed: a number > 0")
        return arch

    @model_validator(mode="after")
    def _source_fields(self) -> ModelSpec:
        if self.source == "hub" and not self.hub_id:
            raise ValueError("source 'hub' needs hub_id (e.g. mistralai/Mixtral-8x7B-v0.1)")
        if self.source == "seeded" and not self.architecture:
            raise ValueError("source 'seeded' needs architecture (MixtralConfig fields)")
        return self


class Engine(Strict):
    kind: Literal["transformers", "vllm"]
    # Servers listen here without authentication: loopback only, unless allow_remote_host.
    host: str = "127.0.0.1"
    allow_remote_host: bool = False
    device: Literal["cpu", "cuda"] = "cpu"
    startup_timeout_s: float = Field(600.0, gt=0)
    # transformers only: the share of prompt-token expert assignments a server run may route
    # differently from the offline replay of the same prompts (0: exactly equal; the prompt
    # tokens per layer must match in any case). Exact on a CPU in float32; in bf16 on a GPU
    # the batched pass and the one-prompt replay round differently, so a token whose top-2
    # scores nearly tie can flip expert.
    replay_tolerance: float = Field(0.0, ge=0.0, le=1.0)
    # vLLM only: how the server process is launched and which vLLM it is.
    launcher: Literal["bare", "podman-hpc", "apptainer"] = "bare"
    image: str | None = None
    vllm_ref: str | None = None
    # vLLM, launcher bare: the virtual environment whose `bin/vllm` serves (relative to the
    # checkout root; `nox -s vllm-env` builds .nox/vllm-cpu) instead of the `vllm` on PATH.
    venv: str | None = None
    # vLLM: variables every mode's server gets (a mode's own `env` wins), e.g. VLLM_CPU_*.
    env: dict[str, str] = Field(default_factory=dict)
    # vLLM in a container: extra bind mounts ("host:container[:opts]", $VARS expanded at
    # launch), the Hugging Face cache to mount and point HF_HOME at, /dev/shm size.
    mounts: list[str] = Field(default_factory=list)
    hf_home: str | None = None
    shm_size: str | None = None
    # `nsys profile --trace` for modes or experiments that ask for kernel traces.
    nsys_trace: str = "cuda,nvtx"

    @model_validator(mode="after")
    def _loopback(self) -> Engine:
        if self.host not in LOOPBACK and not self.allow_remote_host:
            raise ValueError(
                f"host is {self.host!r}; allowed: {', '.join(LOOPBACK)} (the servers have no "
                "authentication); set engine.allow_remote_host: true to listen on another address"
            )
        return self


class EplbSettings(Strict):
    """vLLM's EPLB knobs (--eplb-config at >= 0.10.2, the older separate flags before)."""

    window_size: int | None = Field(None, ge=1)
    step_interval: int | None = Field(None, ge=1)
    num_redundant_experts: int | None = Field(None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _no_balancedness(cls, data: Any) -> Any:
        # An all_reduce and a host sync per step: never on a timed or profiled server.
        if isinstance(data, dict) and "log_balancedness" in data:
            raise ValueError(
                "log_balancedness is no mode setting (it perturbs the timed servers); set "
                "experiments.eplb_ablation.balancedness_pass: true for the untimed diagnostic pass"
            )
        return data


class Mode(Strict):
    """A named server configuration. Which fields apply depends on the engine."""

    description: str = ""
    # transformers: the experts implementation of the MoE blocks (eager, grouped_mm, ...).
    experts_implementation: str | None = None
    # vLLM parallelism and MoE path.
    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)
    enable_expert_parallel: bool = False
    enable_eplb: bool = False
    all2all_backend: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    extra_args: list[str] = Field(default_factory=list)
    # vLLM only: EPLB tuning, the MoE kernel the mode claims (checked against the server's
    # log), another image / vLLM build than the engine's, and kernel traces: `nsys: true`
    # adds to each of the mode's bench units one profiled pass on a server of its own under
    # `nsys profile`, after the timed runs (profiling perturbs timing: timed runs never use it).
    eplb: EplbSettings | None = None
    moe_kernel: Literal["triton_fused_moe", "flashinfer_cutlass_moe"] | None = None
    image: str | None = None
    vllm_ref: str | None = None
    nsys: bool = False


class DatasetsSpec(Strict):
    seed: int = 20251201
    count: int = Field(50, ge=1, le=999)
    prompts_per_dataset: int = Field(30, ge=2)


RequestRate = float | Literal["inf"]


class BenchSpec(Strict):
    """Client settings shared by every experiment unless an experiment overrides them."""

    request_rate: RequestRate = "inf"
    burstiness: float = Field(1.0, gt=0)
    max_concurrency: int | None = Field(None, ge=1)
    output_len: int | None = Field(None, ge=1)
    warmup_requests: int = Field(0, ge=0)
    # Independent server launches per unit, each with `repeat` measured runs; the launches of
    # an experiment's units are interleaved (round 1: every unit, round 2: every unit ...).
    launches: int = Field(1, ge=1)
    repeat: int = Field(1, ge=1)
    seed: int = 0
    request_timeout_s: float = Field(600.0, gt=0)
    metric_percentiles: list[Annotated[float, Field(gt=0, lt=100)]] = Field(
        default_factory=lambda: [50.0, 90.0, 99.0]
    )

    @field_validator("request_rate")
    @classmethod
    def _rate(cls, v: RequestRate) -> RequestRate:
        if v != "inf" and (not isinstance(v, float | int) or v <= 0 or math.isinf(v)):
            raise ValueError("request_rate must be 'inf' or a positive number of requests/s")
        return v


class ConfigSweep(Strict):
    """Experiment 1: max-num-seqs x max-num-batched-tokens, one server per (mode, config)."""

    enabled: bool = True
    modes: list[str] = Field(min_length=1)
    max_num_seqs: list[Count] = Field(min_length=1)
    max_num_batched_tokens: list[Count] = Field(min_length=1)
    # The study's cross: vary one knob at the other's fixed value. `full` runs the whole grid.
    grid: Literal["cross", "full"] = "cross"
    fixed_max_num_seqs: Count
    fixed_max_num_batched_tokens: Count
    prompts: int = Field(50, ge=1)
    bench: BenchSpec = Field(default_factory=BenchSpec)


class EplbAblation(Strict):
    """Experiment 2: the same EP server with EPLB off and on."""

    enabled: bool = True
    skip_reason: str | None = None
    modes: list[str] = Field(default_factory=list)
    max_num_seqs: Count = 32
    max_num_batched_tokens: Count = 8192
    # Prompts of datasets/eplb_prompts.jsonl (drawn like the sweep's, another seed stream).
    prompts: int = Field(50, ge=1)
    # One profiled pass per mode and launch (its own server under nsys) after the timed runs.
    nsys: bool = False
    # One untimed diagnostic pass per EPLB arm after the timed runs: its own server with
    # `--eplb-log-balancedness`, the prompts sent once, the balancedness vLLM logs recorded.
    balancedness_pass: bool = False
    bench: BenchSpec = Field(default_factory=BenchSpec)

    @model_validator(mode="after")
    def _reason(self) -> EplbAblation:
        if not self.enabled and not self.skip_reason:
            raise ValueError("a disabled EPLB ablation needs skip_reason (say why it cannot run)")
        return self


class ImbalanceSensitivity(Strict):
    """Experiment 3: one server per mode reused across the generated datasets."""

    enabled: bool = True
    modes: list[str] = Field(min_length=1)
    # How many of the generated datasets to run, chosen evenly over the score range.
    datasets: int | Literal["all"] = "all"
    max_num_seqs: Count = 32
    max_num_batched_tokens: Count = 8192
    bench: BenchSpec = Field(default_factory=BenchSpec)

    @field_validator("datasets", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        if value != "all" and (type(value) is not int or value < 1):
            raise ValueError(f"got {value!r}; allowed: a whole number >= 1, or 'all'")
        return value


class Experiments(Strict):
    config_sweep: ConfigSweep | None = None
    eplb_ablation: EplbAblation | None = None
    imbalance: ImbalanceSensitivity | None = None


ExperimentName = Literal["config_sweep", "eplb_ablation", "imbalance"]
EXPERIMENT_NAMES: tuple[str, ...] = get_args(ExperimentName)
# Comma-separated experiment names: the serve and bench stages run only these (one Slurm job
# per experiment sets it); unset, they run every enabled experiment.
EXPERIMENTS_ENV = "MOE_ARTIFACT_EXPERIMENTS"


def enabled_experiments(profile: Profile) -> list[str]:
    """The profile's enabled experiments, in pipeline order."""
    return [
        name
        for name in EXPERIMENT_NAMES
        if (exp := getattr(profile.experiments, name)) is not None and exp.enabled
    ]


def selected_experiments(profile: Profile) -> list[str]:
    """The experiments to run now: those named in $MOE_ARTIFACT_EXPERIMENTS, else all enabled.

    A name that is no experiment, or one this profile lacks or disables, is an error (a job
    that silently ran nothing would look like a finished one).
    """
    value = os.environ.get(EXPERIMENTS_ENV, "").strip()
    enabled = enabled_experiments(profile)
    if not value:
        return enabled
    names = [n.strip() for n in value.split(",") if n.strip()]
    for name in names:
        if name not in EXPERIMENT_NAMES:
            raise ArtifactError(
                f"{EXPERIMENTS_ENV} names {name!r}, not an experiment; valid names: "
                f"{', '.join(EXPERIMENT_NAMES)} (comma-separated)"
            )
        if name not in enabled:
            exp = getattr(profile.experiments, name)
            why = (getattr(exp, "skip_reason", None) or "disabled") if exp else "not configured"
            raise ArtifactError(
                f"{EXPERIMENTS_ENV} names {name!r}, which profile '{profile.name}' does not "
                f"run ({why.strip()}); enabled: {', '.join(enabled) or 'none'}"
            )
    return [n for n in EXPERIMENT_NAMES if n in names]


class SlurmSpec(Strict):
    """Batch settings for HPC profiles (reproduce/<site>/*.sbatch read them at submit time)."""

    account: str | None = None  # else $MOE_ARTIFACT_SLURM_ACCOUNT
    constraint: str = "gpu"
    qos: str = "regular"
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(4, ge=1)
    # Wall time per experiment (HH:MM:SS), and QoS where it differs from `qos`.
    time: dict[ExperimentName, str] = Field(default_factory=dict)
    qos_per_experiment: dict[ExperimentName, str] = Field(default_factory=dict)

    @field_validator("time")
    @classmethod
    def _times(cls, v: dict) -> dict:
        for key, value in v.items():
            if not SLURM_TIME.fullmatch(str(value)):
                raise ValueError(f"time.{key} must be HH:MM:SS or D-HH:MM:SS (got {value!r})")
        return v


class Profile(Strict):
    name: str
    description: str = ""
    hardware: Hardware
    model: ModelSpec
    engine: Engine
    modes: dict[str, Mode]
    datasets: DatasetsSpec = Field(default_factory=DatasetsSpec)
    experiments: Experiments = Field(default_factory=Experiments)
    slurm: SlurmSpec | None = None
    expected_results: str

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not safe_name(name):
            raise ValueError(f"got {name!r}; allowed: {SAFE_NAME_RULE} (it names runs/<name>)")
        return name

    @field_validator("modes")
    @classmethod
    def _mode_names(cls, modes: dict[str, Mode]) -> dict[str, Mode]:
        for name in modes:
            if not safe_name(name):
                raise ValueError(
                    f"mode name {name!r} is not allowed: it names a folder of the run directory; "
                    f"allowed: {SAFE_NAME_RULE}"
                )
        if not modes:
            raise ValueError("no modes; allowed: at least one named server configuration")
        return modes

    @model_validator(mode="after")
    def _modes_exist(self) -> Profile:
        for exp_name in EXPERIMENT_NAMES:
            exp = getattr(self.experiments, exp_name)
            for mode in getattr(exp, "modes", []) if exp else []:
                if mode not in self.modes:
                    raise ValueError(
                        f"experiments.{exp_name}.modes names '{mode}', "
                        f"not one of the profile's modes: {sorted(self.modes)}"
                    )
        ablation = self.experiments.eplb_ablation
        profiled = [f"modes.{n}.nsys" for n, m in self.modes.items() if m.nsys]
        if ablation is not None and ablation.nsys:
            profiled.append("experiments.eplb_ablation.nsys")
        if profiled and self.engine.kind != "vllm":
            raise ValueError(
                f"{', '.join(profiled)}: nsys kernel traces need engine.kind vllm "
                f"(the {self.engine.kind} engine cannot run under nsys profile)"
            )
        if ablation is not None and ablation.balancedness_pass:
            where = "experiments.eplb_ablation.balancedness_pass"
            if self.engine.kind != "vllm":
                raise ValueError(f"{where}: EPLB balancedness is logged by vLLM only")
            if not [m for m in ablation.modes if self.modes[m].enable_eplb]:
                raise ValueError(
                    f"{where}: none of experiments.eplb_ablation.modes has enable_eplb "
                    "(the pass runs the EPLB arm only)"
                )
        return self

    # Where it came from and its content hash; set by load_profile, not part of the YAML.
    _path: Path | None = None
    _raw: dict | None = None

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def raw(self) -> dict:
        """The profile as read from its YAML (as validated, for one built in code)."""
        return self._raw if self._raw is not None else self.model_dump(mode="json")

    def section_hash(self, *sections: str) -> str:
        """sha256 over the named top-level sections (all of them when none are named)."""
        raw = self.raw
        keys = sections or tuple(sorted(raw))
        blob = json.dumps({k: raw.get(k) for k in keys}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def default_profile_name() -> str:
    return "perlmutter" if os.environ.get("NERSC_HOST") == "perlmutter" else "local"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in profile_dir().glob("*.yaml"))


def parse_profile(raw: Any, path: Path) -> Profile:
    profile = validate(Profile, raw, path, not_mapping="a profile must be a YAML mapping of fields")
    expected_name = path.stem
    if profile.name != expected_name:
        raise ArtifactError(
            f"name is '{profile.name}' but the file is {path.name}; make them agree",
            path=path,
            where="field 'name'",
        )
    profile._path = path
    profile._raw = raw
    return profile


def load_profile(name_or_path: str | Path | None = None) -> Profile:
    """Load a profile by name (from reproduce/profiles) or by path; validate it."""
    if name_or_path is None:
        name_or_path = default_profile_name()
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        path = candidate
    else:
        path = profile_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(available_profiles()) or "none found"
        raise ArtifactError(f"no such profile; available: {known}", path=path)
    return parse_profile(read_yaml(path), path)
