"""`moe-artifact metrics` on small traces written here: parsing, metrics, refusals, bad files."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
from helpers import STUDY_EXACT_KEYS

from artifact.cli import main
from artifact.core.records import VLLM_ARRAYS
from artifact.routing.format import RoutingHeader, RoutingWriter
from artifact.serving.config import BenchConfig, PromptSpec
from artifact.serving.metrics import find_traces, open_trace, trace_report
from artifact.serving.request import RequestRecord, ServerCapabilities
from artifact.serving.result_file import BenchResult, write_result
from artifact.serving.results import summarize, summarize_file
from artifact.study.traces import parse_trace_name

ORIGINAL = "Mixtral8x7B-vllmEP4-Perlmutter[defaultall2all_32_8192_eplbon]-group12"
CARD = """\
version: 1
workload:
  model: {{moe: {moe}, model_family: mixtral}}
  data: {{max-num-seqs: 32, max-num-batched-tokens: 8192}}
Model-executor:
  framework: {{name: vllm}}
  model_plan_parallelization: {{tp: 1, ep: 4}}
  expert_parallel: {{mode: default_all_to_all, eplb: {eplb}}}
"""
LOG = (
    "INFO [api_server.py] vLLM API server version 0.11.0\n"
    "INFO [utils.py] non-default args: {'model': 'm', 'max_num_batched_tokens': 8192, "
    "'max_num_seqs': 32, 'data_parallel_size': 4, 'enable_expert_parallel': True}\n"
)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    """`moe-artifact metrics ...` in this process (the CLI's own error handling included)."""

    def run(*args) -> Ran:
        capsys.readouterr()
        code = main(["metrics", *map(str, args)])
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    return run


def one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def vllm_file(seed: int = 0, n: int = 6) -> dict:
    """A result in the original study's format: old vLLM keys, no per-request latency."""
    rng = np.random.default_rng(seed)
    ttfts = list(rng.uniform(0.1, 1.0, n))
    itls = [list(rng.uniform(0.02, 0.05, int(k))) for k in rng.integers(2, 9, n)]
    errors = [""] * n
    output_lens = [len(row) + 1 for row in itls]
    input_lens = [int(k) for k in rng.integers(5, 50, n)]
    summary = summarize(
        duration=5.0,
        ttfts=ttfts,
        itls=itls,
        output_lens=output_lens,
        input_lens=input_lens,
        errors=errors,
        percentiles=(99,),
    )
    data = {
        "date": "20251219-150910",
        "backend": "vllm",
        "model_id": "m",
        "num_prompts": n,
        "request_rate": "inf",
        "duration": 5.0,
    }
    data.update({key: summary[key] for key in STUDY_EXACT_KEYS})
    for key in ("mean", "median", "p99"):
        data[f"{key}_ttft_ms"] = summary[f"{key}_ttft_ms"]
        data[f"{key}_itl_ms"] = summary[f"{key}_itl_ms"]
        data[f"{key}_tpot_ms"] = 40.0  # vLLM's own, from a latency not stored
    data.update(
        input_lens=input_lens,
        output_lens=output_lens,
        ttfts=ttfts,
        itls=itls,
        generated_texts=["x"] * n,
        errors=errors,
    )
    return data


def original_trace(root, name=ORIGINAL, moe="true", log=LOG, eplb="true"):
    trace = root / name
    (trace / "results_json").mkdir(parents=True)
    (trace / "logs").mkdir()
    (trace / "results_json" / "vllm-ShareGPT.json").write_text(json.dumps(vllm_file()))
    (trace / "logs" / "vllm.log").write_text(log)
    (trace / f"{name}.yaml").write_text(CARD.format(moe=moe, eplb=eplb))
    return trace


def our_result(directory, repetition=0, ttft=0.1, label="eager_4_512"):
    """A result file of ours, from hand-made request records (no server)."""
    records = []
    for i in range(4):
        start = 0.01 * i
        chunks = [start + ttft + i * 0.01 + 0.02 * k for k in range(5)]
        rec = RequestRecord(
            f"p{i}",
            10,
            5,
            start=start,
            chunk_times=chunks,
            texts=["a "] * 5,
            usage_prompt_tokens=11,
            usage_completion_tokens=5,
            finish_reason="length",
            status=200,
        )
        records.append(rec)
    result = BenchResult(
        config=BenchConfig(base_url="http://127.0.0.1:1", model="tiny", output_len=5),
        capabilities=ServerCapabilities(health_status=200, models=["tiny"]),
        prompts=[PromptSpec(f"p{i}", "q", prompt_len=10) for i in range(4)],
        records=records,
        warmup=[],
        duration=0.5,
        date="20260101-000000",
        started_at="2026-01-01T00:00:00+00:00",
        label=label,
        repetition=repetition,
        server_info={
            "engine": "transformers",
            "mode": "eager",
            "max_num_seqs": 4,
            "max_num_batched_tokens": 512,
            "moe": True,
        },
    )
    return write_result(result, directory)


def test_trace_names_parse():
    assert parse_trace_name(ORIGINAL) == {
        "model": "Mixtral8x7B",
        "engine": "vllmEP4",
        "platform": "Perlmutter",
        "mode": "defaultall2all",
        "max_num_seqs": 32,
        "max_num_batched_tokens": 8192,
        "eplb": True,
        "group": "group12",
    }
    off = parse_trace_name("Mixtral8x7B-vllmEP4-Perlmutter[defaultall2all_32_8192_eplboff]-g")
    assert off["eplb"] is False
    plain = parse_trace_name("Mixtral8x7B-vllmTP4-Perlmutter[baseline_8_2048]-group12")
    assert plain["eplb"] is None and plain["mode"] == "baseline" and plain["max_num_seqs"] == 8
    assert parse_trace_name("results_json") is None
    assert parse_trace_name("Mixtral8x7B-vllmTP4-Perlmutter[baseline_8]-group12") is None


def test_original_trace_ttft_config_and_eplb_note(tmp_path, run_cli):
    trace = original_trace(tmp_path)
    result = run_cli("--trace", trace, "--metric", "ttft", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    data = vllm_file()
    assert out["metric"] == "TTFT" and out["unit"] == "ms"
    assert out["value"] == data["mean_ttft_ms"]
    assert out["stats"]["p99"] == data["p99_ttft_ms"]
    assert out["stats"]["p90"] == pytest.approx(np.percentile(data["ttfts"], 90) * 1000)
    cfg = out["config"]
    assert (cfg["engine"], cfg["mode"], cfg["max_num_seqs"], cfg["max_num_batched_tokens"]) == (
        "vllmEP4",
        "defaultall2all",
        32,
        8192,
    )
    assert cfg["eplb"] is True and cfg["eplb_in_log"] is False and cfg["moe"] is True
    assert cfg["engine_version"] == "0.11.0"
    assert any("no --enable-eplb" in note for note in out["notes"])


def test_tpot_of_original_file_is_its_own_with_a_note(tmp_path):
    out = trace_report(open_trace(original_trace(tmp_path)), "TPOT")
    assert out["stats"] == {"mean": 40.0, "median": 40.0, "p99": 40.0}
    note = out["runs"][0]["notes"][0]
    # what the file shows (no stored latency), not how a vLLM client ended it
    assert "[DONE]" not in note and "latency is not stored" in note


def test_verify_note_claims_only_what_the_file_shows(tmp_path, run_cli):
    """A TPOT that ends at the last recorded chunk (vLLM 0.11's --save-detailed files) agrees
    with the estimate; the study's, larger than the estimate, say only that."""
    path = tmp_path / "r.json"
    data = vllm_file()
    path.write_text(json.dumps(data))
    note = run_cli("--verify", path).stderr
    assert "[DONE]" not in note and "stored values are larger" in note
    e2els = [t + sum(row) for t, row in zip(data["ttfts"], data["itls"], strict=True)]
    own = summarize_file(data, e2els=e2els, percentiles=(99,))
    data.update({f"{k}_tpot_ms": own[f"{k}_tpot_ms"] for k in ("mean", "median", "p99")})
    path.write_text(json.dumps(data))
    note = run_cli("--verify", path).stderr
    assert "mean_tpot_ms +0.000%" in note and "larger" not in note and "[DONE]" not in note


def summary_only_file() -> dict:
    """`vllm bench serve --save-result` without --save-detailed: no per-request arrays."""
    data = {k: v for k, v in vllm_file().items() if k not in VLLM_ARRAYS}
    data.update(endpoint_type="openai", label=None, max_concurrency=8, failed=0)
    return data


def test_a_summary_only_vllm_file_shows_its_stored_summaries(tmp_path, run_cli):
    data = summary_only_file()
    path = tmp_path / "openai-infqps-concurrency8-tiny-mixtral-20251202-101010.json"
    path.write_text(json.dumps(data))
    line = one_line_error(run_cli("--verify", path), str(path), "rerun it with --save-detailed")
    assert "no per-request input_lens, output_lens, ttfts, itls, generated_texts, errors" in line
    assert "not a serving-benchmark result" not in line
    result = run_cli("--trace", path, "--metric", "TTFT", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["stats"] == {k: data[f"{k}_ttft_ms"] for k in ("mean", "median", "p99")}
    assert any("shown as written" in n and "--save-detailed" in n for n in out["notes"])
    result = run_cli("--trace", path, "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["output_throughput"]["value"] == data["output_throughput"]
    assert metrics["TPOT"]["stats"]["mean"] == 40.0
    assert "E2EL is not among the file's stored summaries" in metrics["E2EL"]["refused"]
    assert "--save-detailed" in metrics["goodput"]["refused"]


def test_vllm_default_result_names_in_a_folder(tmp_path, run_cli):
    folder = tmp_path / "vllm-bench"
    folder.mkdir()
    names = [
        "openai-4.0qps-tiny-mixtral-20251202-101500.json",
        "openai-infqps-concurrency8-tiny-mixtral-20251202-101010.json",
    ]
    for seed, name in enumerate(names):
        (folder / name).write_text(json.dumps(vllm_file(seed)))
    (folder / "settings.json").write_text("{}")  # not a result file's name: left alone
    assert find_traces(tmp_path) == [folder]
    assert [p.name for p in open_trace(folder).result_files] == names
    result = run_cli("--verify", tmp_path)
    assert result.returncode == 0 and result.stderr.count("fields recomputed") == 2
    result = run_cli("--all", "--trace", tmp_path, "--metric", "TTFT", "--json")
    assert result.returncode == 0, result.stderr
    (report,) = json.loads(result.stdout)
    assert len(report["runs"]) == 2


def test_all_csv_one_row_per_trace(tmp_path, run_cli):
    original_trace(tmp_path)
    original_trace(tmp_path, "Mixtral8x7B-vllmTP4-Perlmutter[baseline_8_2048]-group12", eplb="null")
    ours = tmp_path / "runs" / "eager_4_512"
    our_result(ours, 0)
    our_result(ours, 1, ttft=0.3)
    assert len(find_traces(tmp_path)) == 3
    result = run_cli("--all", "--trace", tmp_path, "--csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["trace"] for r in rows] == [
        "Mixtral8x7B-vllmEP4-Perlmutter[defaultall2all_32_8192_eplbon]-group12",
        "Mixtral8x7B-vllmTP4-Perlmutter[baseline_8_2048]-group12",
        "eager_4_512",
    ]
    assert rows[1]["mode"] == "baseline" and rows[1]["max_num_batched_tokens"] == "2048"
    assert rows[1]["eplb"] == ""
    assert rows[2]["engine"] == "transformers" and rows[2]["runs"] == "2"
    # repetitions are averaged on top; each file's own numbers stay in --json
    assert float(rows[2]["mean_ttft_ms"]) == pytest.approx(1000 * (0.1 + 0.3) / 2 + 15)
    assert rows[0]["mean_tpot_ms"] == "40.0"


def test_our_trace_metrics_and_repetitions(tmp_path):
    our_result(tmp_path, 0)
    our_result(tmp_path, 1, ttft=0.2)
    out = trace_report(open_trace(tmp_path), "all")
    ttft = out["metrics"]["TTFT"]
    assert [r["repetition"] for r in ttft["runs"]] == [0, 1]
    assert ttft["runs"][0]["value"] == pytest.approx(115.0)
    assert out["metrics"]["TPOT"]["stats"]["mean"] == pytest.approx(20.0)
    assert out["metrics"]["E2EL"]["stats"]["median"] == pytest.approx(1000 * 0.245)
    assert out["metrics"]["request_throughput"]["value"] == 8.0
    assert "refused" in out["metrics"]["goodput"]
    assert "refused" in out["metrics"]["token_to_expert_assignment"]
    good = trace_report(open_trace(tmp_path), "goodput", goodput_slos={"ttft": 150})
    assert [r["good_completed"] for r in good["runs"]] == [4, 0]


def test_refusals_say_why(tmp_path, run_cli):
    trace = original_trace(tmp_path)
    line = one_line_error(run_cli("--trace", trace, "--metric", "token_to_expert_assignment"))
    assert "no gate or routing logs" in line and str(trace.parent) in line
    dense = original_trace(
        tmp_path, "Mixtral8x7B-vllmTP4-Perlmutter[baseline_8_2048]-g", moe="false"
    )
    (dense / "x.routing").write_bytes(b"")
    one_line_error(
        run_cli("--trace", dense, "--metric", "token_to_expert_assignment"), "says moe: false"
    )
    one_line_error(run_cli("--trace", trace, "--metric", "goodput"), "goodput needs SLOs")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(run_cli("--trace", empty, "--metric", "TTFT"), "not a trace")


def test_expert_assignment_from_routing_logs(tmp_path):
    our_result(tmp_path)
    header = RoutingHeader(num_experts=4, top_k=2, num_layers=2)
    with RoutingWriter(tmp_path / "routing" / "rank0.routing", header) as writer:
        for step in range(3):
            writer.write_step(
                [
                    (step, 0, 1, 2, np.array([2, 2, 0, 0])),
                    (step, 1, 1, 2, np.array([1, 1, 1, 1])),
                ]
            )
    (tmp_path / "routing" / "rank0.routing").open("ab").write(b"\x00" * 5)  # a cut record
    out = trace_report(open_trace(tmp_path), "token_to_expert_assignment")
    assert out["per_layer_counts"] == [[6, 6, 0, 0], [3, 3, 3, 3]]
    assert out["per_layer_cv"] == [1.0, 0.0] and out["value"] == 0.5
    assert out["steps"] == 3 and "cut" in out["notes"][0]


def test_expert_assignment_from_gate_logs(tmp_path, run_cli):
    gates = tmp_path / "gates_logs"
    gates.mkdir()
    for layer in range(2):
        loads = [[4.0, 0.0], [2.0, 2.0]] if layer == 0 else [[1.0, 3.0], [1.0, 3.0]]
        (gates / f"gate_logs_{layer}.json").write_text(
            json.dumps({"step": [1, 2], "num_tokens": [2, 2], "expert_loads": loads})
        )
    result = run_cli("--trace", gates, "--metric", "token_to_expert_assignment", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["source"] == "gate_logs" and out["per_layer_counts"] == [[6, 2], [2, 6]]


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (b"", ["file is empty"]),
        (b'{"duration": 1.0, "ttfts": [0.1, 0.2', ["truncated JSON at byte 36"]),
        (b'{"duration": 1.0,, "ttfts": []}', ["corrupt JSON at byte 17"]),
        (b"[1, 2]", ["expected a JSON object"]),
        (b'{"duration": 1.0}', ["not a serving-benchmark result", "'completed'"]),
        (b'{"a": "\xff"}', ["not UTF-8 text at byte 7"]),
    ],
)
def test_bad_result_files_are_one_line(tmp_path, content, needles, run_cli):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    one_line_error(run_cli("--verify", path), str(path), *needles)
    one_line_error(run_cli("--trace", path, "--metric", "TTFT"), str(path), *needles)


def test_bad_field_names_the_field(tmp_path, run_cli):
    data = vllm_file()
    data["ttfts"][2] = "slow"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    one_line_error(run_cli("--verify", path), f"{path}:field 'ttfts'", "list of numbers")
    data = vllm_file()
    data["itls"] = data["itls"][:-1]
    path.write_text(json.dumps(data))
    one_line_error(run_cli("--verify", path), "field 'itls'", "has 5 entries")


def test_skip_bad_goes_on_and_lists_what_it_skipped(tmp_path, run_cli):
    original_trace(tmp_path)
    bad = original_trace(tmp_path, "Mixtral8x7B-vllmTP4-Perlmutter[baseline_8_2048]-group12")
    bad_file = bad / "results_json" / "vllm-ShareGPT.json"
    bad_file.write_text('{"duration": 5.0, "completed"')
    one_line_error(run_cli("--all", "--trace", tmp_path, "--csv"), "truncated JSON")
    result = run_cli("--all", "--trace", tmp_path, "--csv", "--skip-bad")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == 1
    assert "skipped 1" in result.stderr and str(bad_file) in result.stderr


def test_verify_our_file_and_a_tampered_one(tmp_path, run_cli):
    path = our_result(tmp_path)
    result = run_cli("--verify", path)
    assert result.returncode == 0 and "ok" in result.stderr
    data = json.loads(path.read_text())
    data["p99_tpot_ms"] += 0.01
    path.write_text(json.dumps(data))
    result = run_cli("--verify", tmp_path)  # a directory: every result file in it
    assert result.returncode == 1
    assert "mismatch" in result.stderr and "p99_tpot_ms: stored" in result.stderr


def test_verify_original_format_explains_tpot(tmp_path, run_cli):
    trace = original_trace(tmp_path)
    result = run_cli("--verify", trace / "results_json" / "vllm-ShareGPT.json")
    assert result.returncode == 0, result.stderr
    assert "cannot be recomputed exactly" in result.stderr and "mean_tpot_ms" in result.stderr


def test_error_line_keeps_the_brackets_of_a_trace_name(tmp_path):
    """Trace names hold `[mode_seqs_tokens]`: the printed error must not eat it as markup."""
    trace = original_trace(tmp_path)
    metric = ["--metric", "token_to_expert_assignment"]
    command = [sys.executable, "-m", "artifact", "metrics", "--trace", str(trace), *metric]
    result = subprocess.run(command, capture_output=True, text=True)
    one_line_error(result, str(trace), "no gate or routing logs")


def test_terminal_tables(tmp_path, run_cli):
    trace = original_trace(tmp_path)
    our_result(tmp_path / "ours")
    single = run_cli("--trace", trace)
    assert single.returncode == 0 and "mean_ttft_ms" in single.stderr
    assert "refused: no gate or routing logs" in single.stderr.replace("\n", " ").replace("│", "")
    many = run_cli("--all", "--trace", tmp_path, "--metric", "TTFT")
    assert many.returncode == 0
    # notes name the trace with its brackets intact (printed as text, not markup)
    assert f"note {ORIGINAL}: EPLB" in many.stderr


def test_empty_outputs_counted_as_zero_ttft_are_flagged(tmp_path):
    data = vllm_file()
    data["ttfts"][0], data["itls"][0], data["output_lens"][0] = 0.0, [], 0
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    out = trace_report(open_trace(path), "TTFT")
    with_text = np.asarray(data["ttfts"][1:]) * 1000
    assert out["value"] == data["mean_ttft_ms"]  # the file's own number stays the value
    assert out["notes"] == [
        "TTFT: 1 of 6 successful requests produced no text and enter this file's TTFT as 0 ms "
        f"(its vLLM client's rule); over the requests with text: mean {with_text.mean():.1f} ms, "
        f"median {np.median(with_text):.1f} ms"
    ]
