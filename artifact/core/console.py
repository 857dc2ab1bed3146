"""Terminal output: one rich console on stderr and progress bars for long loops."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from types import TracebackType
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True, highlight=False)


def progress_bar() -> Progress:
    """A progress bar that disappears when stderr is not a terminal (logs stay clean)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not sys.stderr.isatty(),
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


class UnitProgress:
    """Progress over long units: the running unit, units done and left, and an ETA from the
    mean time of the units finished so far (a bar's own rate is mostly unknown here).

    On a terminal, one live line; otherwise (CI, `| tee`, nohup, Slurm) one plain line per
    finished unit, so a log shows progress too."""

    def __init__(self, description: str, total: int):
        self.description, self.total = description, total
        self.seconds: list[float] = []
        self.current, self.t0 = "", time.monotonic()
        self.bar: Progress | None = None

    def __enter__(self) -> UnitProgress:
        if console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                console=console,
                transient=True,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task(self.description, total=self.total, eta=self.eta())
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.__exit__(kind, exc, tb)

    def eta(self) -> str:
        left = self.total - len(self.seconds)
        if not self.seconds:
            return f"{left} left, ETA after the first unit"
        mean = sum(self.seconds) / len(self.seconds)
        remaining = timedelta(seconds=round(mean * left))
        return f"{left} left, ETA {remaining} ({mean:.1f} s per unit)"

    def start(self, unit: str) -> None:
        self.current, self.t0 = unit, time.monotonic()
        if self.bar is not None:
            self.bar.update(self.task, description=f"{self.description} {unit}")

    def done(self) -> None:
        seconds = time.monotonic() - self.t0
        self.seconds.append(seconds)
        if self.bar is not None:
            self.bar.update(self.task, advance=1, eta=self.eta())
        else:
            console.print(
                f"  {self.description}: {len(self.seconds)}/{self.total} done "
                f"({self.current}, {seconds:.1f} s); {self.eta()}",
                soft_wrap=True,
            )
