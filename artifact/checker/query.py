"""Evaluate a claim's query over the run directory's tidy tables (see config.claims.Query).

The table is a pandas DataFrame of the values as stored (artifact.checker.tables); `where`
is a boolean mask, `$max` / `$min` a column reduction, `by` a groupby and `reduce` a Series
reduction. Numbers compare with a relative and absolute tolerance of 1e-12.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from artifact.checker.tables import RunTables
from artifact.config.claims import Query
from artifact.core.errors import ArtifactError
from artifact.routing.correlation import iqr_outliers

if TYPE_CHECKING:
    import pandas as pd

COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


class QueryError(ArtifactError):
    """The query cannot be answered from this run directory (missing table, column, rows)."""


def _is_number(value: Any, bools: bool = False) -> bool:
    if isinstance(value, bool | np.bool_):
        return bools
    return isinstance(value, numbers.Real)


def numbers_of(column: pd.Series, bools: bool = False) -> pd.Series:
    """The column as float64: NaN where a cell is not a number (None, text; bools unless
    `bools`)."""
    import pandas as pd

    kept = column.where(column.map(lambda v: _is_number(v, bools)))
    return pd.to_numeric(kept, errors="coerce").astype(np.float64)


def _equals(column: pd.Series, value: Any) -> pd.Series:
    if value is None:
        return column.isna()
    same = (column == value).fillna(False).astype(bool)
    if _is_number(value):
        close = np.isclose(numbers_of(column), float(value), rtol=1e-12, atol=1e-12)
        return same | close
    return same


def _mask(column: pd.Series, cond: Any) -> pd.Series:
    """Rows whose value satisfies `cond`: a value, a list of values, or {op: value}."""
    if isinstance(cond, list):
        import pandas as pd

        mask = pd.Series(False, index=column.index)
        for value in cond:
            mask |= _equals(column, value)
        return mask
    if not isinstance(cond, dict):
        return _equals(column, cond)
    mask = column.notna()
    for op, ref in cond.items():
        if op == "ne":
            mask &= ~_equals(column, ref)
        elif _is_number(ref):
            mask &= COMPARE[op](numbers_of(column), ref)
        else:
            mask &= COMPARE[op](column.where(mask), ref).fillna(False).astype(bool)
    return mask


def _count_value(value: Any) -> Any:
    if _is_number(value, bools=True):
        return float(value)
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def profile_value(profile_raw: dict, dotted: str) -> Any:
    node: Any = profile_raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise QueryError(f"the profile has no '{dotted}' (asked for by $profile.{dotted})")
        node = node[part]
    return node


def reduce_values(values: Sequence[Any], how: str) -> float | None:
    import pandas as pd

    if how == "count":
        return float(len(values))
    if not len(values):
        return None
    if how == "nunique":
        return float(pd.Series(values, dtype=object).nunique())
    v = pd.Series(values, dtype=np.float64)
    if how in ("std", "cv", "max_gap") and v.size < 2:
        return float("nan")  # one value has no spread to measure, not a spread of 0
    if how == "cv":
        mean = v.mean()
        return float(v.std(ddof=1) / abs(mean)) if mean else float("nan")
    reducers: dict[str, Callable[[], Any]] = {
        "mean": v.mean,
        "median": v.median,
        "sum": v.sum,
        "min": v.min,
        "max": v.max,
        "std": lambda: v.std(ddof=1),
        "range": lambda: v.max() - v.min(),
        "max_gap": lambda: v.sort_values().diff().max(),
        "first": lambda: v.iloc[0],
    }
    if how not in reducers:
        raise QueryError(f"unknown reduce '{how}'")
    return float(reducers[how]())


def row_labels(rows: pd.DataFrame, columns: Sequence[str] = ("run", "name")) -> list[Any]:
    """Each row's first non-empty value of `columns` (None where it has none)."""
    import pandas as pd

    label = pd.Series(None, index=rows.index, dtype=object)
    for name in reversed(columns):
        if name in rows:
            present = rows[name].notna() & rows[name].astype(bool)
            label = label.mask(present, rows[name])
    return label.tolist()


@dataclass
class Samples:
    """The rows a query matched, the column's values, and the reduced value if any."""

    query: Query
    rows: pd.DataFrame  # the rows kept, aligned with values
    values: list[Any]
    conditions: dict[str, Any]  # the conditions as resolved ($max, $profile...)
    matched_rows: pd.DataFrame  # all the rows matching the conditions, values or not
    removed: list[dict] = field(default_factory=list)  # IQR outliers left out
    missing: int = 0  # matching rows without a value in the column
    pooled_runs: int = 0  # runs pooled into per-launch medians (see per_launch), 0 if none

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def scalar(self) -> float | None:
        if self.query.reduce is None:
            return None
        return reduce_values(self.values, self.query.reduce)

    def groups(self) -> dict[Any, list[float]]:
        """Values grouped by query.by (sorted by the group key; rows without one left out)."""
        import pandas as pd

        key = self.query.by
        if key is None:
            raise QueryError("this relation needs 'by' in the query (the column to group on)")
        values = pd.Series(self.values, index=self.rows.index, dtype=np.float64)
        return {k: group.tolist() for k, group in values.groupby(self.rows[key], sort=True)}


def launch_groups(runs: Sequence[Any], launches: Sequence[Any]) -> list[list[int]] | None:
    """Positions of the runs of each (unit, launch), the unit being the folder of the run's
    name, in first-seen order; None when the runs are the unit already (one run per launch,
    or every run from a single launch)."""
    members: dict[tuple, list[int]] = {}
    units = [str(r).rsplit("/", 1)[0] for r in runs]
    for position, key in enumerate(zip(units, launches, strict=True)):
        members.setdefault(key, []).append(position)
    if len(members) == len(runs) or len({launch for _, launch in members}) < 2:
        return None
    return list(members.values())


def per_launch(samples: Samples) -> Samples:
    """Server launches as the statistical unit: one value per (unit, launch), the median of
    its runs, with that launch's first row (see launch_groups); the samples as they are when
    the query reduces or its table has no launches."""
    rows = samples.rows
    if samples.query.reduce is not None or not {"run", "launch"} <= set(rows.columns):
        return samples
    groups = launch_groups(rows["run"].tolist(), rows["launch"].tolist())
    if groups is None:
        return samples
    return dataclasses.replace(
        samples,
        rows=rows.iloc[[group[0] for group in groups]],
        values=[float(np.median([samples.values[i] for i in group])) for group in groups],
        pooled_runs=len(rows),
    )


def run_query(query: Query, tables: RunTables, profile_raw: dict | None = None) -> Samples:
    table = tables.frame(query.table)
    needed = [*query.where, *(c for c in (query.column, query.by) if c)]
    if len(table):
        unknown = [name for name in needed if name not in table.columns]
        if unknown:
            raise QueryError(
                f"table '{query.table}' has no column '{unknown[0]}' "
                f"(columns: {', '.join(sorted(table.columns)[:40])})"
            )
    else:  # no rows: every condition fails on None, as on a missing column
        table = table.reindex(columns=[*table.columns, *set(needed) - set(table.columns)])
        table = table.astype(object).where(table.notna(), None)
    # Literal conditions first, then $profile references, then $max / $min.
    conditions: dict[str, Any] = {}
    deferred = {}
    for key, cond in query.where.items():
        if isinstance(cond, str) and cond.startswith("$profile."):
            cond = profile_value(profile_raw or {}, cond[len("$profile.") :])
        if isinstance(cond, str) and cond in ("$max", "$min"):
            deferred[key] = cond
        else:
            conditions[key] = cond
    mask = np.ones(len(table), dtype=bool)
    for key, cond in conditions.items():
        mask &= _mask(table[key], cond).to_numpy()
    matched = table[mask]
    for key, how in deferred.items():
        present = matched[key].dropna()
        if present.empty:
            raise QueryError(f"no rows of '{query.table}' match {conditions} to take {how} {key}")
        target = present.max() if how == "$max" else present.min()
        conditions[key] = target
        matched = matched[_equals(matched[key], target)]
    if matched.empty:
        described = ", ".join(f"{k}={v}" for k, v in conditions.items()) or "(no conditions)"
        raise QueryError(f"no rows of table '{query.table}' match {described}")
    any_value = query.reduce in ("count", "nunique")
    if query.column is None:
        kept, values = matched, [1.0] * len(matched)
    else:
        raw = matched[query.column]
        number = numbers_of(raw, bools=True)
        keep = number.notna()
        if any_value:  # text and other values count too
            keep |= raw.notna() & ~raw.map(lambda v: _is_number(v, bools=True))
            values = raw[keep].map(_count_value).tolist()
        else:
            values = number[keep].tolist()
        kept = matched[keep]
    missing = len(matched) - len(kept) if query.column is not None else 0
    removed: list[dict] = []
    if query.iqr_filter and len(values) >= 4 and not any_value:
        out = iqr_outliers(values)
        labels = row_labels(kept)
        removed = [
            {"row": labels[i] if labels[i] is not None else int(i), "value": values[i]}
            for i in np.flatnonzero(out)
        ]
        kept = kept[~out]
        values = [v for v, o in zip(values, out, strict=True) if not o]
    if query.column is not None and not values:
        raise QueryError(
            f"column '{query.column}' of table '{query.table}' has no value in the "
            f"{len(matched)} matching rows"
        )
    return Samples(query, kept, values, conditions, matched, removed, missing)
