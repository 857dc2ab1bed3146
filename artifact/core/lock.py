"""One lock per run directory: one `moe-artifact` run at a time writes into it.

`run_dir_lock` holds an exclusive `fcntl.flock` on `<run dir>/.lock` while a stage runs and
writes who holds it (pid, host, command, start) to `.lock.json`. A second run fails at once
with one line naming that holder. The kernel drops a flock when its holder dies (kill -9
included), so a lock left by a dead process never blocks: the next run takes it and says
whose record it replaces (a `.lock.json` that outlived its run). A run directory this user
cannot write is not locked: no run of ours can change it.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from rich.markup import escape

from artifact.core.console import console
from artifact.core.errors import ArtifactError
from artifact.core.layout import RunLayout
from artifact.core.manifest import now_iso
from artifact.core.records import Record, read_record, write_record


class LockHolder(Record):
    """`.lock.json`: the run that holds the run directory's lock."""

    pid: int
    host: str
    command: str
    since: str


def describe(holder: LockHolder | None) -> str:
    if holder is None:
        return "another process (it has not written .lock.json yet)"
    return f"pid {holder.pid} on {holder.host} since {holder.since} ({holder.command})"


def command_line() -> str:
    """This process's command, as typed (`python -m artifact` for the package's __main__)."""
    program = Path(sys.argv[0])
    name = "python -m artifact" if program.name == "__main__.py" else shlex.quote(program.name)
    return " ".join([name, shlex.join(sys.argv[1:])])


def read_holder(layout: RunLayout) -> LockHolder | None:
    with suppress(ArtifactError):
        if layout.run_lock_record.exists():
            return read_record(layout.run_lock_record, LockHolder)
    return None


@contextmanager
def run_dir_lock(root: Path) -> Iterator[None]:
    """Hold the run directory's lock, or raise ArtifactError naming its holder."""
    root.mkdir(parents=True, exist_ok=True)
    if not os.access(root, os.W_OK):
        yield
        return
    layout = RunLayout(root)
    with open(layout.run_lock, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArtifactError(
                f"in use by {describe(read_holder(layout))}; wait for that run to end, "
                "or pick another --run-dir",
                path=root,
            ) from None
        stale = read_holder(layout)
        if stale is not None:
            console.print(
                f"[yellow]{escape(str(root))}[/]: taking over the lock of {describe(stale)}, "
                "which ended without releasing it (the kernel frees a dead process's flock)",
                soft_wrap=True,
            )
        holder = LockHolder(
            pid=os.getpid(),
            host=socket.gethostname(),
            command=command_line(),
            since=now_iso(),
        )
        write_record(layout.run_lock_record, holder)
        try:
            yield
        finally:
            layout.run_lock_record.unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_UN)
