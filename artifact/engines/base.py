"""Serving engines behind one small interface.

An `Engine` turns a profile mode plus batching limits into a running server (`start`), and
a `Server` answers health, provenance and routing-capture calls and stops gracefully
(`stop`: SIGTERM, then SIGKILL). Engines refuse modes that ask for knobs they do not have.

Every server runs in its own process group (`spawn`), tied to this process by
artifact.engines.lifeline (it exits when we die, even by kill -9), and is stopped on every
exit path: a start-up that raises (timeout, death, Ctrl-C, SIGTERM) stops it before the
error goes on. A port taken between `free_port` and the server's bind makes the server exit
at once; `start` then tries another port (PORT_ATTEMPTS in all). The embedded server's
routing control answers only requests carrying the token the engine gave it
(CONTROL_TOKEN_ENV, sent back in CONTROL_TOKEN_HEADER) and writes only inside the folder of
the server's log (CAPTURE_DIR_ENV).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from artifact.config.profiles import Mode, Profile
from artifact.core.console import console
from artifact.core.errors import ArtifactError, StageFailed
from artifact.core.layout import RunLayout

CONTROL_TOKEN_ENV = "MOE_ARTIFACT_CONTROL_TOKEN"
CONTROL_TOKEN_HEADER = "X-Moe-Artifact-Token"
CAPTURE_DIR_ENV = "MOE_ARTIFACT_CAPTURE_DIR"
PORT_ATTEMPTS = 3


class PortTaken(StageFailed):
    """The server exited at start-up because another process holds its port."""


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


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def spawn(argv: list[str], log: IO[bytes], env: dict[str, str]) -> subprocess.Popen:
    """Start a server: its own session and process group (so `stop` reaches its children),
    tied to this process's life (artifact.engines.lifeline). A missing program is a
    FileNotFoundError here, as with a bare Popen."""
    if shutil.which(argv[0]) is None:
        raise FileNotFoundError(errno.ENOENT, "not found", argv[0])
    return subprocess.Popen(
        [sys.executable, "-m", "artifact.engines.lifeline", str(os.getpid()), *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )


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
        token: str | None = None,
    ):
        self.process = process
        self.base_url = base_url
        self.model_id = model_id
        self.log_path = log_path
        self.ready_path = ready_path
        self.token = token

    # --- HTTP helpers (stdlib: these calls are rare and must not need an event loop) -----
    def _request(self, path: str, payload: dict | None = None, timeout: float = 30.0) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers[CONTROL_TOKEN_HEADER] = self.token
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers)
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
        """Return once the server answers; whatever ends the wait otherwise (its death, the
        timeout, Ctrl-C, SIGTERM) stops it first."""
        url = urllib.parse.urlsplit(self.base_url)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if not self.alive() and port_in_use(str(url.hostname), int(url.port or 0)):
                    raise PortTaken(
                        f"another process took port {url.port} before the server bound it "
                        f"(exit code {self.process.returncode})"
                    )
                self.check_alive("start-up")
                if self.is_ready():
                    return
                time.sleep(self.ready_poll_s)
            raise StageFailed(
                f"{self.not_ready} within {timeout_s:.0f} s; "
                f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            )
        except BaseException:
            self.stop()
            raise

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

    def start(
        self,
        mode_name: str,
        limits: ServerLimits,
        log_path: Path,
        nsys_report: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> Server:
        """A healthy server on a free port; a port taken before the server bound it is
        retried on another one. `extra_args` follow the mode's own arguments (vLLM only)."""
        attempts = PORT_ATTEMPTS
        while True:
            port = free_port(self.profile.engine.host)
            try:
                return self.launch(mode_name, limits, log_path, port, nsys_report, extra_args)
            except PortTaken as exc:
                attempts -= 1
                if not attempts:
                    raise
                console.print(f"  [yellow]{mode_name}[/]: {exc}; trying another port")

    def launch(
        self,
        mode_name: str,
        limits: ServerLimits,
        log_path: Path,
        port: int,
        nsys_report: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> Server:
        """Start the server on `port` and wait until it is ready."""
        if nsys_report is not None:
            raise ArtifactError(f"the {self.kind} engine cannot run a server under nsys")
        if extra_args:
            raise ArtifactError(f"the {self.kind} engine takes no extra server arguments")
        mode = self.profile.modes[mode_name]
        self.validate_mode(mode_name, mode)
        host = self.profile.engine.host
        log_path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(16)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **mode.env)
        env[CONTROL_TOKEN_ENV] = token
        env[CAPTURE_DIR_ENV] = str(log_path.parent.resolve())
        with open(log_path, "ab") as log:
            process = spawn(self.command(mode, limits, port), log, env)
        server = Server(
            process,
            f"http://{host}:{port}",
            str(self.model_dir),
            log_path,
            ready_path="/artifact/provenance",
            token=token,
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
