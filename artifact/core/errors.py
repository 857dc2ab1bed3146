"""User-facing errors: one line that names the file, the line or field, and what to do.

The CLI prints an `ArtifactError` as that one line and exits 2, never with a traceback;
anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


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


class FieldProblem(ValueError):
    """Raised by a model-level validator to blame one field (pydantic's loc is empty there)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


# pydantic's range errors, said as the allowed range (ctx holds the bound by its short name).
BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def explain(err: Mapping[str, Any]) -> tuple[str | None, str]:
    """(field path, what is wrong) of one pydantic validation error, for one line."""
    kind, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
    field = ".".join(str(p) for p in err["loc"]) or None
    cause = ctx.get("error")
    if isinstance(cause, FieldProblem):
        field, msg = cause.field, cause.message
    elif kind == "extra_forbidden":
        msg = "unknown field"
    elif kind == "missing":
        msg = "required field is missing"
    elif kind == "literal_error" and "expected" in ctx:
        msg = f"got {err.get('input')!r}; allowed: {ctx['expected']}"
    elif kind in BOUNDS and BOUNDS[kind][1] in ctx:
        sign, bound = BOUNDS[kind]
        msg = f"got {err.get('input')!r}; allowed: {sign} {ctx[bound]}"
    elif kind == "value_error":
        msg = str(cause) if cause is not None else msg.removeprefix("Value error, ")
    elif "input" in err and kind != "assertion_error":
        msg = f"{msg} (got {err['input']!r})"
    return field, msg


def more_errors(errors: Sequence[object]) -> str:
    """` (and N more errors)` when a validation found more than the one explained."""
    more = len(errors) - 1
    return f" (and {more} more error{'s' if more > 1 else ''})" if more else ""


# What to do when the disk refuses a write, by errno.
DISK_ERRORS = {
    errno.ENOSPC: "free some space (or pick a --run-dir elsewhere) and rerun; finished units "
    "are kept",
    errno.EDQUOT: "free some of your quota (or pick a --run-dir elsewhere) and rerun; finished "
    "units are kept",
    errno.EROFS: "pick a writable --run-dir; `check` and `plots` can write to another folder "
    "with --out DIR",
    errno.EACCES: "make it writable or pick another --run-dir; `check` and `plots` can write "
    "to another folder with --out DIR",
}


def disk_error(exc: OSError) -> str | None:
    """One line for a write the disk refused (full, read-only, no permission), else None."""
    todo = DISK_ERRORS.get(exc.errno) if exc.errno is not None else None
    if todo is None:
        return None
    return f"{exc.filename or 'a file'}: {exc.strerror}; {todo}"
