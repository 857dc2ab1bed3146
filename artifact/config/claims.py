"""The claims file `expected_results/<profile>.yaml`: schema, loader, one-line errors.

```yaml
profile: local                      # the profile these claims are for
description: ...
claims:
  - id: exp1.throughput_rises_with_seqs.eager   # unique, [a-z0-9_.-]
    kind: result                               # or completeness
    statement: Output throughput rises with max-num-seqs (eager).
    source: "Fig. 1 (Experiment 1)"            # report section or figure it comes from
    experiment: config_sweep                   # optional: SKIP when the profile disables it
    quantity:                                  # a query over the run directory's tables
      table: runs
      where:
        experiment: config_sweep
        mode: eager
        max_num_batched_tokens: $profile.experiments.config_sweep.fixed_max_num_batched_tokens
      column: output_throughput
      by: max_num_seqs
    relation: {kind: increasing}
```

A claim has a `quantity` and exactly one of

- `expect`: a reference value with a band, `{value, tolerance, unit}` or bounds `{min, max}`;
- `hardware`: references keyed by hardware (glob patterns over the hardware id, e.g.
  `nvidia-a100*-x4`, `cpu`); the first pattern matching the hardware at hand is used, and a
  claim with no pattern for it is SKIP with that reason, never a silent pass;
- `relation`: a relation between measured quantities (see artifact.checker.rules for every
  kind and the statistical rule that judges it).

Tolerances (`tolerance:`): `rel` / `abs` for both sides, or `rel_lower`, `rel_upper`,
`abs_lower`, `abs_upper` per side; the band of a side is the wider of its relative
(`rel x |value|`) and absolute allowances; a side with neither is exact.

Every claim has a `kind`: `completeness` (the run is whole: counts, totals, provenance,
values the profile or the seed fix) or `result` (what the experiment found: a value that
could have come out otherwise). The claims table shows them apart.

Optional: `per_row: true` (a value claim holds for every matching row, not only for the
reduced value), `depends_on: [ids]` (premises: a claim whose premise FAILs is FAIL, one whose
premise is SKIP is SKIP), `xfail: reason` (a known failure: FAIL becomes XFAIL with the
reason; one that holds is XPASS, a failure: the documented findings changed),
`stability: text` (the evidence that a timing claim is robust).

Queries (`quantity:`, and `relation.other:`): `table` (runs, correlations, per_layer,
summary, expert_loads, legacy, default_vs_legacy, datasets, provenance, eplb, eplb_runs),
`where` (column: value; a list means any of; `{gt, gte, lt, lte, ne}` compare; `$max` /
`$min` the largest / smallest value of that column among rows matching the other
conditions; `$profile.<dotted.path>` a value of the profile), `column`, `reduce` (mean,
median, sum, min, max, count, std, cv, range, max_gap, nunique, first; count and nunique
also take non-numeric columns), `by` (group rows
by a column: trends, pairing) and `iqr_filter` (value claims only: drop the 1.5 x IQR
outliers of `column`, reported).

Two files for the perlmutter profile: `perlmutter.yaml` states what a correct new run must
show; `study-audit.yaml` (STUDY_AUDIT, the default with `check --from-study`) judges the
study's own claims on its own data, each known defect an `xfail`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from artifact.config.loader import field_path, read_yaml, validate
from artifact.config.profiles import Profile, project_root
from artifact.core.errors import ArtifactError

REDUCERS = (
    "mean",
    "median",
    "sum",
    "min",
    "max",
    "count",
    "std",
    "cv",
    "range",
    "max_gap",
    "nunique",
    "first",
)
RELATIONS = (
    "less",
    "greater",
    "not_greater",
    "not_less",
    "equivalent",
    "not_different",
    "increasing",
    "decreasing",
    "correlated",
    "uncorrelated",
)
ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Query(Strict):
    table: str
    where: dict[str, Any] = Field(default_factory=dict)
    column: str | None = None
    reduce: Literal[REDUCERS] | None = None  # type: ignore[valid-type]
    by: str | None = None
    iqr_filter: bool = False

    @model_validator(mode="after")
    def _column(self) -> Query:
        if self.column is None and self.reduce != "count":
            raise ValueError("a query needs 'column' (only reduce: count goes without one)")
        return self


class Tolerance(Strict):
    rel: float | None = Field(None, ge=0)
    abs: float | None = Field(None, ge=0)
    rel_lower: float | None = Field(None, ge=0)
    rel_upper: float | None = Field(None, ge=0)
    abs_lower: float | None = Field(None, ge=0)
    abs_upper: float | None = Field(None, ge=0)

    def side(self, which: str) -> tuple[float | None, float | None]:
        """(relative, absolute) allowance of the lower or upper side."""
        rel = getattr(self, f"rel_{which}")
        absolute = getattr(self, f"abs_{which}")
        return (self.rel if rel is None else rel, self.abs if absolute is None else absolute)


class Reference(Strict):
    value: float | None = None
    tolerance: Tolerance | None = None
    min: float | None = None
    max: float | None = None
    unit: str = ""
    # Where the reference number comes from (e.g. "the study's Table 1").
    origin: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Reference:
        if self.value is None and self.min is None and self.max is None:
            raise ValueError("a reference needs 'value' (with a tolerance) or 'min'/'max' bounds")
        if self.value is not None and (self.min is not None or self.max is not None):
            raise ValueError("give either 'value' with a tolerance or 'min'/'max', not both")
        if self.tolerance is not None and self.value is None:
            raise ValueError("'tolerance' goes with 'value'")
        return self

    def band(self) -> tuple[float, float]:
        """(low, high) of the accepted interval (inclusive)."""
        if self.value is None:
            low = -float("inf") if self.min is None else self.min
            high = float("inf") if self.max is None else self.max
            return low, high
        tol = self.tolerance or Tolerance()
        allowance = {}
        for which in ("lower", "upper"):
            rel, absolute = tol.side(which)
            allowance[which] = max(
                0.0 if rel is None else rel * abs(self.value), 0.0 if absolute is None else absolute
            )
        return self.value - allowance["lower"], self.value + allowance["upper"]


class Relation(Strict):
    kind: Literal[RELATIONS]  # type: ignore[valid-type]
    # Two-sample relations: `quantity` is a, `other` is b (e.g. a < b).
    other: Query | None = None
    # Pair a's and b's samples on this column, or these columns (same dataset, same
    # configuration, ...); repetitions of one key are averaged first.
    paired_by: str | list[str] | None = None
    test: Literal["welch", "mann_whitney"] = "welch"
    alpha: float = Field(0.05, gt=0, lt=0.5)
    # Non-inferiority / equivalence margin, relative to |mean of b| or absolute.
    margin_rel: float | None = Field(None, ge=0)
    margin_abs: float | None = Field(None, ge=0)
    # Trends (groups: quantity.by, in order) take the Jonckheere-Terpstra test at alpha.
    # Correlations: x column (y is quantity.column), method, sign, and size limits;
    # `uncorrelated` needs max_abs_r, the margin |rho| must be shown to stay below.
    x: str | None = None
    method: Literal["spearman", "pearson"] = "spearman"
    sign: Literal["positive", "negative"] = "positive"
    min_abs_r: float = Field(0.0, ge=0, le=1)
    max_abs_r: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _fields(self) -> Relation:
        two_sample = ("less", "greater", "not_greater", "not_less", "equivalent", "not_different")
        if self.kind in two_sample and self.other is None:
            raise ValueError(f"relation '{self.kind}' compares two quantities: give 'other'")
        if self.kind in ("not_greater", "not_less", "equivalent") and (
            self.margin_rel is None and self.margin_abs is None
        ):
            raise ValueError(f"relation '{self.kind}' needs margin_rel or margin_abs")
        if self.kind == "uncorrelated" and self.max_abs_r is None:
            raise ValueError(
                "relation 'uncorrelated' needs max_abs_r: the margin |rho| must stay below "
                "(a correlation whose interval merely contains 0 is not shown to be absent)"
            )
        if self.kind not in two_sample and "test" in self.model_fields_set:
            raise ValueError(
                f"relation '{self.kind}' has its own test (trends: Jonckheere-Terpstra; "
                "correlations: Fisher z); drop 'test'"
            )
        return self


class Claim(Strict):
    id: str
    statement: str
    source: str
    # completeness: the run is whole (counts, totals, provenance; fixed by construction);
    # result: what the experiment found, a value that could have come out otherwise.
    kind: Literal["completeness", "result"]
    experiment: Literal["config_sweep", "eplb_ablation", "imbalance"] | None = None
    quantity: Query
    expect: Reference | None = None
    hardware: dict[str, Reference] | None = None
    relation: Relation | None = None
    per_row: bool = False
    # Unit of the quantity, for display (value claims may give it in the reference instead).
    unit: str = ""
    depends_on: list[str] = Field(default_factory=list)
    xfail: str | None = None
    stability: str | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ID_RE.match(v):
            raise ValueError(f"claim id {v!r} must match [a-z0-9][a-z0-9_.-]*")
        return v

    @model_validator(mode="after")
    def _one_expectation(self) -> Claim:
        given = [k for k in ("expect", "hardware", "relation") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a claim needs exactly one of 'expect', 'hardware' or 'relation'"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.hardware is not None and not self.hardware:
            raise ValueError("'hardware' needs at least one pattern: reference")
        if self.per_row and self.relation is not None:
            raise ValueError("per_row goes with value claims, not relations")
        if self.relation is not None:
            queries = [self.quantity, self.relation.other]
            if any(q is not None and (q.iqr_filter or q.where.get("iqr_filter")) for q in queries):
                raise ValueError(
                    "a relation is judged on every row: drop the 1.5 x IQR filter (rank tests "
                    "and rank correlations are robust to outliers already, and the filter "
                    "removes the very points a trend or correlation is about)"
                )
        return self


class ClaimsFile(Strict):
    profile: str
    description: str = ""
    claims: list[Claim]

    @model_validator(mode="after")
    def _ids(self) -> ClaimsFile:
        seen: set[str] = set()
        for claim in self.claims:
            if claim.id in seen:
                raise ValueError(f"claim id '{claim.id}' appears twice")
            seen.add(claim.id)
        for claim in self.claims:
            for dep in claim.depends_on:
                if dep not in seen:
                    raise ValueError(f"claim '{claim.id}' depends on unknown claim '{dep}'")
        return self

    # The file it came from; set by load_claims.
    _path: Path | None = None

    @property
    def path(self) -> Path | None:
        return self._path


def _where(raw: Any, loc: tuple) -> str:
    """'claim <id>, field <path>' for an error at loc (claims.<i>.<field...>)."""
    if len(loc) >= 2 and loc[0] == "claims" and isinstance(loc[1], int):
        claims = raw.get("claims") if isinstance(raw, dict) else None
        ident = None
        if isinstance(claims, list) and loc[1] < len(claims) and isinstance(claims[loc[1]], dict):
            ident = claims[loc[1]].get("id")
        field = field_path(loc[2:])
        name = f"claim '{ident}'" if ident else f"claim #{loc[1] + 1}"
        return f"{name}, field '{field}'" if loc[2:] else name
    return f"field '{field_path(loc)}'"


def parse_claims(raw: Any, path: Path) -> ClaimsFile:
    claims = validate(
        ClaimsFile,
        raw,
        path,
        not_mapping="a claims file must be a YAML mapping with 'claims'",
        where=lambda loc: _where(raw, loc),
    )
    claims._path = path
    return claims


def load_claims(path: str | Path) -> ClaimsFile:
    """Load and validate a claims file; every error is one line naming the claim and field."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError("claims file not found", path=path)
    return parse_claims(read_yaml(path), path)


STUDY_AUDIT = Path("expected_results") / "study-audit.yaml"


def claims_path(
    profile: Profile, override: str | Path | None = None, *, study: bool = False
) -> Path:
    """`override` (a path given on the command line), else the audit's claims for the
    study's own data (`study`), else the profile's `expected_results` (relative to the
    checkout root)."""
    if override is not None:
        return Path(override).resolve()
    path = STUDY_AUDIT if study else Path(profile.expected_results)
    return path if path.is_absolute() else project_root() / path
