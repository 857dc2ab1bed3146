"""Expert-load imbalance: readers, measures, aggregation, the study's legacy methods,
correlation with performance, tidy tables, and the `moe-artifact imbalance-metrics` tool.

Modules: `metrics` (measures of load vectors, expert placement), `readers` (routing logs and
the study's gate logs), `aggregate` (streaming per-layer and cross-layer tables),
`legacy` (the study's two methods and how the default differs), `correlation`, `tables`
(CSV/JSON writers), `tool` (the CLI).
"""

from artifact.imbalance.aggregate import (
    DEFAULT_EP_RANKS,
    VIEWS,
    ImbalanceAccumulator,
    RunImbalance,
    analyze_gate_log_run,
    analyze_path,
    analyze_routing_log,
)
from artifact.imbalance.correlation import Correlation, correlation, correlation_table, iqr_filter
from artifact.imbalance.legacy import (
    LEGACY_METHODS,
    compare_default_vs_legacy,
    legacy_cv,
    legacy_table,
)
from artifact.imbalance.metrics import METRICS, ExpertPlacement, load_metrics, uniform_cv_floor
from artifact.imbalance.readers import Skipped, find_gate_log_runs, read_gate_log
from artifact.imbalance.tables import PerStepCsv, write_run_tables, write_table
from artifact.imbalance.tool import TOOL_HELP, configure_parser, run_tool

__all__ = [
    "DEFAULT_EP_RANKS",
    "LEGACY_METHODS",
    "METRICS",
    "TOOL_HELP",
    "VIEWS",
    "Correlation",
    "ExpertPlacement",
    "ImbalanceAccumulator",
    "PerStepCsv",
    "RunImbalance",
    "Skipped",
    "analyze_gate_log_run",
    "analyze_path",
    "analyze_routing_log",
    "compare_default_vs_legacy",
    "configure_parser",
    "correlation",
    "correlation_table",
    "find_gate_log_runs",
    "iqr_filter",
    "legacy_cv",
    "legacy_table",
    "load_metrics",
    "read_gate_log",
    "run_tool",
    "uniform_cv_floor",
    "write_run_tables",
    "write_table",
]
