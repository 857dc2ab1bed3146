"""What stages hand each other through files in the run directory, as pydantic models.

Paths come from artifact.core.layout. Every such file is read by `read_record` and written by
`write_record` (atomically): a missing file, bad JSON or a record that does not fit its model
(corrupt, or written by an older version) is one `ArtifactError` line naming the file, the
field and the stage to rerun.

- `manifest.json`: `Manifest`, one `StageRecord` per stage;
- `install/model.json`: `ModelRecord`;
- `datasets/metadata.json`: `DatasetMetadata`, one `DatasetEntry` per dataset file;
- `serve/<mode>/provenance.json`: `ServeProvenance`; a bench server's: `Provenance`;
- `bench/.../unit.json`: `UnitRecord`, one `UnitRun` per measured run; a profiled pass's
  `profile.json`: `ProfileRecord`; a diagnostic pass's `balancedness.json`: `BalancednessRecord`;
- `calibrate/calibration.json`: `CalibrationRecord`;
- `bench/.../<label>.repNN.json`: `ResultFile`, vLLM's `--save-result` schema (any file
  of that schema, ours or vLLM's; artifact.serving.results computes and verifies it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from artifact.core.errors import ArtifactError, FieldProblem, explain, more_errors
from artifact.core.io import atomic_write_json, read_json


class Record(BaseModel):
    """A file one stage writes and another reads."""

    model_config = ConfigDict(extra="forbid")
    # The stage that writes the file: a bad one is fixed by rerunning it.
    stage: ClassVar[str | None] = None


R = TypeVar("R", bound=Record)


def _rerun(model: type[Record], hint: str | None) -> str:
    if hint is None and model.stage:
        hint = f"rerun `moe-artifact {model.stage} --force`"
    return f"; {hint}" if hint else ""


def validate_record(data: Any, model: type[R], path: str | Path, hint: str | None = None) -> R:
    """`data` (parsed JSON) as `model`; a mismatch is one line naming the file and the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, message = explain(exc.errors()[0])
        raise ArtifactError(
            message + more_errors(exc.errors()) + _rerun(model, hint),
            path=path,
            where=f"field '{field}'" if field else None,
        ) from None


def read_record(path: str | Path, model: type[R], hint: str | None = None) -> R:
    """Read one record file; any problem is one ArtifactError line (see the module doc).

    `hint` says what to do about it; by default, rerun the stage that writes the file."""
    try:
        data = read_json(path)
    except ArtifactError as exc:
        raise ArtifactError(exc.detail + _rerun(model, hint), path=exc.path) from None
    return validate_record(data, model, path, hint)


def write_record(path: str | Path, record: Record) -> None:
    """Write atomically; only fields given or read are written, so a file reads back equal."""
    try:
        atomic_write_json(path, record.model_dump(mode="json", by_alias=True, exclude_unset=True))
    except OSError as exc:
        if exc.filename is None:  # a write() on a full disk names no file
            exc.filename = str(path)
        raise


# --- manifest.json --------------------------------------------------------------------------


class StageRecord(Record):
    """A stage's entry in manifest.json (artifact.core.runner writes it in two steps)."""

    model_config = ConfigDict(extra="allow")
    status: Literal["running", "complete", "failed"]
    start: str | None = None
    end: str | None = None
    error: str | None = None
    seconds: float | None = None
    inputs: dict[str, str] = {}
    profile_hash: str | None = None
    profile_sections: list[str] = []
    packages: dict[str, str | None] = {}
    git: dict[str, str | bool | None] = {}
    host: dict[str, Any] = {}
    experiments: list[str] | None = None
    summary: str | None = None
    details: dict[str, Any] = {}
    exit_code: int = 0
    outputs: dict[str, str] = {}


class Manifest(Record):
    model_config = ConfigDict(populate_by_name=True)
    schema_version: int = Field(1, alias="schema")
    profile: str | None = None
    profile_path: str | None = None
    stages: dict[str, StageRecord] = {}


# --- install ---------------------------------------------------------------------------------


class ModelRecord(Record):
    """`install/model.json`: where the served model is, with what built or fetched it."""

    model_config = ConfigDict(extra="allow")  # the seeded model's spec, or the hub snapshot's
    stage = "install"
    model_dir: str


class VllmSurfaceRecord(Record):
    """`install/vllm-surface.json`: what the launcher-bare vLLM accepts, read from its own
    argument parser (artifact.engines.vllm.surface) by the interpreter named here."""

    stage = "install"
    python: str
    version: str
    flags: list[str]
    env: list[str]


# --- datasets --------------------------------------------------------------------------------

Number = int | float  # kept as written: an int field must not come back as 1.0


class DatasetEntry(Record):
    index: int
    file: str
    family: str
    strategy: str
    params: dict[str, Any]
    seed: int
    n_samples: int
    score: float
    score_str: str
    components: dict[str, Number | None]
    raw_metrics: dict[str, Number]
    sha256: str


class DatasetMetadata(Record):
    stage = "datasets"
    generator_version: int
    seed: int
    prompts_per_dataset: int
    n_datasets: int
    candidates_scored: int
    weights: dict[str, Number]
    score_range: list[float]
    score_span: float
    max_gap: float
    score_mean: float
    score_std: float
    datasets: list[DatasetEntry]

    def scores(self) -> dict[str, float]:
        """Predicted score by dataset name (the file's stem)."""
        return {Path(d.file).stem: d.score for d in self.datasets}


# --- serve and bench: provenance -----------------------------------------------------------


class Provenance(Record):
    """What the live engine reported about itself (engine-specific keys beyond these)."""

    model_config = ConfigDict(extra="allow")
    stage = "bench"
    engine: str
    top_k: int
    experts_implementation: str | None
    versions: dict[str, Any] = {}


class Limits(Record):
    max_num_seqs: int
    max_num_batched_tokens: int


class ServeProvenance(Provenance):
    """`serve/<mode>/provenance.json`: the engine's provenance and the serve check's own."""

    stage = "serve"
    startup_seconds: float
    smoke_usage: dict[str, Any] | None
    limits: Limits


class StartupFailure(Record):
    """`serve/<mode>/startup-failure.json`: the mode's server died during start-up."""

    stage = "serve"
    mode: str
    error: str  # what the server's log ended in (vLLM's own refusal or crash)
    seconds: float
    log: str


def startup_failure(layout: Any, mode: str) -> str | None:
    """The error the serve stage recorded for a mode whose server died in start-up, else None."""
    path = layout.serve_mode(mode).startup_failure
    return read_record(path, StartupFailure).error if path.exists() else None


# --- bench: unit records -------------------------------------------------------------------


class UnitIdentity(Record):
    stage = "bench"
    experiment: Literal["config_sweep", "eplb_ablation", "imbalance"]
    mode: str
    dataset: str | None  # imbalance units: the dataset file's stem
    max_num_seqs: int
    max_num_batched_tokens: int
    prompts: str  # the prompt file's name under datasets/


class UnitRun(Record):
    repetition: int  # unique within the unit: launch x repeat + the run's index in its launch
    launch: int = 0  # the server launch that measured it (records before launches: 0)
    result: str  # file names in the unit's folder
    routing: str
    capture: dict[str, Any]  # what the engine's routing capture reported when it stopped
    processed_tokens: int
    assignments_per_layer: int
    replay_match: bool | None
    replay_mismatch: float | None


class UnitRecord(UnitIdentity):
    """`unit.json`: a finished timed unit and its measured runs (all its launches);
    `unit.partial.json`: the runs of the launches finished so far."""

    runs: list[UnitRun]


class ProfileRecord(UnitIdentity):
    """`profile.json`: a finished profiled pass (no measured runs)."""

    report: str
    report_bytes: int
    result: str
    completed: int


class BalancednessRecord(UnitIdentity):
    """`diagnostic/balancedness.json`: a finished diagnostic pass of an EPLB arm (untimed,
    its own server with `--eplb-log-balancedness`): the balancedness vLLM logged while the
    pass's prompts ran (its "EPLB step" lines carry no step number), in log order."""

    log: str  # the server log's name, beside this file
    argv: list[str]  # the server's command
    completed: int
    values: list[float]
    count: int
    min: float
    mean: float
    max: float


# --- calibrate --------------------------------------------------------------------------------


class MetricCalibration(Record):
    """One metric's launch-to-launch (A/A) spread at the calibrated configuration."""

    launch_medians: list[float]  # per launch, the median of its runs
    aa_rel_diffs: list[float]  # |m_i - m_j| / mean(m_i, m_j) for every pair of launches
    max_rel_diff: float  # the largest of them: the smallest margin that is not noise
    launch_cv: float  # std / mean of the launch medians
    run_cv: float  # within one launch: the median over launches of its runs' CV


class CalibrationRecord(Record):
    """`calibrate/calibration.json`: A/A launches of one configuration and the relative
    margins their spread implies (artifact.stages.calibrate)."""

    profile: str
    mode: str
    max_num_seqs: int
    max_num_batched_tokens: int
    launches: int
    repeat: int
    metrics: dict[str, MetricCalibration]


# --- bench: result files (vLLM's schema) -----------------------------------------------------

FORMAT = "moe-artifact-bench"
FORMAT_VERSION = 1
# Per-request arrays every vLLM result file has.
VLLM_ARRAYS = ("input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors")


def summary_only(data: Any) -> str | None:
    """One line for a `vllm bench serve --save-result` file written without --save-detailed
    (its summary is there, the per-request arrays are not); None for any other file."""
    if not isinstance(data, dict) or not {"duration", "completed", "request_throughput"} <= set(
        data
    ):
        return None
    missing = [k for k in VLLM_ARRAYS if k not in data]
    if not missing:
        return None
    return (
        f"a summary-only `vllm bench serve --save-result` file: no per-request "
        f"{', '.join(missing)}; rerun it with --save-detailed"
    )


def _numbers(values: Any, *, integer: bool = False) -> list:
    kinds = (int,) if integer else (int, float)
    if not isinstance(values, list) or not all(
        isinstance(v, kinds) and not isinstance(v, bool) for v in values
    ):
        raise ValueError(f"expected a list of {'integers' if integer else 'numbers'}")
    return values


class ResultFile(Record):
    """A serving-benchmark result in vLLM's `--save-result` schema, ours or vLLM's.

    Only the shape is checked here; every other key is kept as read. Validation never
    converts a value, so `model_dump` gives back the file's own numbers."""

    model_config = ConfigDict(extra="allow")
    duration: Number
    completed: int
    input_lens: list[int]
    output_lens: list[int]
    ttfts: list[Number]
    itls: list[list[Number]]
    generated_texts: list[Any]
    errors: list[str]
    format: str | None = None
    format_version: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _is_result(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(
                f"expected a JSON object (a benchmark result), got {type(data).__name__}"
            )
        if summary := summary_only(data):
            raise ValueError(summary)
        missing = [k for k in ("duration", "completed", *VLLM_ARRAYS) if k not in data]
        if missing:
            raise ValueError(
                f"not a serving-benchmark result: no {', '.join(repr(k) for k in missing)}"
            )
        return data

    @field_validator("duration", mode="before")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"expected a positive number, got {value!r}")
        return value

    @field_validator("input_lens", "output_lens", mode="before")
    @classmethod
    def _integers(cls, value: Any) -> Any:
        return _numbers(value, integer=True)

    @field_validator("ttfts", mode="before")
    @classmethod
    def _floats(cls, value: Any) -> Any:
        return _numbers(value)

    @field_validator("itls", mode="before")
    @classmethod
    def _rows(cls, value: Any) -> Any:
        if not isinstance(value, list) or not all(
            isinstance(row, list) and all(isinstance(v, int | float) for v in row) for row in value
        ):
            raise ValueError("expected a list of lists of numbers")
        return value

    @field_validator("errors", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> Any:
        if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
            raise ValueError("expected a list of strings")
        return value

    @model_validator(mode="after")
    def _per_request(self) -> ResultFile:
        n = len(self.errors)
        for key in VLLM_ARRAYS:
            if len(getattr(self, key)) != n:
                raise FieldProblem(key, f"has {len(getattr(self, key))} entries, 'errors' has {n}")
        if not self.is_ours:
            return self
        extra = self.model_extra or {}
        if "e2els" not in extra:
            raise FieldProblem("e2els", "missing (every moe-artifact result has it)")
        try:
            _numbers(extra["e2els"])
        except ValueError as exc:
            raise FieldProblem("e2els", str(exc)) from None
        for key in ("e2els", "output_lens_usage", "output_lens_retokenized"):
            values = extra.get(key, [None] * n)
            if not isinstance(values, list) or len(values) != n:
                raise FieldProblem(key, f"expected a list of {n} entries, one per request")
        if self.format_version != FORMAT_VERSION:
            raise FieldProblem(
                "format_version",
                f"{FORMAT} version {self.format_version!r} is not supported "
                f"(this artifact reads version {FORMAT_VERSION})",
            )
        return self

    @property
    def is_ours(self) -> bool:
        return self.format == FORMAT

    def get(self, key: str) -> Any:
        """A key of the file, declared or not (None when absent)."""
        if key in type(self).model_fields:
            return getattr(self, key)
        return (self.model_extra or {}).get(key)
