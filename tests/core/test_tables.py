"""The one CSV writer and the one Markdown table (artifact.core.tables)."""

from artifact.core.tables import csv_text, markdown_table


def test_csv_keeps_values_as_given():
    rows = [
        {"run": "a,b", "n": 8, "x": 0.1 + 0.2, "removed": ["r1", "r2"], "extra": 1},
        {"run": "c", "n": None, "x": 1e-5, "flag": True},
    ]
    # An int column with a gap stays int (no 8.0), a list is `a;b`, None is empty, a key
    # outside `columns` is left out and a missing one is empty.
    assert csv_text(rows, ("run", "n", "x", "removed", "flag")) == (
        'run,n,x,removed,flag\n"a,b",8,0.30000000000000004,r1;r2,\nc,,1e-05,,True\n'
    )
    assert csv_text([], ("a", "b")) == "a,b\n"


def test_markdown_table_formats_and_escapes():
    rows = [
        {"name": "a|b", "value": 2 / 3, "n": 3, "note": None},
        {"name": "line\nbreak", "value": 1.0, "n": 4, "note": "x"},
    ]
    assert markdown_table(rows, ("name", "value", "n", "note"), align="lr") == (
        "| name | value | n | note |\n"
        "|---|---:|---|---|\n"
        "| a\\|b | 0.6667 | 3 |  |\n"
        "| line break | 1 | 4 | x |\n"
    )
    # Rows as sequences, in the order of the columns.
    assert markdown_table([["1", "None"]], ["a", "b"]) == "| a | b |\n|---|---|\n| 1 | None |\n"
