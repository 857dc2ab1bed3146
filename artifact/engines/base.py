"""Serving engines behind one small interface.

An `Engine` turns a profile mode plus batching limits into a running server (`start`), and
a `Server` answers health, provenance and routing-capture calls and stops gracefully
(`stop`: SIGTERM, then SIGKILL). Engines refuse modes that ask for knobs they do not have.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from artifact.config.profiles import Mode, Profile
from artifact.core.errors import ArtifactError, StageFailed
from artifact.core.layout import RunLayout


@dataclass(frozen=True)
class ServerLimits:
    """The study's serving knobs, in vLLM's names."""

    max_num_seqs: int
    max_num_batched_tokens: int

    @property
    def label(self) -> str:
        return f"{self.max_num_seqs}_{self.max_num_batched_tokens}"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no server log)"
    return "\n".join(text[-lines:])


class Server:
    """A running server process started by an engine."""

    def __init__(
        self,
        process: subprocess.Popen,
        base_url: str,
        model_id: str,
        log_path: Path,
        ready_path: str,
    ):
        self.process = process
        self.base_url = base_url
        self.model_id = model_id
        self.log_path = log_path
        self.ready_path = ready_path

    # --- HTTP helpers (stdlib: these calls are rare and must not need an event loop) -----
    def _request(self, path: str, payload: dict | None = None, timeout: float = 30.0) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            self.base_url + path, data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def call(self, path: str, payload: dict | None = None, what: str = "") -> dict:
        """A control request; a server that died or stopped answering is a StageFailed."""
        try:
            return self._request(path, payload)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            # A killed process can still look alive for a moment: give it time to exit.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            self.check_alive(what or path)
            raise StageFailed(
                f"the server does not answer {path} ({exc}); last lines of "
                f"{self.log_path}:\n{log_tail(self.log_path)}"
            ) from None

    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self, what: str) -> None:
        if not self.alive():
            raise StageFailed(
                f"the server died during {what} (exit code {self.process.returncode}); "
                f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            )

    # How often wait_ready probes, and what its failure says.
    ready_poll_s = 0.25
    not_ready = "the server did not become ready"

    def is_ready(self) -> bool:
        try:
            self._request(self.ready_path, timeout=2.0)
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            return False
        return True

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive("start-up")
            if self.is_ready():
                return
            time.sleep(self.ready_poll_s)
        self.stop()
        raise StageFailed(
            f"{self.not_ready} within {timeout_s:.0f} s; "
            f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def provenance(self) -> dict:
        return self.call("/artifact/provenance", what="the provenance request")

    def start_routing(self, path: Path, meta: dict | None = None) -> None:
        self.call(
            "/artifact/routing",
            {"path": str(path), "meta": meta or {}},
            what=f"the start of routing capture to {path.name}",
        )

    def stop_routing(self) -> dict:
        return self.call("/artifact/routing", {"path": None}, what="the end of routing capture")

    def stop(self, grace_s: float = 15.0) -> int:
        """Graceful stop (SIGTERM to the process group), then SIGKILL; returns the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Engine:
    kind = ""

    def __init__(self, profile: Profile, model_dir: Path):
        self.profile = profile
        self.model_dir = model_dir

    def validate_mode(self, name: str, mode: Mode) -> None:
        raise NotImplementedError

    def command(self, mode: Mode, limits: ServerLimits, port: int) -> list[str]:
        raise NotImplementedError

    def check_provenance(self, mode_name: str, limits: ServerLimits, provenance: dict) -> list[str]:
        """Contradictions between what the mode asked for and what runs (empty when none)."""
        raise NotImplementedError

    def start(self, mode_name: str, limits: ServerLimits, log_path: Path) -> Server:
        mode = self.profile.modes[mode_name]
        self.validate_mode(mode_name, mode)
        host = self.profile.engine.host
        port = free_port(host)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **mode.env)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                self.command(mode, limits, port),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        server = Server(
            process,
            f"http://{host}:{port}",
            str(self.model_dir),
            log_path,
            ready_path="/artifact/provenance",
        )
        server.wait_ready(self.profile.engine.startup_timeout_s)
        return server


def get_engine(profile: Profile, model_dir: Path, layout: RunLayout | None = None) -> Engine:
    """The profile's engine; with the run's layout, a vLLM engine checks modes against the
    surface `moe-artifact install` read from the installed vLLM (when there is one)."""
    if profile.engine.kind == "transformers":
        from artifact.engines.transformers.engine import TransformersEngine

        return TransformersEngine(profile, model_dir)
    if profile.engine.kind == "vllm":
        from artifact.core.records import VllmSurfaceRecord, read_record
        from artifact.engines.vllm.engine import VllmEngine
        from artifact.engines.vllm.surface import from_dump

        installed = None
        if layout is not None and layout.vllm_surface.is_file():
            record = read_record(layout.vllm_surface, VllmSurfaceRecord)
            installed = from_dump(record.model_dump())
        return VllmEngine(profile, model_dir, installed)
    raise ArtifactError(
        f"engine '{profile.engine.kind}' cannot be started by this build yet",
        path=profile.path,
        where="field 'engine.kind'",
    )
