"""A server dies with the `moe-artifact` process that started it, even a killed one.

    python -m artifact.engines.lifeline PARENT_PID COMMAND [ARGS...]

Engines start every server through this: on Linux it asks the kernel for SIGTERM when the
parent dies (`prctl(PR_SET_PDEATHSIG)`, which survives the `exec` into COMMAND), exits if the
parent is already gone, and then becomes COMMAND (same pid, same process group). SIGTERM is
the graceful stop the servers handle. Elsewhere `watch_parent` (a thread polling the parent
pid) is the fallback, for the embedded server, which runs it too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGTERM to this process when `parent_pid` exits (Linux); at once if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def watch_parent(parent_pid: int, poll_s: float = 1.0) -> threading.Thread:
    """A daemon thread that sends this process SIGTERM once its parent is no longer
    `parent_pid` (an orphan is adopted by init or a subreaper)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="moe-artifact-parent-watch", daemon=True)
    thread.start()
    return thread


def main(argv: list[str]) -> None:
    parent, command = int(argv[0]), argv[1:]
    die_with_parent(parent)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
