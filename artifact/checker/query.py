"""Evaluate a claim's query over the run directory's tidy tables (see schema.Query)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from artifact.checker.tables import RunTables
from artifact.config.claims import Query
from artifact.core.errors import ArtifactError
from artifact.routing.correlation import iqr_outliers

OPS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "ne": lambda a, b: not _equal(a, b),
}


class QueryError(ArtifactError):
    """The query cannot be answered from this run directory (missing table, column, rows)."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return None


def _equal(a: Any, b: Any) -> bool:
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return math.isclose(na, nb, rel_tol=1e-12, abs_tol=1e-12)
    return a == b


def _match(value: Any, cond: Any) -> bool:
    if isinstance(cond, list):
        return any(_equal(value, c) for c in cond)
    if isinstance(cond, dict):
        if value is None:
            return False
        return all(OPS[op](value, ref) for op, ref in cond.items())
    return _equal(value, cond)


def profile_value(profile_raw: dict, dotted: str) -> Any:
    node: Any = profile_raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise QueryError(f"the profile has no '{dotted}' (asked for by $profile.{dotted})")
        node = node[part]
    return node


def reduce_values(values: list, how: str) -> float | None:
    if how == "count":
        return float(len(values))
    if not values:
        return None
    if how == "nunique":
        return float(len(set(values)))
    v = np.asarray(values, dtype=np.float64)
    if how == "mean":
        return float(v.mean())
    if how == "median":
        return float(np.median(v))
    if how == "sum":
        return float(v.sum())
    if how == "min":
        return float(v.min())
    if how == "max":
        return float(v.max())
    if how == "std":
        return float(v.std(ddof=1)) if v.size > 1 else 0.0
    if how == "cv":
        mean = v.mean()
        return float(v.std(ddof=1) / abs(mean)) if v.size > 1 and mean else 0.0
    if how == "range":
        return float(v.max() - v.min())
    if how == "max_gap":
        return float(np.diff(np.sort(v)).max()) if v.size > 1 else 0.0
    if how == "first":
        return float(v[0])
    raise QueryError(f"unknown reduce '{how}'")


@dataclass
class Samples:
    """The rows a query matched, the column's values, and the reduced value if any."""

    query: Query
    rows: list[dict]  # the rows kept, aligned with values
    values: list[float]
    conditions: dict[str, Any]  # the conditions as resolved ($max, $profile...)
    matched: int = 0  # rows matching the conditions
    matched_rows: list[dict] = field(default_factory=list)  # all of them, values or not
    removed: list[dict] = field(default_factory=list)  # IQR outliers left out
    missing: int = 0  # matching rows without a value in the column

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def scalar(self) -> float | None:
        if self.query.reduce is None:
            return None
        return reduce_values(self.values, self.query.reduce)

    def groups(self) -> dict[Any, list[float]]:
        """Values grouped by query.by (sorted by the group key)."""
        key = self.query.by
        if key is None:
            raise QueryError("this relation needs 'by' in the query (the column to group on)")
        out: dict[Any, list[float]] = {}
        for row, value in zip(self.rows, self.values, strict=True):
            out.setdefault(row.get(key), []).append(value)
        return dict(sorted(out.items(), key=lambda kv: (kv[0] is None, kv[0])))

    def describe_where(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.conditions.items())


def run_query(query: Query, tables: RunTables, profile_raw: dict | None = None) -> Samples:
    rows = tables.get(query.table)
    columns = set().union(*(r.keys() for r in rows)) if rows else set()
    for name in (*query.where, *(c for c in (query.column, query.by) if c)):
        if rows and name not in columns:
            raise QueryError(
                f"table '{query.table}' has no column '{name}' "
                f"(columns: {', '.join(sorted(columns)[:40])})"
            )
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
    matched = [r for r in rows if all(_match(r.get(k), c) for k, c in conditions.items())]
    for key, how in deferred.items():
        present = [r[key] for r in matched if r.get(key) is not None]
        if not present:
            raise QueryError(f"no rows of '{query.table}' match {conditions} to take {how} {key}")
        target = max(present) if how == "$max" else min(present)
        conditions[key] = target
        matched = [r for r in matched if _equal(r.get(key), target)]
    if not matched:
        described = ", ".join(f"{k}={v}" for k, v in conditions.items()) or "(no conditions)"
        raise QueryError(f"no rows of table '{query.table}' match {described}")
    kept, values, missing = [], [], 0
    any_value = query.reduce in ("count", "nunique")
    for row in matched:
        if query.column is None:
            kept.append(row)
            continue
        raw = row.get(query.column)
        value = _number(raw) if not isinstance(raw, bool) else float(raw)
        if any_value and value is None and raw is not None:
            kept.append(row)
            values.append(json.dumps(raw, sort_keys=True) if not isinstance(raw, str) else raw)
            continue
        if value is None or math.isnan(value):
            missing += 1
            continue
        kept.append(row)
        values.append(value)
    removed: list[dict] = []
    if query.iqr_filter and len(values) >= 4 and not any_value:
        mask = iqr_outliers(values)
        removed = [
            {"row": kept[i].get("run") or kept[i].get("name") or i, "value": values[i]}
            for i in np.flatnonzero(mask)
        ]
        kept = [r for r, out in zip(kept, mask, strict=True) if not out]
        values = [v for v, out in zip(values, mask, strict=True) if not out]
    if query.column is not None and not values:
        raise QueryError(
            f"column '{query.column}' of table '{query.table}' has no value in the "
            f"{len(matched)} matching rows"
        )
    if query.column is None:
        values = [1.0] * len(kept)
    return Samples(query, kept, values, conditions, len(matched), matched, removed, missing)
