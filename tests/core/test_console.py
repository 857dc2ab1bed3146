"""Progress over long units when stderr is not a terminal (CI, `| tee`, nohup, Slurm)."""

import re

from artifact.core.console import UnitProgress, console


def test_one_plain_line_per_unit_with_units_left_and_an_eta_from_the_mean(capsys):
    assert not console.is_terminal  # pytest captures stderr
    with UnitProgress("bench", 3) as progress:
        assert progress.eta() == "3 left, ETA after the first unit"
        for unit in ("imbalance/eager/001_0.2720", "imbalance/eager/002_0.3100"):
            progress.start(unit)
            progress.done()
        progress.seconds[:] = [30.0, 50.0]  # the mean of the units so far, not a bar's rate
        assert progress.eta() == "1 left, ETA 0:00:40 (40.0 s per unit)"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(
        r"  bench: 1/3 done \(imbalance/eager/001_0\.2720, \d+\.\d s\); 2 left, ETA .*", lines[0]
    )
    assert lines[1].startswith("  bench: 2/3 done (imbalance/eager/002_0.3100, ")
    assert "1 left, ETA" in lines[1]
