"""`nsys stats` CUDA GPU kernel summaries: export, parse, summarize per run, compare two runs.

Input: the CSV of the `cuda_gpu_kern_sum` report (older nsys: `gpukernsum`), in either form
nsys writes:

- human: units inside the cells, `75.794 ms`, `5.819 μs`, `241 ns`, `1.271 s`, `48.30%`,
  thousands separators in counts (`13,024`), header `Time,Total Time,Instances,Avg,...`;
- plain: numbers only, the unit in the header, `Time (%),Total Time (ns),Instances,Avg (ns),
  Med (ns),Min (ns),Max (ns),StdDev (ns),Name` (older: `Average`, `Minimum`, `Maximum`
  without a unit of their own: they take Total Time's).

Anything before the header (nsys's "Processing [...]" lines) is skipped; the table ends at
the first blank line. Kernels are grouped by name:

- fused_moe: the Triton `fused_moe_kernel` (vLLM's default MoE GEMM); several rows (Triton
  variants) are pooled, and then have no median;
- moe_aux: other kernels with `moe` in the name (vLLM's routing, sorting, alignment and sum
  kernels: `vllm::moe::...`);
- nccl: `ncclKernel_*` / `ncclDevKernel_*`, by collective from the name; NCCL runs
  all-to-all as SendRecv kernels, reported as AllToAll (they also carry any other
  point-to-point traffic);
- attention: names with flash, attention, attn or fmha (FlashAttention kernels and vLLM's
  `reshape_and_cache_flash` KV-cache write).

Percentages are recomputed from the totals; the file's own Time column is rounded to 0.1%.

`export_kernel_summary` runs `nsys stats` on a report (the newer report name first, then the
older); `eplb_table` is the EPLB off/on table of both the study's CSVs (one pass an arm) and
our own reports (one pass per arm and launch): a row per pass, the change of medians with its
bootstrap interval.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artifact.core.errors import ArtifactError, StageFailed
from artifact.core.io import read_text

UNIT_NS = {"ns": 1.0, "us": 1e3, "μs": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9}
# Header names (lower case, spaces and units removed) -> field.
HEADER_FIELDS = {
    "time": "time_pct",
    "totaltime": "total",
    "instances": "instances",
    "avg": "avg",
    "average": "avg",
    "med": "med",
    "median": "med",
    "min": "min",
    "minimum": "min",
    "max": "max",
    "maximum": "max",
    "stddev": "std",
    "std": "std",
    "name": "name",
}
DURATIONS = ("total", "avg", "med", "min", "max", "std")
REQUIRED = ("total", "instances", "name")
NUMBER_RE = re.compile(
    r"^\s*([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*([^\d\s]*)\s*$"
)
HEADER_RE = re.compile(r"^\s*(.*?)\s*(?:\(\s*([^)]*?)\s*\))?\s*$")
COLLECTIVES = ("AllReduce", "AllGather", "ReduceScatter", "Broadcast", "Reduce", "AllToAll")
NCCL_RE = re.compile(r"^(?:void\s+)?nccl(?:Dev)?Kernel_([A-Za-z]+?)(?:_|\(|$)")
ATTENTION_RE = re.compile(r"flash|attention|attn|fmha", re.IGNORECASE)
GROUPS = ("fused_moe", "moe_aux", "nccl", "attention", "other")


@dataclass(frozen=True)
class KernelRow:
    """One kernel's line; durations in ns, None where the file has no such column."""

    name: str
    total_ns: float
    instances: int
    avg_ns: float
    med_ns: float | None
    min_ns: float | None
    max_ns: float | None
    std_ns: float | None
    time_pct: float | None


def _parse_header(cells: list[str]) -> dict[str, tuple[int, str | None]] | None:
    """field -> (column index, unit in the header) when `cells` is a kernel-summary header."""
    fields: dict[str, tuple[int, str | None]] = {}
    for i, cell in enumerate(cells):
        match = HEADER_RE.match(cell.replace("\ufeff", ""))
        base = match.group(1).lower().replace(" ", "") if match else ""
        unit = match.group(2) if match else None
        if base.endswith("(%)"):
            base, unit = base[:-3], "%"
        if base in HEADER_FIELDS:
            fields.setdefault(HEADER_FIELDS[base], (i, unit))
    return fields if all(f in fields for f in REQUIRED) else None


def _number(cell: str, unit: str | None, *, duration: bool, path: Path, where: str) -> float:
    match = NUMBER_RE.match(cell)
    if not match:
        raise ArtifactError(f"{cell!r} is not a number", path=path, where=where)
    value = float(match.group(1).replace(",", ""))
    cell_unit = match.group(2) or unit
    if duration:
        if cell_unit is None:
            raise ArtifactError(
                f"{cell!r} has no unit, in the cell or the header", path=path, where=where
            )
        if cell_unit not in UNIT_NS:
            raise ArtifactError(
                f"{cell!r}: unknown time unit {cell_unit!r} (expected ns, us, μs, ms or s)",
                path=path,
                where=where,
            )
        return value * UNIT_NS[cell_unit]
    if cell_unit not in (None, "", "%"):
        raise ArtifactError(f"{cell!r}: unexpected unit {cell_unit!r}", path=path, where=where)
    return value


def read_kernel_summary(path: str | Path) -> list[KernelRow]:
    """The kernel rows of an `nsys stats` CUDA GPU kernel summary CSV."""
    path = Path(path)
    text = read_text(path, encoding="utf-8-sig")
    lines = list(csv.reader(text.splitlines()))
    header, start = None, len(lines)
    for index, cells in enumerate(lines):
        header = _parse_header(cells)
        if header:
            start = index + 1
            break
    if header is None:
        raise ArtifactError(
            "no CUDA GPU kernel summary table: expected a header with Total Time, Instances "
            "and Name (the CSV of `nsys stats --report cuda_gpu_kern_sum --format csv`)",
            path=path,
        )
    rows = []
    for lineno, cells in enumerate(lines[start:], start=start + 1):
        if not any(c.strip() for c in cells):
            break
        if len(cells) <= max(i for i, _ in header.values()):
            raise ArtifactError(
                f"{len(cells)} columns, the header has more", path=path, where=str(lineno)
            )
        values: dict[str, float | None] = {}
        for field in ("time_pct", *DURATIONS):
            if field in header:
                i, unit = header[field]
                values[field] = _number(
                    cells[i],
                    unit or (None if field == "time_pct" else header["total"][1]),
                    duration=field != "time_pct",
                    path=path,
                    where=f"{lineno}: column {field}",
                )
            else:
                values[field] = None
        i, _ = header["instances"]
        instances = _number(
            cells[i], None, duration=False, path=path, where=f"{lineno}: column instances"
        )
        if instances != int(instances) or instances < 0:
            raise ArtifactError(
                f"{cells[i]!r} is not a kernel count", path=path, where=f"{lineno}: instances"
            )
        instances = int(instances)
        total = values["total"]
        assert total is not None  # "total" is a required column
        avg = values["avg"] if values["avg"] is not None else total / max(instances, 1)
        rows.append(
            KernelRow(
                name=cells[header["name"][0]].strip(),
                total_ns=total,
                instances=instances,
                avg_ns=avg,
                med_ns=values["med"],
                min_ns=values["min"],
                max_ns=values["max"],
                std_ns=values["std"],
                time_pct=values["time_pct"],
            )
        )
    if not rows:
        raise ArtifactError("the kernel summary table has no rows", path=path)
    return rows


def kernel_group(name: str) -> str:
    if name.startswith("fused_moe_kernel"):
        return "fused_moe"
    if NCCL_RE.match(name):
        return "nccl"
    if "moe" in name.lower():
        return "moe_aux"
    if ATTENTION_RE.search(name):
        return "attention"
    return "other"


def nccl_collective(name: str) -> str | None:
    """The collective of an NCCL kernel name (SendRecv, Send, Recv count as AllToAll)."""
    match = NCCL_RE.match(name)
    if not match:
        return None
    op = match.group(1)
    if op in ("SendRecv", "Send", "Recv", "AllToAll"):
        return "AllToAll"
    return op if op in COLLECTIVES else "other"


def _total(rows: list[KernelRow], grand_total_ns: float) -> dict:
    total = sum(r.total_ns for r in rows)
    return {
        "total_ms": total / 1e6,
        "instances": sum(r.instances for r in rows),
        "time_pct": 100 * total / grand_total_ns if grand_total_ns else None,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _pooled(rows: list[KernelRow]) -> dict | None:
    """Per-instance statistics of one kernel's rows (pooled when there are several)."""
    if not rows:
        return None
    n = sum(r.instances for r in rows)
    total = sum(r.total_ns for r in rows)
    mean = total / n if n else None
    avg: float | None
    std: float | None
    if len(rows) == 1:
        row = rows[0]
        avg, med, low, high, std = row.avg_ns, row.med_ns, row.min_ns, row.max_ns, row.std_ns
    else:
        avg, med = mean, None
        mins = [r.min_ns for r in rows if r.min_ns is not None]
        maxs = [r.max_ns for r in rows if r.max_ns is not None]
        low = min(mins) if len(mins) == len(rows) else None
        high = max(maxs) if len(maxs) == len(rows) else None
        stds = [r.std_ns for r in rows if r.std_ns is not None]
        std = None
        if mean is not None and len(stds) == len(rows):
            # Pooled variance: E[x^2] - mean^2 from each row's mean and std.
            pairs = zip(rows, stds, strict=True)
            second = sum(r.instances * (sd**2 + r.avg_ns**2) for r, sd in pairs) / n
            std = math.sqrt(max(second - mean**2, 0.0))
    us = 1e-3
    return {
        "rows": len(rows),
        "total_ms": total / 1e6,
        "instances": n,
        "avg_us": None if avg is None else avg * us,
        "med_us": None if med is None else med * us,
        "min_us": None if low is None else low * us,
        "max_us": None if high is None else high * us,
        "std_us": None if std is None else std * us,
        "cv": _ratio(std, avg),
        "max_min": _ratio(high, low),
        "med_mean": _ratio(med, avg),
    }


def summarize(rows: list[KernelRow], *, label: str = "", source: str = "", top: int = 5) -> dict:
    """Per-run summary: fused_moe statistics, MoE auxiliary, NCCL by collective, attention,
    top kernels. Totals in ms, per-instance times in us, shares in % of all kernel time."""
    grand = sum(r.total_ns for r in rows)
    groups: dict[str, list[KernelRow]] = {g: [] for g in GROUPS}
    for r in rows:
        groups[kernel_group(r.name)].append(r)
    fused = _pooled(groups["fused_moe"])
    if fused is not None:
        fused["time_pct"] = 100 * fused["total_ms"] * 1e6 / grand if grand else None
    by_collective = {}
    for op in (*COLLECTIVES, "other"):
        members = [r for r in groups["nccl"] if nccl_collective(r.name) == op]
        if members:
            by_collective[op] = {**_total(members, grand), "kernels": len(members)}
    ranked = sorted(rows, key=lambda r: r.total_ns, reverse=True)[:top]
    return {
        "label": label,
        "source": source,
        "kernels": len(rows),
        "total_kernel_time_ms": grand / 1e6,
        "kernel_instances": sum(r.instances for r in rows),
        "fused_moe": fused,
        "moe_aux": {
            **_total(groups["moe_aux"], grand),
            "kernels": [
                {"name": r.name, "total_ms": r.total_ns / 1e6, "instances": r.instances}
                for r in groups["moe_aux"]
            ],
        },
        "moe": _total(groups["fused_moe"] + groups["moe_aux"], grand),
        "nccl": {**_total(groups["nccl"], grand), "by_collective": by_collective},
        "attention": _total(groups["attention"], grand),
        "top_kernels": [
            {
                "name": r.name,
                "group": kernel_group(r.name),
                "total_ms": r.total_ns / 1e6,
                "instances": r.instances,
                "time_pct": 100 * r.total_ns / grand if grand else None,
            }
            for r in ranked
        ],
    }


# (key path in a summary, label, unit, better direction or None when neither is better)
COMPARED = (
    ("fused_moe.total_ms", "fused_moe total", "ms", "lower"),
    ("fused_moe.instances", "fused_moe instances", "", None),
    ("fused_moe.avg_us", "fused_moe mean", "us", "lower"),
    ("fused_moe.med_us", "fused_moe median", "us", "lower"),
    ("fused_moe.max_us", "fused_moe max", "us", "lower"),
    ("fused_moe.std_us", "fused_moe std", "us", "lower"),
    ("fused_moe.cv", "fused_moe CV", "", "lower"),
    ("fused_moe.max_min", "fused_moe max/min", "", "lower"),
    ("moe_aux.total_ms", "MoE auxiliary total", "ms", "lower"),
    ("moe.total_ms", "MoE total", "ms", "lower"),
    ("nccl.total_ms", "NCCL total", "ms", "lower"),
    *(
        (f"nccl.by_collective.{op}.total_ms", f"NCCL {op}", "ms", "lower")
        for op in (*COLLECTIVES, "other")
    ),
    ("attention.total_ms", "attention total", "ms", "lower"),
    ("total_kernel_time_ms", "all kernels total", "ms", "lower"),
)


def _get(summary: dict, key: str):
    value = summary
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def change_interval(
    a: list[float], b: list[float], confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the change of medians, 100 (median(b) - median(a)) /
    median(a) in %, each side resampled on its own; None with fewer than 2 values a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    rng = np.random.default_rng(seed)
    medians = [
        np.median(np.asarray(v, dtype=np.float64)[rng.integers(0, len(v), (n_boot, len(v)))], 1)
        for v in (a, b)
    ]
    base = medians[0]
    changes = 100 * (medians[1][base != 0] - base[base != 0]) / base[base != 0]
    if not changes.size:
        return None
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(changes, [tail, 100 - tail])
    return float(low), float(high)


def compare(a: list[dict], b: list[dict]) -> list[dict]:
    """Rows (metric, label, unit, a, b, n_a, n_b, change_pct, change_low, change_high, better,
    verdict) for side b relative to side a, each side one or more summaries (passes).

    a, b: the median of the side's passes; change_pct: of b's median relative to a's, with
    its 95% bootstrap interval (change_interval: None with one pass a side). verdict: improved /
    worse / unchanged by the metric's direction, None when neither direction is better;
    metrics missing from both sides are left out.
    """
    out = []
    for key, label, unit, better in COMPARED:
        values = [[v for s in side if (v := _get(s, key)) is not None] for side in (a, b)]
        if not any(values):
            continue
        va, vb = (float(np.median(v)) if v else None for v in values)
        change = 100 * (vb - va) / va if va and vb is not None else None
        interval = change_interval(values[0], values[1]) if change is not None else None
        verdict = None
        if better and va is not None and vb is not None:
            verdict = "unchanged" if vb == va else "improved" if vb < va else "worse"
        out.append(
            {
                "metric": key,
                "label": label,
                "unit": unit,
                "a": va,
                "b": vb,
                "n_a": len(values[0]),
                "n_b": len(values[1]),
                "change_pct": change,
                "change_low": interval[0] if interval else None,
                "change_high": interval[1] if interval else None,
                "better": better,
                "verdict": verdict,
            }
        )
    return out


def eplb_table(passes: list[tuple[Path, str, int]], root: Path | None = None) -> dict:
    """{runs, comparison} of the EPLB ablation's kernel summary CSVs [(path, label, launch)],
    EPLB off's label first: one run per arm and pass.

    Each run is a `summarize` summary (source: the path relative to `root`, else its name)
    with its launch and the FlashInfer kernels it ran; the comparison is the second label's
    passes relative to the first's (`compare`: change of medians, bootstrap interval)."""
    runs = []
    for path, label, launch in passes:
        kernels = read_kernel_summary(path)
        source = path.relative_to(root).as_posix() if root else path.name
        summary = summarize(kernels, label=label, source=source)
        summary["launch"] = launch
        flashinfer = [k for k in kernels if "flashinfer" in k.name.lower()]
        summary["flashinfer_kernel_instances"] = sum(k.instances for k in flashinfer)
        summary["flashinfer_kernels"] = sorted(k.name for k in flashinfer)
        runs.append(summary)
    off, on = dict.fromkeys(r["label"] for r in runs)
    sides = [[r for r in runs if r["label"] == label] for label in (off, on)]
    return {"runs": runs, "comparison": compare(*sides)}


# `nsys stats` report names of the CUDA GPU kernel summary: newer nsys, then older.
KERNEL_REPORTS = ("cuda_gpu_kern_sum", "gpukernsum")


# --- the profiled window and the runner of nsys ---------------------------------------------
#
# A profiled server runs under `nsys launch` (the application starts with nsys attached, nothing
# is collected); the bench stage opens the window with `nsys start` after the warm-up and closes
# it with `nsys stop` after the pass (which writes the report), so model load, vLLM's max-batch
# profile run and the warm-up never enter the kernel summaries. This works with every vLLM
# build; vLLM's own cudaProfilerApi hook (VLLM_TORCH_CUDA_PROFILE) is newer than v0.11.0.


def session_name(report: Path) -> str:
    """The nsys session of the server that writes `report` (one per report)."""
    return "moe-" + hashlib.sha256(str(report).encode()).hexdigest()[:12]


def launch_argv(report: Path, trace: str) -> list[str]:
    """The prefix that runs a server under nsys with collection off until `window_argv`."""
    return [
        "nsys",
        "launch",
        f"--session-new={session_name(report)}",
        "--trace",
        trace,
        "--trace-fork-before-exec=true",
    ]


def window_argv(report: Path, action: str) -> list[str]:
    """`nsys start` (collect into `report`) or `nsys stop` (write it) for the server's session."""
    session = f"--session={session_name(report)}"
    if action == "start":
        return ["nsys", "start", session, "--output", str(report), "--force-overwrite=true"]
    if action == "stop":
        return ["nsys", "stop", session]
    raise ValueError(action)


def runner(report: Path, folders: tuple[Path, ...] = ()) -> list[str]:
    """What runs `nsys stats` on `report`: the image whose nsys wrote it, per the launch record
    that starts the server log beside it (the same launcher; the report's folder and `folders`
    bound at their paths), or the host's nsys for a bare server."""
    from artifact.core.layout import UnitDir, launch_of
    from artifact.engines.vllm.engine import LAUNCH_PREFIX

    log = UnitDir(report.parent, launch_of(report)).server_log
    launch: dict = {}
    if log.is_file():
        with open(log, encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
        if first.startswith(LAUNCH_PREFIX):
            launch = json.loads(first[len(LAUNCH_PREFIX) :])
    launcher, image = launch.get("launcher"), launch.get("image")
    if launcher in (None, "bare") or not image:
        return ["nsys"]
    binds = sorted({str(report.parent), *map(str, folders)})
    if launcher == "podman-hpc":
        argv = [launcher, "run", "--rm"]
        for path in binds:
            argv += ["-v", f"{path}:{path}"]
    else:
        argv = [launcher, "exec", "--cleanenv"]
        for path in binds:
            argv += ["--bind", f"{path}:{path}"]
    return [*argv, image, "nsys"]


def nsys_version(report: Path | None = None) -> str:
    """`nsys --version` of what summarizes `report` (the host's without one); a clear error when
    that nsys cannot be run."""
    argv = runner(report) if report is not None else ["nsys"]
    if shutil.which(argv[0]) is None:
        raise ArtifactError(
            f"{argv[0]} is not on PATH, and the run has nsys reports to summarize"
            + (
                ": load Nsight Systems (`module load nsight-systems`) or install it, then "
                "rerun the imbalance stage"
                if argv == ["nsys"]
                else f" (their servers ran in {argv[argv.index('nsys') - 1]}): run the "
                "imbalance stage where that launcher is (reproduce/perlmutter/finish.sbatch)"
            )
        )
    proc = subprocess.run([*argv, "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or proc.stderr.strip()


def export_kernel_summary(report: Path, csv_path: Path) -> str:
    """Write the report's CUDA GPU kernel summary CSV to `csv_path`; returns the report name
    nsys knew. `nsys stats` runs where the report was written (`runner`). The SQLite export nsys
    needs goes next to `csv_path` (never beside the report, which belongs to another stage) and
    is removed afterwards."""
    work = csv_path.parent
    work.mkdir(parents=True, exist_ok=True)
    sqlite = work / f"{csv_path.stem}.sqlite"
    prefix = work / f"{csv_path.stem}.nsys"
    nsys = runner(report, (work,))
    failures = []
    try:
        for name in KERNEL_REPORTS:
            for old in work.glob(f"{prefix.name}_*.csv"):
                old.unlink()
            argv = [*nsys, "stats", "--report", name, "--format", "csv", "--sqlite", str(sqlite)]
            proc = subprocess.run(
                [*argv, "--output", str(prefix), str(report)],
                capture_output=True,
                text=True,
                check=False,
            )
            # nsys names its output <prefix>_<report>.csv
            made = sorted(work.glob(f"{prefix.name}_*.csv"))
            if proc.returncode == 0 and len(made) == 1:
                made[0].replace(csv_path)
                return name
            said = (proc.stderr or proc.stdout).strip().splitlines()
            failures.append(f"--report {name}: exit {proc.returncode}, {said[-1] if said else ''}")
    finally:
        sqlite.unlink(missing_ok=True)
    raise StageFailed(f"{report}: `nsys stats` made no kernel summary ({'; '.join(failures)})")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", type=Path, metavar="CSV", help="one run, or two to compare (A B)"
    )
    parser.add_argument(
        "--labels", nargs="+", default=None, help="run labels (default: the file names)"
    )
    parser.add_argument("--top", type=int, default=5, help="how many top kernels to list")
    parser.add_argument(
        "--json", action="store_true", help="print {runs: [...], comparison: [...]} as JSON"
    )


def _fmt(value, digits: int = 6) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}g}"


def run_tool(args: argparse.Namespace) -> int:
    if len(args.files) > 2:
        raise ArtifactError(f"give one kernel summary, or two to compare; got {len(args.files)}")
    labels = args.labels or [p.stem for p in args.files]
    if len(labels) != len(args.files):
        raise ArtifactError(f"{len(labels)} labels for {len(args.files)} files")
    runs = [
        summarize(read_kernel_summary(p), label=lab, source=str(p), top=args.top)
        for p, lab in zip(args.files, labels, strict=True)
    ]
    comparison = compare(runs[:1], runs[1:]) if len(runs) == 2 else []
    if args.json:
        payload = {"runs": runs, "comparison": comparison}
        print(json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False))
        return 0
    from rich.table import Table

    from artifact.core.console import console

    rows = comparison or [
        {"label": label, "unit": unit, "a": _get(runs[0], key)}
        for key, label, unit, _ in COMPARED
        if _get(runs[0], key) is not None
    ]
    table = Table(title="nsys kernel summary" + (" comparison" if comparison else ""))
    table.add_column("metric")
    table.add_column("unit")
    table.add_column(labels[0], justify="right")
    if comparison:
        table.add_column(labels[1], justify="right")
        table.add_column("change", justify="right")
        table.add_column("verdict")
    for row in rows:
        cells = [row["label"], row["unit"], _fmt(row["a"])]
        if comparison:
            change = "-" if row["change_pct"] is None else f"{row['change_pct']:+.1f}%"
            cells += [_fmt(row["b"]), change, row["verdict"] or "-"]
        table.add_row(*cells)
    console.print(table)
    for run in runs:
        top = Table(title=f"{run['label']}: top kernels")
        top.add_column("kernel", overflow="fold")
        top.add_column("group")
        top.add_column("total ms", justify="right")
        top.add_column("%", justify="right")
        for k in run["top_kernels"]:
            top.add_row(k["name"], k["group"], _fmt(k["total_ms"]), f"{k['time_pct']:.1f}")
        console.print(top)
    return 0
