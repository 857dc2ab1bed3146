"""The checker's schema, queries and verdict rules on in-memory tables."""

import math
from pathlib import Path

import pytest
import yaml

from artifact.checker import evaluate, load_claims
from artifact.checker.tables import RunTables, hardware_id
from artifact.config.claims import Reference, Tolerance, parse_claims
from artifact.config.profiles import load_profile, project_root
from artifact.core.errors import ArtifactError

REPO = project_root()


def tables_of(tmp_path: Path, **tables) -> RunTables:
    t = RunTables(tmp_path)
    t._cache.update(tables)
    return t


def judge(tmp_path, claims: list[dict], hardware: str = "cpu", **tables) -> dict:
    """{id: ClaimResult} of claims (dicts) on the given tables, local profile."""
    parsed = parse_claims({"profile": "local", "claims": claims}, tmp_path / "c.yaml")
    results = evaluate(
        parsed, tables_of(tmp_path, **tables), load_profile("local"), hardware=hardware
    )
    return {r.id: r for r in results}


def claim(ident="c", **fields) -> dict:
    return {"id": ident, "kind": "result", "statement": "s", "source": "test", **fields}


def sweep_rows(values: dict[tuple[str, int], list[float]], column="mean_ttft_ms") -> list[dict]:
    return [
        {
            "run": f"{mode}/{x}/{i}",
            "mode": mode,
            "max_num_seqs": x,
            "dataset": f"d{x}",
            "repetition": i,
            column: v,
        }
        for (mode, x), reps in values.items()
        for i, v in enumerate(reps)
    ]


@pytest.mark.parametrize("name", ["local", "gpu", "perlmutter"])
def test_shipped_claims_files_load(name):
    profile = load_profile(name)
    claims = load_claims(REPO / profile.expected_results)
    assert claims.profile == name and len(claims.claims) >= 10


@pytest.mark.parametrize("name", ["local", "gpu", "perlmutter", "vllm-cpu", "study-audit"])
def test_shipped_claims_fixed_by_construction_are_completeness(name):
    """Counts, provenance and the datasets (fixed by the profile and the seed) say the run
    is whole; they are not results. Results are relations or hardware-keyed measurements."""
    raw = yaml.safe_load((REPO / "expected_results" / f"{name}.yaml").read_text())
    for c in raw["claims"]:
        q = c["quantity"]
        fixed = q["table"] in ("datasets", "provenance") or q.get("reduce") in ("count", "nunique")
        if fixed:
            assert c["kind"] == "completeness", c["id"]
        if c["kind"] == "result":
            assert "relation" in c or "hardware" in c, c["id"]


def test_band_sides_and_units():
    ref = Reference(value=100, tolerance=Tolerance(rel=0.1, abs_upper=25))
    assert ref.band() == (90, 125)  # upper side: the wider of 10% and 25
    assert Reference(value=5, tolerance=Tolerance(abs=0)).band() == (5, 5)
    assert Reference(min=1).band() == (1, float("inf"))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"claims": [claim(quantity={"table": "runs", "column": "x"})]}, "exactly one of"),
        (
            {"claims": [claim("A b", quantity={"table": "t", "column": "x"}, expect={"min": 0})]},
            "must match",
        ),
        (
            {
                "claims": [
                    claim(quantity={"table": "t", "column": "x"}, expect={"min": 0}),
                    claim(quantity={"table": "t", "column": "x"}, expect={"min": 0}),
                ]
            },
            "appears twice",
        ),
        (
            {
                "claims": [
                    claim(
                        quantity={"table": "t", "column": "x"},
                        expect={"min": 0},
                        depends_on=["nope"],
                    )
                ]
            },
            "unknown claim 'nope'",
        ),
        (
            {"claims": [claim(quantity={"table": "t", "colum": "x"}, expect={"min": 0})]},
            "claim 'c', field 'quantity.colum': unknown field",
        ),
    ],
)
def test_schema_errors_are_one_line(tmp_path, raw, message):
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump({"profile": "local", **raw}))
    with pytest.raises(ArtifactError) as exc:
        load_claims(path)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert str(path) in str(exc.value)


def test_query_conditions_profile_references_and_extremes(tmp_path):
    rows = sweep_rows({("a", 2): [10], ("a", 4): [20], ("a", 8): [30], ("b", 8): [99]})
    results = judge(
        tmp_path,
        [
            claim(
                "largest",
                quantity={
                    "table": "runs",
                    "where": {"mode": "a", "max_num_seqs": "$max"},
                    "column": "mean_ttft_ms",
                },
                expect={"value": 30, "tolerance": {"abs": 0}},
            ),
            claim(
                "fixed",
                quantity={
                    "table": "runs",
                    "where": {
                        "max_num_seqs": "$profile.experiments.config_sweep.fixed_max_num_seqs"
                    },
                    "column": "mean_ttft_ms",
                },
                expect={"value": 20, "tolerance": {"abs": 0}},
            ),
            claim(
                "ops",
                quantity={
                    "table": "runs",
                    "where": {"mode": ["a", "b"], "max_num_seqs": {"gte": 4, "ne": 8}},
                    "column": "mean_ttft_ms",
                    "reduce": "count",
                },
                expect={"value": 1, "tolerance": {"abs": 0}},
            ),
            claim(
                "typo",
                quantity={"table": "runs", "column": "mean_ttfx_ms"},
                expect={"min": 0},
            ),
            claim(
                "empty",
                quantity={"table": "runs", "where": {"mode": "c"}, "column": "mean_ttft_ms"},
                expect={"min": 0},
            ),
        ],
        runs=rows,
    )
    assert results["largest"].verdict == "PASS"
    assert results["fixed"].verdict == "PASS"  # the local profile's fixed max-num-seqs is 4
    assert results["ops"].verdict == "PASS"
    assert (
        results["typo"].verdict == "FAIL" and "no column 'mean_ttfx_ms'" in results["typo"].reason
    )
    assert (
        results["empty"].verdict == "FAIL" and "no rows of table 'runs'" in results["empty"].reason
    )


def test_two_sample_rules_use_the_repetitions(tmp_path):
    rows = sweep_rows(
        {("a", 8): [100, 102, 98], ("b", 8): [120, 119, 121], ("c", 8): [104, 60, 150]}
    )

    def two(ident, kind, a, b, **rel):
        return claim(
            ident,
            quantity={"table": "runs", "where": {"mode": a}, "column": "mean_ttft_ms"},
            relation={
                "kind": kind,
                "other": {"table": "runs", "where": {"mode": b}, "column": "mean_ttft_ms"},
                **rel,
            },
        )

    results = judge(
        tmp_path,
        [
            two("less", "less", "a", "b"),
            two("noisy", "less", "c", "b"),  # lower on average, but too noisy to tell
            two("equivalent", "equivalent", "a", "b", margin_rel=0.3),
            two("not-equivalent", "equivalent", "a", "b", margin_rel=0.05),
            two("not-different", "not_different", "a", "c"),
            two("different", "not_different", "a", "b"),
            two("paired", "greater", "b", "a", paired_by="repetition"),
        ],
        runs=rows,
    )
    verdicts = {k: r.verdict for k, r in results.items()}
    assert verdicts == {
        "less": "PASS",
        "noisy": "FAIL",
        "equivalent": "PASS",
        "not-equivalent": "FAIL",
        "not-different": "PASS",
        "different": "FAIL",
        "paired": "PASS",
    }
    assert "Welch t p=" in results["less"].observed and "90% CI" in results["less"].observed
    assert "90% CI" in results["equivalent"].observed
    assert "3 pairs by repetition" in results["paired"].observed
    assert "paired t p=" in results["paired"].observed


def test_comparisons_test_over_launches_not_runs(tmp_path):
    """Runs on one server agree closely, launches do not: the test's unit is the launch
    (the median of its runs), so 2 launches a side cannot show what 6 runs seem to."""
    values = {
        "a": [100, 100.5, 99.5, 110, 110.5, 109.5],
        "b": [108, 108.5, 107.5, 118, 118.5, 117.5],
    }
    rows = [
        {"run": f"config_sweep/{mode}/8_512/rep{i:02d}", "mode": mode, "launch": i // 3, "x": v}
        for mode, vs in values.items()
        for i, v in enumerate(vs)
    ]
    one_launch = [dict(r, launch=0) for r in rows]
    less = claim(
        "less",
        quantity={"table": "runs", "where": {"mode": "a"}, "column": "x"},
        relation={
            "kind": "less",
            "other": {"table": "runs", "where": {"mode": "b"}, "column": "x"},
        },
    )
    result = judge(tmp_path, [less], runs=rows)["less"]
    assert result.verdict == "FAIL"
    assert "n=2 vs n=2" in result.observed
    assert "6 runs of a as 2 per-launch medians" in result.observed
    assert result.expected == "a < b (a: mode=a; b: mode=b)"  # the table says which side is which
    # the same numbers from one launch: the runs are the unit, as before
    result = judge(tmp_path, [less], runs=one_launch)["less"]
    assert result.verdict == "PASS" and "n=6 vs n=6" in result.observed


def test_margins_and_point_values(tmp_path):
    rows = sweep_rows({("a", 8): [100, 102, 98], ("b", 8): [110, 111, 109], ("p", 8): [50]})
    q = {"table": "runs", "column": "mean_ttft_ms"}
    results = judge(
        tmp_path,
        [
            claim(
                "wide",
                quantity={**q, "where": {"mode": "b"}},
                relation={
                    "kind": "not_greater",
                    "margin_rel": 0.25,
                    "other": {**q, "where": {"mode": "a"}},
                },
            ),
            claim(
                "tight",
                quantity={**q, "where": {"mode": "b"}},
                relation={
                    "kind": "not_greater",
                    "margin_rel": 0.02,
                    "other": {**q, "where": {"mode": "a"}},
                },
            ),
            claim(
                "mw",
                experiment="imbalance",  # a family of its own: no Holm adjustment
                quantity={**q, "where": {"mode": "a"}},
                relation={
                    "kind": "less",
                    "test": "mann_whitney",
                    "other": {**q, "where": {"mode": "b"}},
                },
            ),
            claim(
                "point",
                quantity={**q, "where": {"mode": "p"}, "reduce": "first"},
                relation={"kind": "less", "other": {**q, "where": {"mode": "a"}, "reduce": "mean"}},
            ),
            claim(
                "point-nd",
                quantity={**q, "where": {"mode": "p"}, "reduce": "first"},
                relation={
                    "kind": "not_different",
                    "other": {**q, "where": {"mode": "a"}, "reduce": "mean"},
                },
            ),
        ],
        runs=rows,
    )
    assert results["wide"].verdict == "PASS"
    assert results["tight"].verdict == "FAIL" and "does not support" in results["tight"].reason
    # 3 vs 3 fully separated: the smallest one-sided Mann-Whitney p, 1/20 = 0.05, rejects.
    assert results["mw"].verdict == "PASS" and "p=0.05 (exact)" in results["mw"].observed
    assert results["point"].verdict == "PASS" and "no test" in results["point"].observed
    assert (
        results["point-nd"].verdict == "SKIP" and "needs repetitions" in results["point-nd"].reason
    )


def test_trends_by_jonckheere_terpstra(tmp_path):
    rows = sweep_rows(
        {
            ("up", 2): [10, 11, 9],
            ("up", 4): [20, 21, 19],
            ("up", 8): [30, 31, 29],
            ("flat", 2): [10, 30, 20],
            ("flat", 4): [21, 19, 20],
            ("flat", 8): [22, 5, 35],
            ("bumpy", 2): [10],
            ("bumpy", 4): [30],
            ("bumpy", 8): [20],
            # one repetition hit by a burst of load: a rank test is not moved by its size
            ("burst", 2): [10, 11, 9],
            ("burst", 4): [20, 21, 19],
            ("burst", 8): [30, 31, 290],
        }
    )

    def trend(mode, kind="increasing"):
        return claim(
            f"{mode}-{kind}",
            quantity={
                "table": "runs",
                "where": {"mode": mode},
                "column": "mean_ttft_ms",
                "by": "max_num_seqs",
            },
            relation={"kind": kind},
        )

    results = judge(
        tmp_path,
        [
            trend("up"),
            trend("up", "decreasing"),
            trend("flat"),
            trend("bumpy"),
            trend("burst"),
        ],
        runs=rows,
    )
    verdicts = {k: r.verdict for k, r in results.items()}
    assert verdicts == {
        "up-increasing": "PASS",
        "up-decreasing": "FAIL",
        "flat-increasing": "FAIL",
        "bumpy-increasing": "SKIP",
        "burst-increasing": "PASS",
    }
    # All 27 cross-group pairs in order: the one arrangement of 9!/(3!)^3 = 1680 that high.
    assert "JT=27, p=0.000595" in results["up-increasing"].observed
    assert results["burst-increasing"].details["p_value"] == pytest.approx(1 / 1680)
    # Three single runs reach at best p = 1/6.
    assert "smallest p is 0.167" in results["bumpy-increasing"].reason


def test_correlation_rules_and_undefined_rows(tmp_path):
    runs = [
        {"run": str(i), "mode": "a", "x": i, "y": 2 * i + (i % 3), "z": (i * 7) % 5, "k": 1.0}
        for i in range(20)
    ]
    correlations = [
        {
            "group": "a",
            "x": "m",
            "y": "t",
            "method": "spearman",
            "r": 0.1,
            "n": 200,
        },
        {
            "group": "a",
            "x": "n",
            "y": "t",
            "method": "spearman",
            "r": None,
            "n": 200,
            "note": "constant input",
        },
    ]
    results = judge(
        tmp_path,
        [
            claim(
                "pos",
                quantity={"table": "runs", "column": "y"},
                relation={"kind": "correlated", "x": "x", "min_abs_r": 0.9},
            ),
            claim(
                "none",
                quantity={"table": "runs", "column": "z"},
                relation={"kind": "correlated", "x": "x"},
            ),
            claim(
                "table-one",
                quantity={"table": "correlations", "where": {"x": "m"}, "column": "r"},
                relation={"kind": "uncorrelated", "max_abs_r": 0.3},
            ),
            claim(
                "table-both",
                quantity={"table": "correlations", "column": "r"},
                relation={"kind": "uncorrelated", "max_abs_r": 0.3},
            ),
        ],
        runs=runs,
        correlations=correlations,
    )
    assert (
        results["pos"].verdict == "PASS" and "x vs y (spearman): r=1.00" in results["pos"].observed
    )
    assert results["none"].verdict == "FAIL"
    assert results["table-one"].verdict == "PASS"
    assert "r=0.10 [-0.02, 0.22], n=200" in results["table-one"].observed
    assert results["table-both"].verdict == "FAIL"
    assert "constant input" in results["table-both"].reason


def test_skip_xfail_and_premises(tmp_path):
    rows = sweep_rows({("a", 8): [100]})
    q = {"table": "runs", "column": "mean_ttft_ms"}
    results = judge(
        tmp_path,
        [
            claim("base", quantity=q, expect={"max": 50}),
            claim("on-premise", quantity=q, expect={"min": 0}, depends_on=["base"]),
            claim("eplb", quantity=q, expect={"min": 0}, experiment="eplb_ablation"),
            claim("after-skip", quantity=q, expect={"min": 0}, depends_on=["eplb"]),
            claim("known", quantity=q, expect={"max": 50}, xfail="documented"),
            claim("known-holds", quantity=q, expect={"min": 0}, xfail="documented"),
            claim(
                "hw",
                quantity=q,
                hardware={"nvidia-a100*-x4": {"value": 100}, "cpu": {"value": 100}},
            ),
            claim("hw-none", quantity=q, hardware={"nvidia-a100*-x4": {"value": 100}}),
        ],
        runs=rows,
    )
    verdicts = {k: r.verdict for k, r in results.items()}
    assert verdicts == {
        "base": "FAIL",
        "on-premise": "FAIL",
        "eplb": "SKIP",
        "after-skip": "SKIP",
        "known": "XFAIL",
        "known-holds": "XPASS",
        "hw": "PASS",
        "hw-none": "SKIP",
    }
    assert "premise base FAILs" in results["on-premise"].reason
    assert results["known-holds"].reason.startswith("the findings changed: marked xfail")
    assert "nothing to balance" in results["eplb"].reason
    assert results["after-skip"].reason.startswith("premise eplb is SKIP")
    assert "no reference for hardware 'cpu'" in results["hw-none"].reason


def test_hardware_ids():
    assert hardware_id([]) == "cpu"
    gpus = [{"name": "NVIDIA A100-SXM4-40GB"}] * 4
    assert hardware_id(gpus) == "nvidia-a100-sxm4-40gb-x4"
    assert hardware_id(["nvidia_a100"], 4) == "nvidia-a100-x4"


def test_reduce_semantics():
    from artifact.checker.query import reduce_values

    assert reduce_values([2.0, 4.0, 6.0], "std") == pytest.approx(2.0)  # ddof=1
    assert reduce_values([2.0, 4.0, 6.0], "cv") == pytest.approx(0.5)
    # One value has no spread (not a spread of 0); a CV about a mean of 0 is undefined.
    assert all(math.isnan(reduce_values([5.0], how)) for how in ("std", "cv", "max_gap"))
    assert math.isnan(reduce_values([-1.0, 1.0], "cv"))
    assert reduce_values([1.0, 7.0, 2.0], "max_gap") == 5.0
    assert reduce_values([3.0, 1.0], "first") == 3.0 and reduce_values([3.0, 1.0], "range") == 2
    assert reduce_values([], "count") == 0.0 and reduce_values([], "mean") is None
    assert reduce_values(["a", "b", "a", 1.0], "nunique") == 3.0


def test_where_conditions_on_a_dataframe(tmp_path):
    from artifact.checker.query import run_query
    from artifact.config.claims import Query

    rows = [
        {"run": "a", "mode": "x", "seqs": 8, "v": 1.0, "tag": "t"},
        {"run": "b", "mode": "y", "seqs": None, "v": 2.0, "tag": {"k": 1}},
        {"run": "c", "mode": "z", "seqs": 2, "v": None},
        {"run": "d", "mode": "x", "seqs": 8.0 + 1e-14, "v": 4.0, "tag": True},
    ]
    tables = tables_of(tmp_path, runs=rows)

    def query(**q):
        return run_query(Query(table="runs", **q), tables, {"sweep": {"seqs": 2}})

    s = query(where={"mode": ["x", "y"]}, column="v")
    assert s.values == [1.0, 2.0, 4.0] and list(s.rows["run"]) == ["a", "b", "d"]
    assert query(where={"seqs": 8}, column="v").values == [1.0, 4.0]  # 1e-12 tolerance
    assert query(where={"seqs": {"gt": 2, "ne": 9}}, column="v").values == [1.0, 4.0]
    assert query(where={"seqs": None}, column="v").values == [2.0]
    s = query(where={"seqs": "$profile.sweep.seqs"}, column="run", reduce="count")
    assert s.values == ["c"] and s.scalar == 1.0
    s = query(where={"mode": {"ne": "y"}}, column="v")
    assert s.values == [1.0, 4.0] and s.missing == 1
    s = query(where={"seqs": "$min"}, column="run", reduce="nunique")
    assert s.conditions == {"seqs": 2} and s.values == ["c"]
    # count / nunique take any value: text, objects (as JSON), bools as numbers
    assert query(column="tag", reduce="count").values == ["t", '{"k": 1}', 1.0]
    s = query(where={"mode": "x"}, column="v", by="seqs")
    assert s.groups() == {8: [1.0], 8.0 + 1e-14: [4.0]}


def test_claims_table_shows_completeness_and_results_apart():
    from rich.console import Console

    from artifact.checker import ClaimResult, claims_markdown, rich_table

    results = [
        ClaimResult("r.one", "s", "Fig. 1", "FAIL", kind="result", expected="a < b"),
        ClaimResult("c.one", "s", "runs", "PASS", kind="completeness"),
        ClaimResult("r.two", "s", "Fig. 2", "XPASS", kind="result"),
    ]
    md = claims_markdown(results)
    completeness, found = md.index("### Completeness"), md.index("### Results")
    assert md.index("**a** is the claim's measured quantity") < completeness < found
    assert completeness < md.index("`c.one`") < found < md.index("`r.one`") < md.index("`r.two`")
    assert "1 FAIL, 1 XPASS" in md[found:]
    console = Console(width=200, record=True)
    console.print(rich_table(results))
    text = console.export_text()
    assert text.index("claims: Completeness") < text.index("claims: Results")
