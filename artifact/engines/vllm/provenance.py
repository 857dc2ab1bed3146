"""vLLM provenance: what a vLLM server really ran, read from its own log.

`moe-artifact provenance LOG... [--expect MODE] [--card CARD] [--json]`

From a vLLM server log (API server, engine cores and workers interleaved, ANSI colours and
all) this reads: the vLLM version and build, the non-default arguments, the tensor / data /
expert parallel sizes the ranks report, the all2all manager ("Using <name> all2all
manager."), the MoE kernel path (the Triton `fused_moe` configuration it tuned for, or
FlashInfer CUTLASS MoE), the EPLB state ("EPLB is enabled for model ...", "Rearranged
experts ...", "EPLB step: ... balancedness=..."), FlashInfer availability, the GPU model,
the address the server bound, whether the routing plugin said it was active, and the errors
(a traceback counts whatever process tag vLLM 0.11 put before its lines, and so does the
error it ended in). A log that never reached start-up is flagged whatever was claimed.

With an expectation (a profile mode, `auto` for the original study's directory layout, or a
workload card), every contradiction between what was claimed and what ran is listed; with
several logs, a sweep that mixes vLLM builds is flagged as well. Exit code 1 when anything is
flagged, 0 when not, 2 on an input error.

Facts this relies on (vLLM's own code, 0.10.1.1 / 0.10.2 / 0.11.0 wheels, and the logs):
- a manager exists only with data-parallel size > 1 and expert parallel; the default
  `VLLM_ALL2ALL_BACKEND` is `naive` up to 0.10.x (2f13319f) and `allgather_reducescatter`
  from 0.11.0;
- FlashInfer CUTLASS MoE for bf16 (`VLLM_USE_FLASHINFER_MOE_FP16=1`, 0.11.0) needs compute
  capability >= 9 and data-parallel size 1; at 2f13319f the bf16 path does not exist;
- Mixtral supports EPLB only from 0.11.0: at 2f13319f `--enable-eplb` is accepted and does
  nothing (no "EPLB is enabled" line).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from artifact.core.errors import ArtifactError
from artifact.study.cards import card_hardware, card_mode_claims, read_card
from artifact.study.traces import parse_trace_name, trace_dir_of_log

# --- what vLLM prints ---------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# "(EngineCore_DP3 pid=1064049) ", "(VllmWorker TP0 pid=1) ", "(Worker_TP1 pid=1) "
PROCESS = re.compile(r"\((?P<proc>[A-Za-z][\w ]*?) pid=(?P<pid>\d+)\)")
PROCESS_TAG = re.compile(r"^" + PROCESS.pattern + r" ?")

RE_VERSION = re.compile(r"vLLM API server version (?P<v>\S+)")
RE_ENGINE_INIT = re.compile(
    r"Initializing a V1 LLM engine \(v(?P<v>[^)]+)\) with config: (?P<cfg>.*)$"
)
RE_NON_DEFAULT = re.compile(r"non-default args: (?P<args>\{.*\})\s*$")
RE_RANK = re.compile(
    r"rank (?P<rank>\d+) in world size (?P<world>\d+) is assigned as DP rank (?P<dp>\d+), "
    r"PP rank (?P<pp>\d+), TP rank (?P<tp>\d+), EP rank (?P<ep>\d+)"
)
RE_ALL2ALL = re.compile(r"Using (?P<name>[\w -]+?) all2all(?:v)? manager\.")
RE_EP = re.compile(
    r"\[EP Rank (?P<rank>\d+)/(?P<size>\d+)\] Expert parallelism is enabled\..*?"
    r"Local/global number of experts: (?P<local>\d+)/(?P<global>\d+)\. "
    r"Experts local to global index map: (?P<map>[\d\->, ]+)"
)
RE_MOE_TUNED = re.compile(r"Using configuration from (?P<path>\S+) for MoE layer")
RE_MOE_DEFAULT = re.compile(
    r"Using default MoE config\. Performance might be sub-optimal! "
    r"Config file not found at \[?'?(?P<path>[^'\]]+)"
)
RE_MOE_FILE = re.compile(r"E=(?P<E>\d+),N=(?P<N>\d+),device_name=(?P<device>[^,/]+?)(?:,|\.json)")
RE_EPLB_ENABLED = re.compile(r"EPLB is enabled for model (?P<model>\S+?)\.?$")
RE_EPLB_REARRANGED = re.compile(r"Rearranged experts ?(?P<what>.*?) ?in (?P<s>[\d.]+) seconds")
RE_EPLB_STEP = re.compile(
    r"EPLB step: avg_tokens=(?P<avg>[\d.]+), max_tokens=(?P<max>\d+), "
    r"balancedness=(?P<bal>[\d.]+)"
)
RE_BIND = re.compile(
    r"Starting vLLM API server (?:\d+ )?on (?:https?://)?(?P<host>[^\s:/]+):(?P<port>\d+)"
)
RE_DEVICE_CAPABILITY = re.compile(r"Device capability (?P<cc>\d+\.?\d*) not supported")
RE_LAUNCH = re.compile(r"^moe-artifact launch: (?P<json>\{.*\})\s*$")
RE_ERROR = re.compile(r"\b(?:ERROR|CRITICAL)\b \d\d-\d\d \d\d:\d\d:\d\d|^Traceback \(most recent")
# artifact.engines.vllm.plugin's line, through vLLM's own log handler
# the last line of a traceback: "RuntimeError: ...", "torch.OutOfMemoryError: ..."
RE_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b")
RE_PLUGIN = re.compile(r"moe-artifact routing plugin (?P<state>active|not installed)\b")

# "Using <label> all2all manager." -> the VLLM_ALL2ALL_BACKEND value that selects it.
ALL2ALL_NAMES = {
    "naive": "naive",
    "AllGather-ReduceScatter": "allgather_reducescatter",
    "PPLX": "pplx",
    "DeepEP High-Throughput": "deepep_high_throughput",
    "DeepEP Low-Latency": "deepep_low_latency",
    "Flashinfer": "flashinfer_all2allv",
}

FLASHINFER_MOE_LINES = {
    "Enabling FlashInfer CUTLASS MoE": "enabled",
    "FlashInfer CUTLASS MoE is currently not available for DP": "unavailable: data parallel",
    "FlashInfer CUTLASS MoE is available for EP but not enabled": "available, not enabled",
}
FLASHINFER_SAMPLER_LINES = {
    "FlashInfer is not available. Falling back": False,
    "Using FlashInfer for top-p & top-k sampling": True,
    "FlashInfer is available, but it is not enabled": True,
}

# Compute capability of the GPUs the study and the profiles name.
COMPUTE_CAPABILITY = {"A100": 8.0, "A10": 8.6, "L4": 8.9, "L40": 8.9, "H100": 9.0, "H200": 9.0}

NOT_STARTED = "the log never reached 'Application startup complete' (cut or failed)"

TRITON = "triton_fused_moe"
FLASHINFER = "flashinfer_cutlass_moe"


def _version_key(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of a vLLM version string; dev builds count as their base."""
    nums = re.findall(r"\d+", version.split("+")[0].split("rc")[0].split(".dev")[0])
    return tuple(int(n) for n in nums[:3]) + (0,) * (3 - len(nums[:3]))


def build_label(version: str | None) -> str | None:
    """A short name for a vLLM build: the git hash of a dev build, else `v<version>`."""
    if not version:
        return None
    match = re.search(r"\+g([0-9a-f]{7,40})", version)
    if match:
        return match.group(1)[:8]
    return "v" + version.lstrip("v")


def build_matches(version: str | None, ref: str) -> bool:
    """True when `version` (as the log reports it) is the build `ref` (hash prefix or tag)."""
    if not version:
        return False
    ref = ref.strip()
    match = re.search(r"\+g([0-9a-f]{7,40})", version)
    if match and re.fullmatch(r"[0-9a-f]{7,40}", ref):
        short = min(len(ref), len(match.group(1)))
        return match.group(1)[:short] == ref[:short]
    return version.lstrip("v") == ref.lstrip("v")


def default_all2all_backend(version: str | None) -> str | None:
    """VLLM_ALL2ALL_BACKEND's default in that build (None when the version is unknown)."""
    if not version:
        return None
    return "allgather_reducescatter" if _version_key(version) >= (0, 11, 0) else "naive"


def mixtral_has_eplb(version: str | None) -> bool | None:
    if not version:
        return None
    return _version_key(version) >= (0, 11, 0)


def bf16_flashinfer_moe_exists(version: str | None) -> bool | None:
    if not version:
        return None
    return _version_key(version) >= (0, 11, 0)


def gpu_compute_capability(gpu: str | None) -> float | None:
    if not gpu:
        return None
    name = gpu.upper().replace("_", " ").replace("-", " ")
    for key in sorted(COMPUTE_CAPABILITY, key=len, reverse=True):
        if re.search(rf"\b{key}\b", name):
            return COMPUTE_CAPABILITY[key]
    return None


# --- the parsed record --------------------------------------------------------------------


@dataclass
class LogProvenance:
    """Everything one server log says about the run that wrote it."""

    log: str
    vllm_version: str | None = None
    vllm_build: str | None = None
    non_default_args: dict[str, Any] = field(default_factory=dict)
    engine_config: dict[str, str] = field(default_factory=dict)
    tensor_parallel_size: int | None = None
    data_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    enable_expert_parallel: bool = False
    expert_parallel_size: int | None = None
    expert_maps: dict[str, list[int]] = field(default_factory=dict)
    num_experts: int | None = None
    all2all_manager: str | None = None
    all2all_managers_seen: list[str] = field(default_factory=list)
    moe_kernel: str | None = None
    moe_config: dict[str, Any] | None = None
    flashinfer_moe: str | None = None
    flashinfer_available: bool | None = None
    eplb_requested: bool = False
    eplb_enabled: bool = False
    eplb_rearrangements: int = 0
    eplb_balancedness: list[float] = field(default_factory=list)
    eplb_args: dict[str, Any] = field(default_factory=dict)
    gpu_model: str | None = None
    compute_capability: float | None = None
    host: str | None = None
    port: int | None = None
    enforce_eager: bool | None = None
    dtype: str | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    ready: bool = False
    # "active" / "not installed": what artifact.engines.vllm.plugin said in this log
    routing_plugin: str | None = None
    errors: list[str] = field(default_factory=list)
    # a log that never reached start-up: the error it ended in (startup_error)
    startup_error: str | None = None
    launch: dict[str, Any] | None = None
    processes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def _literal_dict(text: str) -> dict:
    """The `non-default args` dict; falls back to key: value scanning when not a literal."""
    try:
        value = ast.literal_eval(text)
        if isinstance(value, dict):
            return value
    except (ValueError, SyntaxError):
        pass
    out: dict[str, Any] = {}
    for match in re.finditer(r"'(\w+)': ('[^']*'|[^,}]+)", text):
        raw = match.group(2).strip()
        try:
            out[match.group(1)] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[match.group(1)] = raw
    return out


def _engine_config(text: str) -> dict[str, str]:
    """key=value pairs at the top level of the engine's config line (nested ones skipped)."""
    out: dict[str, str] = {}
    depth = 0
    token = ""
    parts = []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(token)
            token = ""
        else:
            token += ch
    parts.append(token)
    for part in parts:
        key, sep, value = part.strip().partition("=")
        if sep and re.fullmatch(r"\w+", key):
            out[key] = value.strip()
    return out


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _parse_map(text: str) -> list[int]:
    pairs = re.findall(r"(\d+)->(\d+)", text)
    ordered = sorted((int(a), int(b)) for a, b in pairs)
    return [b for _, b in ordered]


def split_process_tag(line: str) -> tuple[str | None, str]:
    """("APIServer pid=1", rest) for "(APIServer pid=1) rest": vLLM 0.11 tags every line of
    every process (tracebacks too), so matches at a line's start go against `rest`."""
    if match := PROCESS_TAG.match(line):
        return f"{match.group('proc')} pid={match.group('pid')}", line[match.end() :]
    return None, line


RE_LEVEL_PREFIX = re.compile(r"^(?:ERROR|CRITICAL) \d\d-\d\d \d\d:\d\d:\d\d \[[^\]]*\] ")
# vLLM's wrapper around an engine core's own error, printed after it.
WRAPPER_ERRORS = ("See root cause above", "EngineCore failed to start")


def startup_error(text: str) -> str | None:
    """The error a failed start-up ended in, as vLLM printed it: the first exception line
    that is not vLLM's wrapper (with pydantic's "Value error, ..." detail line appended),
    else the first ERROR line."""
    bodies = []
    first_error = None
    for line in ANSI.sub("", text).splitlines():
        tag, body = split_process_tag(line)
        while tag is not None:  # "(EngineCore_DP0 pid=1) (EngineCore_DP1 pid=2) ..."
            tag, body = split_process_tag(body)
        bodies.append(RE_LEVEL_PREFIX.sub("", body))
        if first_error is None and bodies[-1] != body:
            first_error = bodies[-1].strip()
    for i, body in enumerate(bodies):
        if RE_EXCEPTION.match(body) and not any(w in body for w in WRAPPER_ERRORS):
            detail = bodies[i + 1].strip() if i + 1 < len(bodies) else ""
            if detail.startswith("Value error, "):
                body += ": " + detail.removeprefix("Value error, ").split(" [type=")[0]
            return body.strip()
    return first_error


def parse_log_text(text: str, log: str = "<text>") -> LogProvenance:
    """Parse a (possibly partial, still growing) vLLM server log."""
    prov = LogProvenance(log=log)
    ranks: dict[int, tuple[int, int, int, int]] = {}
    managers: Counter[str] = Counter()
    processes: Counter[str] = Counter()
    pids: set[tuple[str, str]] = set()
    device_names: Counter[str] = Counter()
    in_traceback: set[str | None] = set()  # processes whose traceback has not ended yet
    for raw_line in text.splitlines():
        line = ANSI.sub("", raw_line).rstrip()
        if not line:
            continue
        for proc in PROCESS.finditer(line):
            key = (proc.group("proc").split()[0].split("_")[0], proc.group("pid"))
            if key not in pids:
                pids.add(key)
                processes[key[0]] += 1
        proc_tag, body = split_process_tag(line)
        if match := RE_LAUNCH.match(body):
            try:
                prov.launch = json.loads(match.group("json"))
            except json.JSONDecodeError:
                prov.errors.append("unreadable moe-artifact launch line")
            continue
        if prov.vllm_version is None and (match := RE_VERSION.search(line)):
            prov.vllm_version = match.group("v")
        if match := RE_ENGINE_INIT.search(line):
            if prov.vllm_version is None:
                prov.vllm_version = match.group("v")
            if not prov.engine_config:
                prov.engine_config = _engine_config(match.group("cfg"))
        if not prov.non_default_args and (match := RE_NON_DEFAULT.search(line)):
            prov.non_default_args = _literal_dict(match.group("args"))
        if match := RE_RANK.search(line):
            ranks[int(match.group("rank"))] = (
                int(match.group("dp")),
                int(match.group("pp")),
                int(match.group("tp")),
                int(match.group("ep")),
            )
        if match := RE_ALL2ALL.search(line):
            label = match.group("name").strip()
            managers[ALL2ALL_NAMES.get(label, label)] += 1
        if match := RE_EP.search(line):
            prov.expert_parallel_size = int(match.group("size"))
            prov.num_experts = int(match.group("global"))
            prov.expert_maps[match.group("rank")] = _parse_map(match.group("map"))
        for regex, tuned in ((RE_MOE_TUNED, True), (RE_MOE_DEFAULT, False)):
            if match := regex.search(line):
                name = Path(match.group("path")).name
                conf = RE_MOE_FILE.search(name)
                prov.moe_kernel = prov.moe_kernel or TRITON
                if prov.moe_config is None:
                    prov.moe_config = {
                        "tuned": tuned,
                        "file": name,
                        "E": _int(conf.group("E")) if conf else None,
                        "N": _int(conf.group("N")) if conf else None,
                    }
                if conf:
                    device_names[conf.group("device")] += 1
        for needle, state in FLASHINFER_MOE_LINES.items():
            if needle in line:
                prov.flashinfer_moe = state
                if state == "enabled":
                    prov.moe_kernel = FLASHINFER
        for needle, available in FLASHINFER_SAMPLER_LINES.items():
            if needle in line:
                prov.flashinfer_available = available
        if RE_EPLB_ENABLED.search(line):
            prov.eplb_enabled = True
        if RE_EPLB_REARRANGED.search(line):
            prov.eplb_rearrangements += 1
        if match := RE_EPLB_STEP.search(line):
            prov.eplb_balancedness.append(float(match.group("bal")))
        if match := RE_BIND.search(line):
            prov.host, prov.port = match.group("host"), int(match.group("port"))
        if match := RE_DEVICE_CAPABILITY.search(line):
            prov.compute_capability = float(match.group("cc"))
        if "Application startup complete" in line:
            prov.ready = True
        if (match := RE_PLUGIN.search(line)) and prov.routing_plugin != "not installed":
            prov.routing_plugin = match.group("state")  # one process without it is enough
        if len(prov.errors) >= 20:
            continue
        if RE_ERROR.search(body):
            prov.errors.append(line[:300])
            if body.startswith("Traceback"):
                in_traceback.add(proc_tag)
        elif proc_tag in in_traceback and RE_EXCEPTION.match(body):
            prov.errors.append(line[:300])  # what the traceback ended in: the error itself
            in_traceback.discard(proc_tag)

    args = prov.non_default_args
    cfg = prov.engine_config
    prov.vllm_build = build_label(prov.vllm_version)
    tp_arg = _int(args.get("tensor_parallel_size")) or _int(cfg.get("tensor_parallel_size"))
    dp_arg = _int(args.get("data_parallel_size")) or _int(cfg.get("data_parallel_size"))
    if ranks:
        prov.tensor_parallel_size = max(r[2] for r in ranks.values()) + 1
        prov.data_parallel_size = max(r[0] for r in ranks.values()) + 1
        prov.pipeline_parallel_size = max(r[1] for r in ranks.values()) + 1
    else:
        prov.tensor_parallel_size = tp_arg or (1 if (args or cfg) else None)
        prov.data_parallel_size = dp_arg or (1 if (args or cfg) else None)
        prov.pipeline_parallel_size = _int(cfg.get("pipeline_parallel_size"))
    prov.enable_expert_parallel = bool(args.get("enable_expert_parallel")) or bool(prov.expert_maps)
    if (
        prov.enable_expert_parallel
        and prov.expert_parallel_size is None
        and prov.tensor_parallel_size
        and prov.data_parallel_size
    ):
        prov.expert_parallel_size = prov.tensor_parallel_size * prov.data_parallel_size
    if managers:
        prov.all2all_managers_seen = sorted(managers)
        prov.all2all_manager = managers.most_common(1)[0][0]
    prov.eplb_requested = bool(args.get("enable_eplb"))
    prov.eplb_args = {
        k: v
        for k, v in args.items()
        if k in ("eplb_config", "num_redundant_experts", "eplb_window_size")
        or k.startswith("eplb_")
    }
    if device_names:
        prov.gpu_model = device_names.most_common(1)[0][0].replace("_", " ")
    if prov.compute_capability is None:
        prov.compute_capability = gpu_compute_capability(prov.gpu_model)
    eager = args.get("enforce_eager", cfg.get("enforce_eager"))
    prov.enforce_eager = None if eager is None else str(eager) == "True"
    dtype = args.get("dtype") or cfg.get("dtype")
    prov.dtype = str(dtype).replace("torch.", "") if dtype else None
    prov.max_model_len = _int(args.get("max_model_len")) or _int(cfg.get("max_seq_len"))
    prov.max_num_seqs = _int(args.get("max_num_seqs"))
    prov.max_num_batched_tokens = _int(args.get("max_num_batched_tokens"))
    prov.processes = dict(processes)
    if not prov.ready and prov.errors:
        prov.startup_error = startup_error(text)
    return prov


def parse_log(path: str | Path) -> LogProvenance:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise ArtifactError("server log not found", path=path) from None
    except IsADirectoryError:
        raise ArtifactError("is a directory, expected a vLLM server log", path=path) from None
    return parse_log_text(text, log=str(path))


# --- what was claimed ---------------------------------------------------------------------


@dataclass
class Expectation:
    """What a run claims to be; None means 'no claim'."""

    name: str
    source: str
    tensor_parallel_size: int | None = None
    data_parallel_size: int | None = None
    enable_expert_parallel: bool | None = None
    enable_eplb: bool | None = None
    # None: any; "default": the build's default manager; else a VLLM_ALL2ALL_BACKEND value.
    all2all_backend: str | None = None
    moe_kernel: str | None = None
    moe_kernel_claim: str | None = None  # the words of the claim, for the message
    vllm_ref: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    host: str | None = None
    dtype: str | None = None
    enforce_eager: bool | None = None
    gpu_model: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def kernel_from_words(words: str) -> str | None:
    lowered = words.lower()
    if "flashinfer" in lowered:
        return FLASHINFER
    if "triton" in lowered:
        return TRITON
    return None


def family_of(prov: LogProvenance) -> str:
    """'all2all' for an expert-parallel run with data parallel > 1, else 'baseline'."""
    if prov.enable_expert_parallel and (prov.data_parallel_size or 1) > 1:
        return "all2all"
    return "baseline"


def card_family_claims(card: dict) -> dict[str, tuple[str, str]]:
    """family -> (kernel, words) for cards naming kernels per mode, e.g. 'Baseline (Triton MoE)'."""
    claims = {}
    for family, claim, words in card_mode_claims(card):
        if kernel := kernel_from_words(claim):
            claims[family] = (kernel, words)
    return claims


def expectation_from_mode(profile, mode_name: str, limits=None) -> Expectation:
    """What a profile mode (plus optional ServerLimits) asks of a vLLM server."""
    if mode_name not in profile.modes:
        raise ArtifactError(
            f"no mode '{mode_name}' in profile {profile.name}; modes: {sorted(profile.modes)}",
            path=profile.path,
            where="field 'modes'",
        )
    mode = profile.modes[mode_name]
    engine = profile.engine
    expert = mode.enable_expert_parallel
    kernel = getattr(mode, "moe_kernel", None)
    return Expectation(
        name=mode_name,
        source=f"profile {profile.name}, mode {mode_name}",
        tensor_parallel_size=mode.tensor_parallel_size,
        data_parallel_size=mode.data_parallel_size,
        enable_expert_parallel=expert,
        enable_eplb=mode.enable_eplb,
        all2all_backend=(mode.all2all_backend or "default")
        if expert and mode.data_parallel_size > 1
        else None,
        moe_kernel=kernel,
        moe_kernel_claim=kernel,
        vllm_ref=getattr(mode, "vllm_ref", None) or engine.vllm_ref,
        max_num_seqs=limits.max_num_seqs if limits else None,
        max_num_batched_tokens=limits.max_num_batched_tokens if limits else None,
        host=engine.host,
        dtype=profile.model.dtype,
        enforce_eager=True,
        gpu_model=profile.hardware.gpu_model,
    )


# --- the checks ---------------------------------------------------------------------------


def intrinsic_flags(prov: LogProvenance) -> list[str]:
    """Contradictions inside one log, whatever was claimed."""
    flags = []
    if prov.eplb_requested and not prov.eplb_enabled and prov.ready:
        why = ""
        if mixtral_has_eplb(prov.vllm_version) is False:
            why = f" (vLLM {prov.vllm_version} has no EPLB support for Mixtral; it needs 0.11.0)"
        flags.append(f"EPLB asked for (--enable-eplb) but never enabled{why}")
    if len(prov.all2all_managers_seen) > 1:
        flags.append(f"ranks used different all2all managers: {prov.all2all_managers_seen}")
    return flags


def _eplb_state(prov: LogProvenance) -> str:
    if prov.eplb_enabled:
        return f"enabled, {prov.eplb_rearrangements} rearrangement(s)"
    args = ", ".join(f"{k}={v}" for k, v in prov.eplb_args.items()) or "none"
    return (
        f"not enabled (--enable-eplb {'given' if prov.eplb_requested else 'absent'}; "
        f"EPLB arguments: {args})"
    )


def expectation_flags(prov: LogProvenance, exp: Expectation) -> tuple[list[str], list[str]]:
    """(contradictions, notes) between one log and what its run claims to be."""
    flags: list[str] = []
    notes: list[str] = []

    def differ(what: str, wanted, got) -> None:
        if wanted is not None and got is not None and wanted != got:
            flags.append(f"{what}: claimed {wanted}, the log shows {got}")

    differ("tensor-parallel size", exp.tensor_parallel_size, prov.tensor_parallel_size)
    differ("data-parallel size", exp.data_parallel_size, prov.data_parallel_size)
    if exp.enable_expert_parallel is not None and exp.enable_expert_parallel != (
        prov.enable_expert_parallel
    ):
        flags.append(
            f"expert parallel: claimed {'on' if exp.enable_expert_parallel else 'off'}, "
            f"the log shows {'on' if prov.enable_expert_parallel else 'off'}"
        )
    differ("max-num-seqs", exp.max_num_seqs, prov.max_num_seqs)
    differ("max-num-batched-tokens", exp.max_num_batched_tokens, prov.max_num_batched_tokens)
    differ("dtype", exp.dtype, prov.dtype)
    if exp.enforce_eager and prov.enforce_eager is False:
        flags.append("enforce-eager: claimed on (routing hooks need it), the log shows off")
    if exp.host and prov.host and exp.host != prov.host:
        flags.append(f"bind address: claimed {exp.host}, the server bound {prov.host}")
    elif prov.host == "0.0.0.0":
        notes.append("the server bound 0.0.0.0 (reachable from other hosts)")
    if exp.vllm_ref and prov.vllm_version and not build_matches(prov.vllm_version, exp.vllm_ref):
        flags.append(f"vLLM build: claimed {exp.vllm_ref}, the log shows {prov.vllm_version}")

    # EPLB
    if exp.enable_eplb and not prov.eplb_enabled:
        flags.append(f"EPLB: claimed enabled, the log shows {_eplb_state(prov)}")
        if mixtral_has_eplb(prov.vllm_version) is False:
            flags.append(
                f"EPLB: vLLM {prov.vllm_version} cannot enable EPLB for Mixtral (needs >= 0.11.0)"
            )
    elif exp.enable_eplb is False and prov.eplb_enabled:
        flags.append("EPLB: claimed off, the log shows 'EPLB is enabled'")
    elif exp.enable_eplb and prov.eplb_enabled and prov.eplb_rearrangements == 0:
        notes.append(
            "EPLB enabled but no rearrangement logged (the first comes after a quarter of the "
            "step interval: 750 engine steps by default; shorten it for short runs)"
        )

    # all2all manager
    if exp.all2all_backend is not None and prov.ready:
        wanted = (
            default_all2all_backend(prov.vllm_version)
            if exp.all2all_backend == "default"
            else exp.all2all_backend
        )
        if prov.all2all_manager is None:
            flags.append(
                f"all2all: claimed {exp.all2all_backend} "
                f"({wanted or 'a manager'}), the log names no all2all manager"
            )
        elif wanted and prov.all2all_manager != wanted:
            what = (
                f"the default of vLLM {prov.vllm_version} ({wanted})"
                if exp.all2all_backend == "default"
                else wanted
            )
            flags.append(f"all2all: claimed {what}, the log shows {prov.all2all_manager}")
    elif exp.enable_expert_parallel is False and prov.all2all_manager:
        flags.append(
            f"all2all: claimed none (no expert parallel), the log shows {prov.all2all_manager}"
        )

    # MoE kernel
    if exp.moe_kernel == FLASHINFER and prov.moe_kernel != FLASHINFER:
        evidence = []
        if prov.flashinfer_moe:
            evidence.append(f"FlashInfer CUTLASS MoE {prov.flashinfer_moe}")
        elif bf16_flashinfer_moe_exists(prov.vllm_version) is False:
            evidence.append(f"vLLM {prov.vllm_version} has no bf16 FlashInfer CUTLASS MoE")
        if prov.moe_kernel == TRITON:
            evidence.append(f"ran the Triton fused_moe kernel ({_moe_config_text(prov)})")
        if prov.flashinfer_available is False:
            evidence.append("FlashInfer is not installed")
        flags.append(
            f"MoE kernel: claimed '{exp.moe_kernel_claim or 'FlashInfer MoE'}', the log shows "
            + ("; ".join(evidence) or "no FlashInfer MoE")
        )
    elif exp.moe_kernel == TRITON and prov.moe_kernel == FLASHINFER:
        flags.append("MoE kernel: claimed Triton fused_moe, the log shows FlashInfer CUTLASS MoE")

    if exp.gpu_model and prov.gpu_model:
        want = exp.gpu_model.upper().replace("_", " ").replace("-", " ")
        got = prov.gpu_model.upper().replace("_", " ").replace("-", " ")
        if not (want in got or got in want):
            notes.append(f"GPU: profile names {exp.gpu_model}, the log shows {prov.gpu_model}")
    if not prov.ready:
        notes.append(NOT_STARTED)
    if prov.errors:
        notes.append(f"{len(prov.errors)} error line(s), first: {prov.errors[0][:160]}")
    return flags, notes


def startup_flag(prov: LogProvenance) -> str | None:
    """A log without start-up: the server failed (quoting the error it ended in) or was cut."""
    if prov.ready:
        return None
    if not prov.errors:
        return NOT_STARTED
    return f"{NOT_STARTED}; error: {(prov.startup_error or prov.errors[0])[:200]}"


def _moe_config_text(prov: LogProvenance) -> str:
    conf = prov.moe_config or {}
    if not conf:
        return "no MoE config line"
    how = "tuned config" if conf.get("tuned") else "default config"
    return f"{how} E={conf.get('E')},N={conf.get('N')}"


def card_flags(card_path: Path, card: dict) -> list[str]:
    """Claims in a workload card that cannot hold on the hardware and layout it names."""
    flags = []
    hw = card_hardware(card)
    cc = gpu_compute_capability(hw)
    for family, (kernel, words) in card_family_claims(card).items():
        if kernel != FLASHINFER:
            continue
        reasons = []
        if cc is not None and cc < 9:
            reasons.append(f"the card's GPU {hw} has compute capability {cc:.1f} (< 9.0)")
        if family == "all2all":
            reasons.append("DefaultAll2All runs data parallel > 1, where it is unavailable")
        if reasons:
            flags.append(
                f"{card_path}: claim '{words}' cannot hold: FlashInfer CUTLASS MoE for bf16 "
                f"needs compute capability >= 9.0 and data-parallel size 1; " + "; ".join(reasons)
            )
    return flags


def sweep_flags(runs: list[dict]) -> list[str]:
    """Across the logs of one sweep: more than one vLLM build is a confound."""
    builds: dict[str, list[str]] = {}
    for run in runs:
        version = run["provenance"]["vllm_version"]
        if version:
            builds.setdefault(version, []).append(run["name"])
    if len(builds) <= 1:
        return []
    parts = [f"{v} ({len(names)}: {', '.join(sorted(names))})" for v, names in builds.items()]
    flags = [f"the sweep mixes {len(builds)} vLLM builds: " + "; ".join(parts)]
    by_family: dict[str, dict[str, int]] = {}
    for run in runs:
        version = run["provenance"]["vllm_version"]
        if version:
            fam = by_family.setdefault(run["family"], {})
            fam[version] = fam.get(version, 0) + 1
    for family, counts in sorted(by_family.items()):
        if len(counts) > 1:
            flags.append(
                f"mode {family} ran on {len(counts)} builds ("
                + ", ".join(f"{v}: {n}" for v, n in counts.items())
                + "): differences between its points may be version effects"
            )
    return flags


# --- the tool -----------------------------------------------------------------------------


def run_name(log: Path) -> str:
    parent = trace_dir_of_log(log)
    return parent.name if parent != log.parent or parse_trace_name(parent.name) else log.name


def analyse(
    logs: list[Path],
    expect: str | None = None,
    profile_name: str | None = None,
    cards: list[Path] | None = None,
) -> dict:
    """The whole report for some logs: per run, across runs, and for extra cards."""
    profile = None
    if expect and expect != "auto":
        from artifact.config.profiles import load_profile

        profile = load_profile(profile_name or "perlmutter")
    card_data = [(path, read_card(path)) for path in cards or []]
    runs = []
    for log in logs:
        prov = parse_log(log)
        exp: Expectation | None = None
        if expect == "auto":
            from artifact.study.expectation import expectation_from_study_dir

            exp = expectation_from_study_dir(trace_dir_of_log(log))
            if exp is None:
                raise ArtifactError(
                    "--expect auto needs the original study's layout "
                    "(<...vllmTP4-...[mode_seqs_tokens]...>/logs/*.log)",
                    path=log,
                )
        elif expect:
            exp = expectation_from_mode(profile, expect)
        flags = intrinsic_flags(prov)
        notes: list[str] = []
        if exp is not None:
            more, notes = expectation_flags(prov, exp)
            flags += [f for f in more if f not in flags]
            notes = exp.notes + [n for n in notes if n != NOT_STARTED]
        if not_started := startup_flag(prov):
            flags.append(not_started)
        family = family_of(prov)
        for path, card in card_data:
            claims = card_family_claims(card)
            if family in claims:
                kernel, words = claims[family]
                extra = Expectation(
                    name=family,
                    source=str(path),
                    moe_kernel=kernel,
                    moe_kernel_claim=words,
                )
                more, _ = expectation_flags(prov, extra)
                flags += [f"{flag} [claim from card {path}]" for flag in more]
        if prov.eplb_requested and any("EPLB" in f for f in flags):
            flags = _dedupe_eplb(flags)
        runs.append(
            {
                "name": run_name(log),
                "log": str(log),
                "family": family,
                "expected": exp.to_json() if exp else None,
                "provenance": prov.to_json(),
                "flags": flags,
                "notes": notes,
            }
        )
    report = {
        "runs": runs,
        "sweep_flags": sweep_flags(runs) if len(runs) > 1 else [],
        "card_flags": [f for path, card in card_data for f in card_flags(path, card)],
    }
    report["flagged"] = bool(
        report["sweep_flags"] or report["card_flags"] or any(r["flags"] for r in runs)
    )
    return report


def _dedupe_eplb(flags: list[str]) -> list[str]:
    """Keep the most specific EPLB message when the intrinsic and the claimed one agree."""
    intrinsic = [f for f in flags if f.startswith("EPLB asked for")]
    claimed = [f for f in flags if f.startswith("EPLB: claimed enabled")]
    if intrinsic and claimed:
        flags = [f for f in flags if f not in intrinsic]
    return flags


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("logs", nargs="*", type=Path, metavar="LOG", help="vLLM server log(s)")
    parser.add_argument(
        "--expect",
        metavar="MODE",
        help="the mode the run(s) claim to be: a mode of --profile, or 'auto' to read the "
        "claim from the original study's directory name and workload card",
    )
    parser.add_argument(
        "--profile", default=None, help="profile whose modes --expect names (default perlmutter)"
    )
    parser.add_argument(
        "--card",
        action="append",
        type=Path,
        default=[],
        metavar="CARD",
        help="a workload card whose per-mode kernel claims are checked too (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _table(report: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    from artifact.core.console import console

    table = Table(title="vLLM provenance", show_lines=False)
    for col in ("run", "build", "TP/DP/EP", "all2all", "MoE kernel", "EPLB", "flags"):
        table.add_column(col, overflow="fold")
    for run in report["runs"]:
        p = run["provenance"]
        ep = p["expert_parallel_size"] if p["enable_expert_parallel"] else "-"
        eplb = "on" if p["eplb_enabled"] else ("asked, off" if p["eplb_requested"] else "off")
        kernel = p["moe_kernel"] or "?"
        if p["moe_config"]:
            kernel += f" E={p['moe_config']['E']},N={p['moe_config']['N']}"
        table.add_row(
            escape(run["name"]),
            p["vllm_build"] or "?",
            f"{p['tensor_parallel_size']}/{p['data_parallel_size']}/{ep}",
            p["all2all_manager"] or "-",
            kernel,
            eplb,
            escape("\n".join(run["flags"])) or "[green]none[/]",
        )
    console.print(table)
    for flag in report["sweep_flags"] + report["card_flags"]:
        console.print(f"[red]flag[/]: {escape(flag)}", soft_wrap=True)


def run_tool(args: argparse.Namespace) -> int:
    logs: list[Path] = list(args.logs)
    if not logs and not args.card:
        raise ArtifactError("give at least one server log (or --card)", where="provenance")
    report = analyse(logs, args.expect, args.profile, args.card)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    else:
        _table(report)
    return 1 if report["flagged"] else 0
