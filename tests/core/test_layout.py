"""RunLayout names every run-directory path: the names on disk are those of earlier runs, and
the stages name no run-directory file themselves."""

import re
from pathlib import Path

from artifact.core.layout import PROFILE_LABEL, RUN_LABEL, RunLayout, UnitDir, launch_of

STAGES = Path(__file__).resolve().parents[2] / "artifact" / "stages"
# Owned by the checker/report rewrite; switched to RunLayout when it is merged.
NOT_YET = {"plots.py", "check.py"}
OUTSIDE_RUN_DIR = {'".fingerprint.json"'}  # the model cache's stamp (install)


def test_paths_keep_their_names(tmp_path):
    run = RunLayout(tmp_path)
    rel = {
        name: getattr(run, name).relative_to(tmp_path).as_posix()
        for name in (
            "manifest",
            "model_record",
            "images_record",
            "dataset_metadata",
            "sweep_prompts",
            "eplb_prompts",
            "replay_cache",
            "figures",
            "report_md",
            "report_html",
            "claims_json",
            "claims_md",
            "parallel_replay_loads",
            "parallel_summary",
            "parallel_log",
        )
    }
    assert rel == {
        "manifest": "manifest.json",
        "model_record": "install/model.json",
        "images_record": "install/images.json",
        "dataset_metadata": "datasets/metadata.json",
        "sweep_prompts": "datasets/sweep_prompts.jsonl",
        "eplb_prompts": "datasets/eplb_prompts.jsonl",
        "replay_cache": "bench/replay",
        "figures": "plots/figures.json",
        "report_md": "plots/report.md",
        "report_html": "plots/report.html",
        "claims_json": "check/claims.json",
        "claims_md": "check/claims.md",
        "parallel_replay_loads": "parallel/replay_loads.json",
        "parallel_summary": "parallel/summary.json",
        "parallel_log": "parallel/torchrun.log",
    }
    assert run.dataset("001_0.1234.jsonl") == tmp_path / "datasets" / "001_0.1234.jsonl"
    assert run.table("runs", "csv") == tmp_path / "imbalance" / "runs.csv"
    assert run.table("eplb") == tmp_path / "imbalance" / "eplb.json"
    serve = run.serve_mode("eager")
    assert serve.provenance == tmp_path / "serve" / "eager" / "provenance.json"
    assert serve.server_log == tmp_path / "serve" / "eager" / "server.log"


def test_unit_folders(tmp_path):
    run = RunLayout(tmp_path)
    unit = run.bench_unit("config_sweep/eager/2_128")
    base = tmp_path / "bench" / "config_sweep" / "eager" / "2_128"
    assert unit.path == base
    assert unit.record == base / "unit.json"
    assert unit.result(RUN_LABEL, 3) == base / "run.rep03.json"
    assert unit.routing(RUN_LABEL, 3) == base / "run.rep03.routing"
    profile = unit.profile
    assert profile.profile_marker == base / "profile" / "profile.json"
    assert profile.nsys_report == base / "profile" / "server.nsys-rep"
    assert profile.result(PROFILE_LABEL, 0) == base / "profile" / "profile.rep00.json"
    second = profile.launch(1)  # the EPLB ablation's second pass, beside the first
    assert second.profile_marker == base / "profile" / "profile.launch01.json"
    assert second.nsys_report == base / "profile" / "server.launch01.nsys-rep"
    report = profile.nsys_report
    assert run.kernel_summary(report) == (
        tmp_path
        / "imbalance"
        / "nsys"
        / "config_sweep"
        / "eager"
        / "2_128"
        / "profile"
        / "server.kernels.csv"
    )

    files = (unit.record, unit.result(RUN_LABEL, 0), unit.routing(RUN_LABEL, 0), report)
    for path in (*files, unit.provenance, profile.provenance):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert run.bench_unit_records() == [unit.record]
    assert run.bench_provenances() == [profile.provenance, unit.provenance]
    assert run.bench_reports() == [report]
    assert run.has_routing_logs()
    assert unit.runs() == [unit.result(RUN_LABEL, 0), unit.routing(RUN_LABEL, 0)]


def test_stages_name_no_run_dir_file():
    literal = re.compile(r"""["'][\w.*-]*\.(json|jsonl|csv|md|html|log|routing|nsys-rep)["']""")
    found = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted(STAGES.glob("*.py"))
        if path.name not in NOT_YET
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if (m := literal.search(line)) and m.group(0) not in OUTSIDE_RUN_DIR
    ]
    assert found == []


def test_a_later_launch_keeps_its_server_files_beside_the_first(tmp_path):
    unit = UnitDir(tmp_path / "bench" / "config_sweep" / "eager" / "4_512")
    assert unit.launch(0) == unit and unit.server_log.name == "server.log"
    second = unit.launch(2)
    assert second.path == unit.path  # the server may write routing logs only under its folder
    assert (second.server_log.name, second.provenance.name) == (
        "server.launch02.log",
        "provenance.launch02.json",
    )
    assert second.record == unit.record  # one unit record for all launches
    assert [launch_of(p) for p in (unit.provenance, second.provenance)] == [0, 2]
