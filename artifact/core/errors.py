"""User-facing errors: one line that names the file, the line or field, and what to do.

The CLI prints an `ArtifactError` as that one line and exits 2, never with a traceback;
anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class ArtifactError(Exception):
    """An error caused by input, configuration or environment, explained in one line."""

    def __init__(self, message: str, *, path: str | Path | None = None, where: str | None = None):
        self.path = str(path) if path is not None else None
        self.where = where
        self.detail = message
        prefix = ""
        if self.path:
            prefix = self.path + (f":{where}" if where else "") + ": "
        elif where:
            prefix = f"{where}: "
        super().__init__(prefix + message)


class StageFailed(ArtifactError):
    """A stage could not finish; finished units are kept and a rerun resumes."""


class ServerRefused(StageFailed):
    """A server exited during start-up; `reason` is its own error, read from its log."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason
