"""Tidy tables as pandas DataFrames: built from rows, written as CSV, shown as Markdown.

The one CSV writer and the one Markdown table of the package. Cells keep the values as given
(object columns: an int stays an int, a list a list); a missing value is None, an empty
CSV cell and an empty Markdown cell. pandas is imported inside the functions, so that
importing this module (and the CLI) stays fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifact.core.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

Rows = Iterable[Mapping[str, Any]] | Iterable[Sequence[Any]]


def frame(rows: Rows, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows (mappings, or sequences in the order of `columns`) as a DataFrame.

    With `columns`, exactly those columns in that order (a key a row lacks is None)."""
    import pandas as pd

    table = pd.DataFrame(
        list(rows), columns=list(columns) if columns is not None else None, dtype=object
    )
    return table.where(table.notna(), None)


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def csv_text(rows: Rows, columns: Sequence[str]) -> str:
    """CSV of the rows' `columns`, header first (a list cell is `a;b`)."""
    table = frame(rows, columns)
    # `where`, not `map`: map would infer dtypes again, and an int column with gaps is float.
    joined = table.map(lambda v: ";".join(map(str, v)) if _is_list(v) else "")
    table = table.where(~table.map(_is_list), joined)
    return table.to_csv(index=False, lineterminator="\n")


def _markdown_cell(value: Any) -> str:
    if value is None:
        return ""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Rows, columns: Sequence[str], align: str = "") -> str:
    """A Markdown (pipe) table of the rows' `columns` (floats to 4 significant digits);
    `align` has an `l` or `r` per column (default: all left)."""
    cells = frame(rows, columns).map(_markdown_cell)
    rule = "".join("---:|" if a == "r" else "---|" for a in align.ljust(len(columns), "l"))
    lines = ["| " + " | ".join(map(_markdown_cell, columns)) + " |", "|" + rule]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def table_file(folder: Path, name: str, ext: str = "json") -> Path:
    """Where a table lives in a folder of tables: `<folder>/<name>.<ext>` (csv or json)."""
    return Path(folder) / f"{name}.{ext}"


def write_table(
    folder: str | Path, name: str, rows: list[dict], columns: Sequence[str] | None = None
) -> list[Path]:
    """A table as `<name>.csv` and `<name>.json` in folder, atomically. Columns: `columns`,
    else every key of the rows in first-seen order."""
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    csv_path, json_path = table_file(Path(folder), name, "csv"), table_file(Path(folder), name)
    atomic_write_text(csv_path, csv_text(rows, columns))
    atomic_write_json(json_path, rows)
    return [csv_path, json_path]
