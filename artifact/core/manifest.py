"""The run directory and its manifest.json: one record per stage.

A record holds status, start/end, inputs (content hashes of the upstream files the stage
read), the hash of the profile sections it depends on, its outputs' hashes, package versions,
git commit, host and hardware, and a one-line summary. The manifest is updated under a file
lock (Slurm array tasks may share a run directory) and written atomically.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from artifact.core.errors import ArtifactError
from artifact.core.io import sha256_file
from artifact.core.layout import RunLayout
from artifact.core.records import Manifest, StageRecord, read_record, write_record

SCHEMA_VERSION = 1


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def hash_tree(root: Path, base: Path) -> dict[str, str]:
    """sha256 of every regular file under `root`, keyed by its path relative to `base`.

    Temp files of interrupted atomic writes (dot-prefixed, .tmp) are not outputs.
    """
    hashes: dict[str, str] = {}
    if not root.exists():
        return hashes
    for path in sorted(root.rglob("*")):
        if not path.is_file() or (path.name.startswith(".") and path.name.endswith(".tmp")):
            continue
        hashes[path.relative_to(base).as_posix()] = sha256_file(path)
    return hashes


class RunDir:
    """`runs/<profile>/` by default: one folder per stage plus manifest.json."""

    def __init__(self, path: str | Path, elsewhere: dict[str, Path] | None = None):
        self.path = Path(path)
        self.layout = RunLayout(self.path, elsewhere)

    @property
    def manifest_path(self) -> Path:
        return self.layout.manifest

    def stage_dir(self, stage: str) -> Path:
        return self.layout.stage(stage)

    def manifest(self) -> Manifest:
        if not self.manifest_path.exists():
            return Manifest(schema_version=SCHEMA_VERSION, stages={})
        return read_record(
            self.manifest_path,
            Manifest,
            hint="move it away to start the run directory afresh",
        )

    def stage_record(self, stage: str) -> StageRecord | None:
        return self.manifest().stages.get(stage)

    def read(self) -> dict:
        """The manifest as written (for readers of plain JSON)."""
        return self.manifest().model_dump(mode="json", by_alias=True, exclude_unset=True)

    def record(self, stage: str) -> dict | None:
        """A stage's record as written (for readers of plain JSON)."""
        record = self.stage_record(stage)
        return None if record is None else record.model_dump(mode="json", exclude_unset=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.layout.manifest_lock, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def update(self, stage: str, **fields) -> StageRecord:
        """Merge `fields` into the stage's record and write the manifest atomically."""
        with self._locked():
            data = self.manifest()
            old = data.stages.get(stage)
            merged = old.model_dump(exclude_unset=True) if old else {}
            merged.update(fields)
            record = StageRecord.model_validate(merged)
            data.stages[stage] = record
            write_record(self.manifest_path, data)
            return record

    def set_profile(self, name: str, path: str | None) -> None:
        with self._locked():
            data = self.manifest()
            previous = data.profile
            if previous and previous != name:
                raise ArtifactError(
                    f"run directory belongs to profile '{previous}', not '{name}'; "
                    "pick another --run-dir",
                    path=self.path,
                )
            data.profile = name
            data.profile_path = path
            write_record(self.manifest_path, data)

    def outputs_of(self, stages: tuple[str, ...]) -> dict[str, str]:
        """Current content hashes of every file the named stages wrote."""
        hashes: dict[str, str] = {}
        for stage in stages:
            hashes.update(hash_tree(self.stage_dir(stage), self.path))
        return hashes
