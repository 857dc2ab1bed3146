"""Fault injection on data and input: real runs of the local profile at its smallest (one
mode, two imbalance datasets of four prompts, one measured run each), damaged the way a
disk, a user or a hostile profile damages them. Each case ends with no finished unit lost,
the damaged part named and redone, or one error line where the run must stop.

The README's "Reliability / Data and input" table lists these cases and their outcomes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from helpers import tiny_mixtral

from artifact.cli import main
from artifact.core.errors import ArtifactError
from artifact.core.layout import RunLayout
from artifact.core.manifest import RunDir
from artifact.routing.format import layer_totals

pytestmark = pytest.mark.engine
pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]


def tiny_profile_raw() -> dict:
    raw = yaml.safe_load((REPO / "reproduce" / "profiles" / "local.yaml").read_text())
    raw["model"].update(architecture=tiny_mixtral(max_position_embeddings=512), max_model_len=512)
    raw["modes"] = {"grouped_mm": raw["modes"]["grouped_mm"]}
    raw["datasets"] = {"seed": 3, "count": 4, "prompts_per_dataset": 4}
    bench = {"request_rate": "inf", "output_len": 4, "warmup_requests": 0, "repeat": 1}
    raw["experiments"] = {
        "eplb_ablation": raw["experiments"]["eplb_ablation"],
        "imbalance": {
            "modes": ["grouped_mm"],
            "datasets": 2,
            "max_num_seqs": 4,
            "max_num_batched_tokens": 256,
            "bench": bench,
        },
    }
    return raw


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory):
    """(profile path, cache, run dir) of a run complete up to the imbalance stage."""
    root = tmp_path_factory.mktemp("faults")
    profile = root / "profiles" / "local.yaml"
    profile.parent.mkdir()
    profile.write_text(yaml.safe_dump(tiny_profile_raw()))
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOE_ARTIFACT_CACHE", str(cache))
        for stage in ("install", "datasets", "serve", "bench", "imbalance"):
            assert main([stage, "--profile", str(profile), "--run-dir", str(root / "run")]) == 0
    return profile, cache, root / "run"


@pytest.fixture
def run(complete_run, tmp_path, monkeypatch):
    """A copy of the complete run for one test to damage; returns (run dir, CLI args)."""
    profile, cache, base = complete_run
    monkeypatch.setenv("MOE_ARTIFACT_CACHE", str(cache))
    path = tmp_path / "run"
    shutil.copytree(base, path)
    return path, ["--profile", str(profile), "--run-dir", str(path)]


def units(run_dir: Path) -> dict[str, int]:
    """mtime of every finished unit's unit.json, by unit (folder under bench/)."""
    bench = run_dir / "bench"
    return {
        p.parent.relative_to(bench).as_posix(): p.stat().st_mtime_ns
        for p in bench.glob("imbalance/*/*/unit.json")
    }


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def cut(path: Path) -> None:
    """Cut a file mid-way, as a full disk or a killed copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 3])


def test_truncated_dataset_stops_bench_then_datasets_regenerates_it(run, capsys):
    run_dir, args = run
    before = units(run_dir)
    dataset = sorted((run_dir / "datasets").glob("0*.jsonl"))[0]
    original = dataset.read_bytes()
    cut(dataset)
    assert main(["bench", *args]) == 2
    line = one_error_line(capsys)
    assert f"datasets/{dataset.name} (sha256" in line and "run `moe-artifact datasets`" in line
    assert units(run_dir) == before  # nothing redone, nothing deleted
    assert main(["datasets", *args]) == 0
    err = capsys.readouterr().err
    assert "1 output file(s) missing or damaged" in err and dataset.name in err
    assert dataset.read_bytes() == original
    (kept,) = run_dir.glob(f"datasets.old-*/{dataset.name}")  # the damaged copy
    assert kept.read_bytes() == original[: len(original) // 2 + 3]
    assert main(["bench", *args]) == 0
    assert "bench: up to date" in capsys.readouterr().err
    assert units(run_dir) == before


@pytest.mark.parametrize(
    "name, damage",
    [
        ("run.rep00.routing", cut),
        ("run.rep00.json", cut),
        ("unit.json", lambda p: p.write_text("{}")),
    ],
)
def test_damaged_file_of_a_finished_unit_redoes_only_that_unit(run, capsys, name, damage):
    run_dir, args = run
    before = units(run_dir)
    victim, kept = sorted(before)
    folder = run_dir / "bench" / victim
    routing = layer_totals(folder / "run.rep00.routing")
    damage(folder / name)
    assert main(["bench", *args]) == 0
    err = capsys.readouterr().err
    assert f"bench/{victim}/{name}" in err and "missing or damaged" in err
    assert "up to date" not in err and "1 of 2 units already done" in err
    after = units(run_dir)
    assert after[kept] == before[kept] and after[victim] != before[victim]
    assert (layer_totals(folder / "run.rep00.routing") == routing).all()
    assert list(run_dir.glob(f"bench.old-*/{victim}/{name}"))  # the damaged copy is kept
    # Downstream sees the redone unit whole: imbalance reruns on the new inputs.
    assert main(["imbalance", *args]) == 0
    assert "input(s) changed since it ran" in capsys.readouterr().err


def test_deleted_bench_folder_is_redone_not_up_to_date(run, capsys):
    run_dir, args = run
    before = units(run_dir)
    shutil.rmtree(run_dir / "bench")
    assert main(["imbalance", *args]) == 2
    assert "run `moe-artifact bench`" in one_error_line(capsys)
    assert main(["bench", *args]) == 0
    err = capsys.readouterr().err
    assert "up to date" not in err and "output file(s) missing or damaged" in err
    assert sorted(units(run_dir)) == sorted(before)


def test_redo_one_unit(run, capsys):
    run_dir, args = run
    before = units(run_dir)
    victim, kept = sorted(before)
    assert main(["bench", *args, "--redo", victim]) == 0
    err = capsys.readouterr().err
    assert f"redoing {victim} as asked" in err
    assert f"  bench: 1/1 done ({victim}, " in err and "0 left, ETA 0:00:00" in err  # no tty
    after = units(run_dir)
    assert after[kept] == before[kept] and after[victim] != before[victim]
    assert list(run_dir.glob(f"bench.old-*/{victim}/unit.json"))
    assert main(["bench", *args, "--redo", "imbalance/grouped_mm/nope"]) == 2
    assert "--redo imbalance/grouped_mm/nope: no such unit" in one_error_line(capsys)


def test_reader_names_file_and_field_of_a_result_missing_a_key(run):
    from artifact.config.profiles import load_profile
    from artifact.core.runner import StageContext
    from artifact.stages.imbalance import run_rows

    run_dir, args = run
    ctx = StageContext(profile=load_profile(args[1]), run_dir=RunDir(run_dir))
    result = sorted(run_dir.glob("bench/imbalance/*/*/run.rep00.json"))[0]
    data = json.loads(result.read_text())
    del data["total_input_tokens"]
    result.write_text(json.dumps(data))
    with pytest.raises(
        ArtifactError, match=r"run.rep00.json:field 'total_input_tokens': expected the number"
    ):
        run_rows(ctx)
    unit = result.parent / "unit.json"
    unit.write_text("{}")
    with pytest.raises(
        ArtifactError, match=r"unit.json:field 'experiment'.*bench --redo imbalance/"
    ):
        run_rows(ctx)


@contextmanager
def mounted(target: Path, *argv: str, then: tuple[str, ...] = ()) -> Iterator[Path]:
    """`mount *argv target` (then `mount *then target`), unmounted after; skip with the
    reason where mounting is refused (not root, or a sandbox without CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs or a read-only bind needs root (root ignores chmod)")
    target.mkdir()
    try:
        for args in (argv, then) if then else (argv,):
            done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
            if done.returncode:
                pytest.skip(f"mount {' '.join(args)} refused here: {done.stderr.strip()}")
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def test_full_disk_is_one_line_and_keeps_every_unit(run, tmp_path, capsys):
    run_dir, args = run
    with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=4m", "tmpfs") as disk:
        full = disk / "run"
        shutil.copytree(run_dir, full)
        before = units(full)
        args = [*args[:2], "--run-dir", str(full)]
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as fh, pytest.raises(OSError):
            while True:  # page by page, until not one more page fits
                fh.write(b"\0" * 4096)
        assert main(["bench", *args]) == 2
        line = one_error_line(capsys)
        # the first write of a stage (the run-dir lock's holder record, then the manifest)
        assert f"{full}/" in line and ": No space left on device; free some space" in line
        assert units(full) == before
        filler.unlink()
        victim = sorted(before)[0]
        assert main(["bench", *args, "--redo", victim]) == 0
        assert sorted(units(full)) == sorted(before)


def test_read_only_run_dir_is_checked_and_reported_elsewhere(run, tmp_path, capsys):
    run_dir, args = run
    with mounted(tmp_path / "ro", "--bind", str(run_dir), then=("-o", "remount,bind,ro")) as ro:
        args = [*args[:2], "--run-dir", str(ro)]
        manifest = (ro / "manifest.json").read_bytes()
        assert main(["check", *args]) == 2
        line = one_error_line(capsys)
        assert "Read-only file system" in line and "--out DIR" in line
        out = tmp_path / "out"
        assert main(["plots", *args, "--out", str(out)]) in (0, 1)  # 1: a claim FAILs
        assert "the run directory is not changed" in capsys.readouterr().err
        assert json.loads((out / "check" / "claims.json").read_text())["claims"]
        assert (out / "plots" / "report.html").is_file()
        assert (ro / "manifest.json").read_bytes() == manifest
        assert not (ro / "check").exists() and not (ro / "plots").exists()


def test_hostile_mode_name_is_refused_at_load(tmp_path, capsys):
    raw = tiny_profile_raw()
    raw["modes"] = {"../../../victim": raw["modes"]["grouped_mm"]}
    raw["experiments"]["imbalance"]["modes"] = ["../../../victim"]
    profile = tmp_path / "profiles" / "local.yaml"
    profile.parent.mkdir()
    profile.write_text(yaml.safe_dump(raw))
    assert main(["serve", "--profile", str(profile), "--run-dir", str(tmp_path / "r" / "run")]) == 2
    line = one_error_line(capsys)
    assert "field 'modes': mode name '../../../victim' is not allowed" in line
    assert not (tmp_path / "victim").exists() and not (tmp_path / "r").exists()
    # Every path built from a name stays inside the run directory (serve/bench --force too).
    layout = RunLayout(tmp_path / "run")
    for build in (
        lambda: layout.serve_mode("../../victim"),
        lambda: layout.bench_experiment(".."),
        lambda: layout.bench_unit("imbalance/../../../victim"),
        lambda: layout.dataset("/etc/passwd"),
    ):
        with pytest.raises(ArtifactError, match="cannot name a folder of the run directory"):
            build()
