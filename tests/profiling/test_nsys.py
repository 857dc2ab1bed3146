"""nsys kernel summaries: both CSV forms, grouping, pooled rows, comparison, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import standins
from helpers import one_line_error

from artifact.core.errors import ArtifactError, StageFailed
from artifact.engines.vllm.engine import LAUNCH_PREFIX
from artifact.profiling.nsys import (
    change_interval,
    compare,
    eplb_table,
    export_kernel_summary,
    kernel_group,
    launch_argv,
    nccl_collective,
    nsys_version,
    read_kernel_summary,
    runner,
    session_name,
    summarize,
    window_argv,
)

# Made-up numbers in nsys's human form (units in the cells, CRLF, a preamble).
HUMAN = (
    "Processing [report.sqlite] with [cuda_gpu_kern_sum.py]... \r\n"
    "\r\n"
    "Time,Total Time,Instances,Avg,Med,Min,Max,StdDev,Name\r\n"
    '50.00%,1.500 s,"3,000",500.000 μs,450.000 μs,2.000 μs,120.000 ms,2.000 ms,'
    "fused_moe_kernel\r\n"
    "30.00%,900.000 ms,1000,900.000 μs,800.000 μs,9.000 μs,5.000 ms,300.000 μs,"
    "ncclDevKernel_Reduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<(unsigned long)4096>)\r\n"
    "5.00%,150.000 ms,100,1.500 ms,1.400 ms,10.000 μs,3.000 ms,500.000 μs,"
    "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<(unsigned long)4096>)\r\n"
    "4.00%,120.000 ms,40,3.000 ms,3.000 ms,1.000 ms,5.000 ms,1.000 ms,"
    "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<(unsigned long)4096>)\r\n"
    '3.00%,90.000 ms,"30,000",3.000 μs,3.000 μs,2.500 μs,4.000 μs,241 ns,'
    '"void vllm::moe::moe_align_block_size_kernel<int>(const T1 *, int *, int)"\r\n'
    "2.00%,60.000 ms,6000,10.000 μs,9.000 μs,8.000 μs,20.000 μs,1.000 μs,"
    '"void flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<(int)128>>(flash::P)"\r\n'
    "1.00%,30.000 ms,3000,10.000 μs,10.000 μs,9.000 μs,11.000 μs,500 ns,ampere_gemm_tn\r\n"
)


def plain_from_human(text: str) -> str:
    """The same table in nsys's plain form: ns numbers, units in the header."""
    import csv
    import io

    from artifact.profiling.nsys import UNIT_NS

    rows = list(csv.reader(io.StringIO(text.split("\r\n", 2)[2])))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "Time (%)",
            "Total Time (ns)",
            "Instances",
            "Avg (ns)",
            "Med (ns)",
            "Min (ns)",
            "Max (ns)",
            "StdDev (ns)",
            "Name",
        ]
    )
    for row in rows[1:]:
        if not row:
            continue
        cells = [row[0].rstrip("%"), None, row[2].replace(",", "")]
        for i in (1, 3, 4, 5, 6, 7):
            value, unit = row[i].split()
            ns = float(value) * UNIT_NS[unit]
            if i == 1:
                cells[1] = f"{ns:.0f}"
            else:
                cells.append(f"{ns:.1f}")
        writer.writerow([*cells, row[8]])
    return out.getvalue()


@pytest.fixture
def human(tmp_path):
    path = tmp_path / "run_a.csv"
    path.write_bytes(HUMAN.encode())
    return path


def test_both_forms_parse_to_the_same_rows(human, tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text(plain_from_human(HUMAN))
    a, b = read_kernel_summary(human), read_kernel_summary(plain)
    assert len(a) == len(b) == 7
    for x, y in zip(a, b, strict=True):
        assert x.name == y.name and x.instances == y.instances
        for field in ("total_ns", "avg_ns", "med_ns", "min_ns", "max_ns", "std_ns", "time_pct"):
            assert getattr(x, field) == pytest.approx(getattr(y, field), rel=1e-12)
    fused = a[0]
    assert (fused.total_ns, fused.instances, fused.max_ns) == (1.5e9, 3000, 120e6)
    assert a[4].std_ns == 241.0


def test_older_header_names(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text(
        "Time(%),Total Time (ns),Instances,Average,Minimum,Maximum,Name\n"
        "90.0,2000,4,500.0,100,900,fused_moe_kernel\n"
    )
    (row,) = read_kernel_summary(path)
    assert row.avg_ns == 500 and row.med_ns is None and row.std_ns is None
    fused = summarize([row])["fused_moe"]
    assert fused["cv"] is None and fused["max_min"] == 9.0


def test_summary_groups(human):
    s = summarize(read_kernel_summary(human), label="A", top=3)
    f = s["fused_moe"]
    assert f["total_ms"] == 1500 and f["instances"] == 3000 and f["avg_us"] == 500
    assert f["cv"] == pytest.approx(2000 / 500) and f["max_min"] == pytest.approx(60000)
    assert s["total_kernel_time_ms"] == pytest.approx(2850)
    assert s["moe_aux"]["total_ms"] == 90 and s["moe"]["total_ms"] == 1590
    nccl = s["nccl"]["by_collective"]
    assert nccl["Reduce"]["total_ms"] == 900 and nccl["AllReduce"]["total_ms"] == 150
    assert nccl["AllToAll"]["total_ms"] == 120 and s["nccl"]["total_ms"] == 1170
    assert s["attention"]["total_ms"] == 60
    assert [k["total_ms"] for k in s["top_kernels"]] == [1500, 900, 150]
    assert s["fused_moe"]["time_pct"] == pytest.approx(100 * 1500 / 2850)


def test_kernel_names():
    assert kernel_group("fused_moe_kernel") == "fused_moe"
    assert kernel_group("void vllm::moe::topkGatingSoftmax<4>(const float *)") == "moe_aux"
    assert kernel_group("void vllm::reshape_and_cache_flash_kernel<bf16>()") == "attention"
    assert kernel_group("ncclKernel_AllGather_RING_LL_Sum_int8_t(ncclWorkElem)") == "nccl"
    assert nccl_collective("ncclKernel_AllGather_RING_LL_Sum_int8_t(ncclWorkElem)") == "AllGather"
    assert nccl_collective("ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL(x)") == "ReduceScatter"
    assert nccl_collective("ncclDevKernel_Reduce_Sum_bf16_RING_LL(x)") == "Reduce"
    assert nccl_collective("ncclDevKernel_SendRecv(x)") == "AllToAll"
    assert nccl_collective("ampere_gemm") is None


def test_pooled_fused_moe_rows(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text(
        "Time (%),Total Time (ns),Instances,Avg (ns),Med (ns),Min (ns),Max (ns),StdDev (ns),Name\n"
        "60,400,2,200,200,100,300,100,fused_moe_kernel\n"
        "40,400,1,400,400,400,400,0,fused_moe_kernel_gptq_awq\n"
    )
    f = summarize(read_kernel_summary(path))["fused_moe"]
    # Pooled over the 3 instances 100, 300, 400: mean 800/3, population std from moments.
    assert f["rows"] == 2 and f["instances"] == 3 and f["med_us"] is None
    assert f["avg_us"] == pytest.approx(800 / 3 / 1000)
    values = [100, 300, 400]
    mean = sum(values) / 3
    std = (sum((v - mean) ** 2 for v in values) / 3) ** 0.5
    assert f["std_us"] == pytest.approx(std / 1000)
    assert (f["min_us"], f["max_us"]) == (0.1, 0.4)


def test_compare_direction(human, tmp_path):
    a = summarize(read_kernel_summary(human))
    b_path = tmp_path / "b.csv"
    faster_max = HUMAN.replace("120.000 ms,2.000 ms,fused", "60.000 ms,2.000 ms,fused")
    b_path.write_bytes(faster_max.replace("1.500 s", "1.650 s").encode())
    b = summarize(read_kernel_summary(b_path))
    rows = {r["metric"]: r for r in compare([a], [b])}
    assert rows["fused_moe.total_ms"]["change_pct"] == pytest.approx(10.0)
    assert rows["fused_moe.total_ms"]["verdict"] == "worse"
    assert rows["fused_moe.max_us"]["verdict"] == "improved"
    assert rows["fused_moe.instances"]["verdict"] is None
    assert rows["nccl.total_ms"]["verdict"] == "unchanged"
    assert "nccl.by_collective.Broadcast.total_ms" not in rows


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b\n1,2\n", "no CUDA GPU kernel summary table"),
        ("Total Time,Instances,Name\n", "has no rows"),
        ("Total Time,Instances,Name\n5 parsecs,1,k\n", ":2: column total: '5 parsecs': unknown"),
        ("Total Time,Instances,Name\n5,1,k\n", ":2: column total: '5' has no unit"),
        ("Total Time (ns),Instances,Name\nabc,1,k\n", ":2: column total: 'abc' is not a number"),
        ("Total Time (ns),Instances,Name\n5,1.5,k\n", ":2: instances: '1.5' is not a kernel"),
        ("Total Time (ns),Instances,Name\n5,1\n", ":2: 2 columns"),
    ],
)
def test_bad_input_is_one_line(tmp_path, text, expected):
    assert expected in one_line_error(read_kernel_summary, tmp_path / "bad.csv", text)


def test_cli(human, tmp_path):
    other = tmp_path / "run_b.csv"
    other.write_text(plain_from_human(HUMAN))
    out = subprocess.run(
        [sys.executable, "-m", "artifact", "nsys-summary", human, other, "--json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert [r["label"] for r in payload["runs"]] == ["run_a", "run_b"]
    assert all(r["verdict"] in ("unchanged", None) for r in payload["comparison"])
    bad = subprocess.run(
        [sys.executable, "-m", "artifact", "nsys-summary", tmp_path / "missing.csv"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "missing.csv: file not found" in bad.stderr


def test_eplb_table_of_two_summaries(tmp_path):
    off, on = tmp_path / "a" / "off.csv", tmp_path / "b" / "on.csv"
    for path in (off, on):
        path.parent.mkdir()
    off.write_text(HUMAN, encoding="utf-8")
    flashinfer = '1.00%,30.000 ms,7,1.000 ms,1.000 ms,1.000 ms,1.000 ms,0 ns,"flashinfer::moe"\r\n'
    on.write_text(HUMAN + flashinfer, encoding="utf-8")
    table = eplb_table([(off, "all2all", 0), (on, "all2all-eplb", 0)], root=tmp_path)
    assert [r["label"] for r in table["runs"]] == ["all2all", "all2all-eplb"]
    assert [r["source"] for r in table["runs"]] == ["a/off.csv", "b/on.csv"]
    assert [r["flashinfer_kernel_instances"] for r in table["runs"]] == [0, 7]
    summaries = [[summarize(read_kernel_summary(p))] for p in (off, on)]
    assert table["comparison"] == compare(*summaries)
    # one pass a side: the change, but no interval
    total = next(r for r in table["comparison"] if r["metric"] == "fused_moe.total_ms")
    assert (total["n_a"], total["n_b"], total["change_low"], total["change_high"]) == (
        1,
        1,
        None,
        None,
    )


def test_eplb_table_of_passes_compares_medians_with_a_bootstrap_interval(tmp_path):
    """One row per arm and pass; the comparison is the change of the arms' medians, with the
    percentile bootstrap interval of that change."""
    passes = []
    scales = {"off": (1.0, 1.02, 0.99), "on": (1.05, 1.08, 1.06)}
    for launch in range(3):
        for arm, scale in scales.items():
            path = tmp_path / f"{arm}.launch{launch:02d}.kernels.csv"
            path.write_text(standins.kernel_csv(scale[launch]))
            passes.append((path, arm, launch))
    table = eplb_table(passes, root=tmp_path)
    assert [(r["label"], r["launch"]) for r in table["runs"]] == [
        (arm, launch) for launch in range(3) for arm in ("off", "on")
    ]
    total = next(r for r in table["comparison"] if r["metric"] == "fused_moe.total_ms")
    assert total["a"] == pytest.approx(1000.0) and total["b"] == pytest.approx(1060.0)
    assert (total["n_a"], total["n_b"]) == (3, 3)
    assert total["change_pct"] == pytest.approx(6.0)
    # resampled medians are among each side's values: the extremes bound the interval
    low, high = 100 * (1.05 - 1.02) / 1.02, 100 * (1.08 - 0.99) / 0.99
    assert low - 1e-9 <= total["change_low"] < 6.0 < total["change_high"] <= high + 1e-9
    assert change_interval([1.0], [2.0, 3.0]) is None


def test_export_fails_clearly_when_nsys_knows_neither_report(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    nsys = bin_dir / "nsys"
    nsys.write_text(
        "#!/usr/bin/env bash\necho \"ERROR: Report '$3' could not be found.\" >&2\nexit 1\n"
    )
    nsys.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    report = tmp_path / "server.nsys-rep"
    report.write_text("report")
    with pytest.raises(StageFailed, match="cuda_gpu_kern_sum: exit 1.*gpukernsum: exit 1") as info:
        export_kernel_summary(report, tmp_path / "out" / "server.kernels.csv")
    assert "could not be found" in str(info.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_stats_run_in_the_image_that_wrote_the_report(tmp_path, monkeypatch):
    """A report of a containerized server is summarized by that image's nsys (podman-hpc run
    with the report's and the summary's folders bound), not by a host nsys."""
    from standins import install, kernel_csv

    bin_dir = tmp_path / "bin"
    install(bin_dir, "podman-hpc")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")  # no nsys on the host
    monkeypatch.setenv("FAKE_PODMAN_CALLS", str(tmp_path / "calls"))
    profile = tmp_path / "bench" / "unit" / "profile"
    profile.mkdir(parents=True)
    report = profile / "server.nsys-rep"
    report.write_text(kernel_csv(1.0))
    launch = {"launcher": "podman-hpc", "image": "moe-artifact-vllm:v0.11.0", "argv": []}
    (profile / "server.log").write_text(LAUNCH_PREFIX + json.dumps(launch) + "\n...\n")
    out = tmp_path / "imbalance" / "server.kernels.csv"
    assert "Nsight Systems" in nsys_version(report)
    assert export_kernel_summary(report, out) == "cuda_gpu_kern_sum"
    assert read_kernel_summary(out)[0].name == "fused_moe_kernel"
    calls = [json.loads(x) for x in (tmp_path / "calls").read_text().splitlines()]
    stats = calls[-1]
    image = stats.index("moe-artifact-vllm:v0.11.0")
    assert stats[:3] == ["run", "--rm", "-v"] and stats[image + 1 : image + 3] == ["nsys", "stats"]
    binds = {stats[i + 1] for i in range(image) if stats[i] == "-v"}
    assert binds == {f"{profile}:{profile}", f"{out.parent}:{out.parent}"}
    # a later pass's report: the launcher of that pass's own server log
    assert runner(profile / "server.launch01.nsys-rep") == ["nsys"]  # no server.launch01.log
    (profile / "server.launch01.log").write_text((profile / "server.log").read_text())
    assert runner(profile / "server.launch01.nsys-rep")[:2] == ["podman-hpc", "run"]
    # a bare server's report: the host's nsys, and a clear error without one
    (profile / "server.log").write_text(LAUNCH_PREFIX + json.dumps({"launcher": "bare"}) + "\n")
    assert runner(report) == ["nsys"]
    with pytest.raises(ArtifactError, match="module load nsight-systems"):
        nsys_version(report)


def test_the_window_commands_name_one_session_per_report():
    a, b = Path("/r/a/server.nsys-rep"), Path("/r/b/server.nsys-rep")
    assert session_name(a) != session_name(b)
    launch = launch_argv(a, "cuda,nvtx")
    assert launch[:3] == ["nsys", "launch", f"--session-new={session_name(a)}"]
    assert window_argv(a, "start") == [
        "nsys",
        "start",
        f"--session={session_name(a)}",
        "--output",
        str(a),
        "--force-overwrite=true",
    ]
    assert window_argv(a, "stop") == ["nsys", "stop", f"--session={session_name(a)}"]
