"""File helpers shared by every stage: atomic writes, content hashes, strict JSON/JSONL readers."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from artifact.core.errors import ArtifactError

# Temp names are made here, not by tempfile (its files are 0600 and its folders 0700): the
# kernel then applies the umask at creation, as to any file, with no window to chmod.
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _create_temp(create: Callable[[Path], Any], path: Path, suffix: str) -> tuple[Any, Path]:
    """`create` a fresh hidden name beside `path`: (what it returned, the name)."""
    while True:
        name = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            return create(name), name
        except FileExistsError:
            continue


def temp_dir_beside(path: str | Path) -> Path:
    """A new empty hidden folder beside `path` (0777 less the umask), to fill and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _create_temp(lambda name: os.mkdir(name, 0o777), path, "")[1]


def resolve_within(path: str | Path, folder: str | Path) -> Path | None:
    """`path` with symlinks resolved, if that lies inside `folder` (not `folder` itself)."""
    target, root = Path(path).resolve(), Path(folder).resolve()
    return target if target != root and target.is_relative_to(root) else None


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside `path`; on success fsync and rename it over `path`.

    A crash or exception leaves either the old file or none, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(lambda name: os.open(name, _TEMP_FLAGS, 0o666), path, ".tmp")
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def dumps_json(obj: Any) -> str:
    """Canonical JSON for files we write: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_json(path: str | Path) -> Any:
    """Load a JSON file; a missing, empty, truncated or corrupt file raises one clear line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError("file not found", path=path) from None
    except IsADirectoryError:
        raise ArtifactError("is a directory, expected a JSON file", path=path) from None
    if not raw.strip():
        raise ArtifactError("file is empty, expected JSON", path=path)
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"not UTF-8 text at byte {exc.start}", path=path) from None
    except json.JSONDecodeError as exc:
        # JSONDecodeError.pos is a character offset; report the byte offset readers can seek to.
        byte = len(exc.doc[: exc.pos].encode("utf-8"))
        # A file cut mid-write ends inside a value or a string: the error sits at its end.
        cut = exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated string")
        what = "truncated JSON" if cut else "corrupt JSON"
        raise ArtifactError(
            f"{what} at byte {byte} (line {exc.lineno}, column {exc.colno}): {exc.msg}",
            path=path,
        ) from None


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """A text file's content; a missing or non-UTF-8 file raises one clear line."""
    path = Path(path)
    try:
        return path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise ArtifactError("file not found", path=path) from None
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"not UTF-8 text at byte {exc.start}", path=path) from None


def read_jsonl(path: str | Path, *, required: tuple[str, ...] = ()) -> list[dict]:
    """Read a JSONL file of objects; every bad line is reported as `file:line: reason`."""
    path = Path(path)
    text = read_text(path)
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ArtifactError(
                f"not valid JSON ({exc.msg})", path=path, where=str(lineno)
            ) from None
        if not isinstance(rec, dict):
            raise ArtifactError(
                f"expected a JSON object, got {type(rec).__name__}", path=path, where=str(lineno)
            )
        for key in required:
            if key not in rec:
                raise ArtifactError(f"record has no '{key}' field", path=path, where=str(lineno))
        records.append(rec)
    if not records:
        raise ArtifactError("file is empty, expected one JSON object per line", path=path)
    return records
