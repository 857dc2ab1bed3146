"""The original study's data, read as it lies on disk: one reader per kind of file.

- `traces`: trace directory names (`Model-engine-Platform[mode_seqs_tokens]-group`);
- `cards`: workload cards (`*.yaml` beside a trace or under `load_imbalance/`);
- `gate_logs`: the gate logs (`gates_logs_NN/gate_logs_<layer>.json`);
- `legacy`: the study's own two imbalance methods, reproduced;
- `expectation`: what a trace claims to have run (name and card), for the vLLM log checks;
- `layout`: the whole folder as this artifact's tidy tables (`--from-study`);
- `parallel_loads`: its gate logs as the parallel stage's replay file;
- `audit`: provenance findings over the tables.

Server logs are read by the vLLM log parser, `artifact.engines.vllm.provenance`.
"""

# Where tools and tests look for the study's data folder.
STUDY_ENV = "MOE_ARTIFACT_STUDY_DATA"
# The gate logs of its TP (baseline) and EP (default all2all) runs, under that folder.
STUDY_GATE_LOGS = {
    "study-baseline": "load_imbalance/baseline_gates_logs",
    "study-all2all": "load_imbalance/default_all2all_gates_logs",
}
