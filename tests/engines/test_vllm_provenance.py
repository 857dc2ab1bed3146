"""vLLM provenance: parsing server logs and listing contradictions to a claimed mode.

The logs here are small synthetic ones in vLLM's line formats (0.10.x dev builds and
0.11.0): prefixes `(EngineCore_DP0 pid=..)`, ANSI colours, lines glued together.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from artifact.cli import main
from artifact.engines.vllm.provenance import (
    FLASHINFER,
    TRITON,
    Expectation,
    analyse,
    build_label,
    build_matches,
    default_all2all_backend,
    expectation_flags,
    intrinsic_flags,
    parse_log_text,
)
from artifact.study.expectation import expectation_from_study_dir

DEV = "0.10.1rc2.dev263+g2f13319f4"
C = "\x1b[1;36m"
R = "\x1b[0;0m"


def api(version: str, args: dict) -> list[str]:
    return [
        "INFO 01-02 03:04:05 [__init__.py:241] Automatically detected platform cuda.",
        f"{C}(APIServer pid=10){R} INFO 01-02 03:04:06 [api_server.py:1] "
        f"vLLM API server version {version}",
        f"{C}(APIServer pid=10){R} INFO 01-02 03:04:06 [utils.py:1] non-default args: {args!r}",
    ]


def ready(host: str = "127.0.0.1") -> list[str]:
    return [
        f"(APIServer pid=10) INFO 01-02 03:05:00 [api_server.py:1] "
        f"Starting vLLM API server 0 on http://{host}:8000",
        "(APIServer pid=10) INFO:     Application startup complete.",
    ]


def ep_log(version: str, manager: str, eplb: bool = False, extra_args: dict | None = None) -> str:
    args = {
        "model": "mistralai/Mixtral-8x7B-v0.1",
        "host": "127.0.0.1",
        "max_model_len": 4096,
        "enforce_eager": True,
        "data_parallel_size": 4,
        "enable_expert_parallel": True,
        "max_num_batched_tokens": 8192,
        "max_num_seqs": 32,
        **(extra_args or {}),
    }
    lines = api(version, args)
    for r in range(4):
        p = f"{C}(EngineCore_DP{r} pid={20 + r}){R} "
        lines += [
            p + f"INFO 01-02 03:04:10 [core.py:77] Initializing a V1 LLM engine (v{version}) "
            "with config: model='mistralai/Mixtral-8x7B-v0.1', dtype=torch.bfloat16, "
            "max_seq_len=4096, tensor_parallel_size=1, pipeline_parallel_size=1, "
            'data_parallel_size=4, enforce_eager=True, compilation_config={"level":0}',
            p + f"INFO 01-02 03:04:11 [cuda_communicator.py:1] Using {manager} all2all manager.",
            p + f"INFO 01-02 03:04:11 [parallel_state.py:1] rank {r} in world size 4 is "
            f"assigned as DP rank {r}, PP rank 0, TP rank 0, EP rank {r}",
            p + "WARNING 01-02 03:04:11 [topk_topp_sampler.py:1] FlashInfer is not available. "
            "Falling back to the PyTorch-native implementation of top-p & top-k sampling.",
            p + f"INFO 01-02 03:04:11 [layer.py:1] [EP Rank {r}/4] Expert parallelism is "
            "enabled. Local/global number of experts: 2/8. Experts local to global index "
            f"map: 0->{2 * r}, 1->{2 * r + 1}.",
            p + "WARNING 01-02 03:04:20 [fused_moe.py:1] Using default MoE config. Performance "
            "might be sub-optimal! Config file not found at ['/x/configs/E=2,N=14336,"
            "device_name=NVIDIA_A100-SXM4-40GB.json']",
        ]
        if version == "0.11.0":
            lines.append(
                p + "INFO 01-02 03:04:11 [layer.py:1] "
                "FlashInfer CUTLASS MoE is currently not available for DP."
            )
        if eplb:
            lines.append(
                p + "INFO 01-02 03:04:30 [gpu_model_runner.py:1] EPLB is enabled for model "
                "mistralai/Mixtral-8x7B-v0.1."
            )
    lines += ready()
    if eplb:
        lines += [
            "(EngineCore_DP0 pid=20) INFO 01-02 03:06:00 [eplb_state.py:1] EPLB step: "
            "avg_tokens=100.00, max_tokens=130, balancedness=0.7692",
            "(EngineCore_DP0 pid=20) INFO 01-02 03:06:01 [eplb_state.py:1] Rearranged "
            "experts (profile) in 1.25 seconds.",
        ]
    return "\n".join(lines) + "\n"


def tp_log(version: str) -> str:
    args = {
        "model": "mistralai/Mixtral-8x7B-v0.1",
        "max_model_len": 4096,
        "enforce_eager": True,
        "tensor_parallel_size": 4,
        "max_num_batched_tokens": 4096,
        "max_num_seqs": 16,
    }
    lines = api(version, args)
    for r in range(4):
        p = f"(VllmWorker TP{r} pid={30 + r}) "
        lines += [
            p + f"INFO 01-02 03:04:11 [parallel_state.py:1] rank {r} in world size 4 is "
            f"assigned as DP rank 0, PP rank 0, TP rank {r}, EP rank {r}",
            p + "INFO 01-02 03:04:20 [fused_moe.py:1] Using configuration from /x/configs/"
            "E=8,N=3584,device_name=NVIDIA_A100-SXM4-40GB.json for MoE layer.",
            # the gate logger of the original study glued lines together
            p + "[MixtralMoE] Saving gate logs -> /x/gate_logs_1.json" + p + "INFO x",
        ]
    lines += ready("0.0.0.0")
    return "\n".join(lines) + "\n"


def test_parses_an_expert_parallel_log_of_0110():
    prov = parse_log_text(ep_log("0.11.0", "AllGather-ReduceScatter"))
    assert prov.vllm_version == "0.11.0" and prov.vllm_build == "v0.11.0"
    assert (prov.tensor_parallel_size, prov.data_parallel_size) == (1, 4)
    assert prov.enable_expert_parallel and prov.expert_parallel_size == 4
    assert prov.expert_maps["2"] == [4, 5]
    assert prov.all2all_manager == "allgather_reducescatter"
    assert prov.moe_kernel == TRITON
    assert prov.moe_config == {
        "tuned": False,
        "file": "E=2,N=14336,device_name=NVIDIA_A100-SXM4-40GB.json",
        "E": 2,
        "N": 14336,
    }
    assert prov.flashinfer_moe == "unavailable: data parallel"
    assert prov.flashinfer_available is False
    assert prov.gpu_model == "NVIDIA A100-SXM4-40GB" and prov.compute_capability == 8.0
    assert (prov.host, prov.port, prov.ready) == ("127.0.0.1", 8000, True)
    assert prov.dtype == "bfloat16" and prov.enforce_eager is True
    assert (prov.max_num_seqs, prov.max_num_batched_tokens) == (32, 8192)
    assert not prov.eplb_enabled and prov.processes["EngineCore"] == 4


def test_parses_a_tensor_parallel_log_of_the_dev_build():
    prov = parse_log_text(tp_log(DEV))
    assert prov.vllm_build == "2f13319f"
    assert (prov.tensor_parallel_size, prov.data_parallel_size) == (4, 1)
    assert not prov.enable_expert_parallel and prov.all2all_manager is None
    assert prov.moe_config["tuned"] and (prov.moe_config["E"], prov.moe_config["N"]) == (8, 3584)
    assert prov.host == "0.0.0.0"


def test_eplb_state_and_balancedness():
    prov = parse_log_text(
        ep_log("0.11.0", "AllGather-ReduceScatter", eplb=True, extra_args={"enable_eplb": True})
    )
    assert prov.eplb_requested and prov.eplb_enabled
    assert prov.eplb_rearrangements == 1 and prov.eplb_balancedness == [0.7692]


def test_build_helpers():
    assert build_label(DEV) == "2f13319f" and build_label("0.11.0") == "v0.11.0"
    assert build_matches(DEV, "2f13319f") and build_matches(DEV, "2f13319f47eb9a78")
    assert build_matches("0.11.0", "v0.11.0") and not build_matches("0.11.0", "2f13319f")
    assert default_all2all_backend(DEV) == "naive"
    assert default_all2all_backend("0.11.0") == "allgather_reducescatter"


def all2all(**kw) -> Expectation:
    base = dict(
        name="all2all",
        source="test",
        tensor_parallel_size=1,
        data_parallel_size=4,
        enable_expert_parallel=True,
        enable_eplb=False,
        all2all_backend="default",
    )
    base.update(kw)
    return Expectation(**base)


def test_a_matching_run_raises_nothing():
    for version, manager in ((DEV, "naive"), ("0.11.0", "AllGather-ReduceScatter")):
        prov = parse_log_text(ep_log(version, manager))
        flags, _ = expectation_flags(prov, all2all(moe_kernel=TRITON))
        assert flags == [] and intrinsic_flags(prov) == []


def test_eplb_asked_for_but_not_enabled_is_flagged():
    prov = parse_log_text(ep_log("0.11.0", "AllGather-ReduceScatter"))
    flags, _ = expectation_flags(prov, all2all(enable_eplb=True))
    assert len(flags) == 1 and flags[0].startswith("EPLB: claimed enabled")
    assert "--enable-eplb absent" in flags[0]


def test_enable_eplb_on_the_dev_build_does_nothing_for_mixtral():
    prov = parse_log_text(ep_log(DEV, "naive", extra_args={"enable_eplb": True}))
    flags = intrinsic_flags(prov)
    assert flags and "needs 0.11.0" in flags[0]
    flags, _ = expectation_flags(prov, all2all(enable_eplb=True))
    assert any("cannot enable EPLB for Mixtral" in f for f in flags)


def test_enabled_eplb_without_rearrangement_is_a_note():
    text = ep_log("0.11.0", "AllGather-ReduceScatter", eplb=True).replace("Rearranged", "x")
    flags, notes = expectation_flags(parse_log_text(text), all2all(enable_eplb=True))
    assert flags == [] and any("no rearrangement" in n for n in notes)


def test_flashinfer_moe_claims_are_flagged_with_the_evidence():
    for version, manager, evidence in (
        ("0.11.0", "AllGather-ReduceScatter", "currently"),
        (DEV, "naive", "has no bf16 FlashInfer"),
    ):
        prov = parse_log_text(ep_log(version, manager))
        flags, _ = expectation_flags(prov, all2all(moe_kernel=FLASHINFER, moe_kernel_claim="FI"))
        assert len(flags) == 1 and "claimed 'FI'" in flags[0]
        assert "Triton fused_moe" in flags[0]
        if evidence != "currently":
            assert evidence in flags[0]
        else:
            assert "unavailable: data parallel" in flags[0]


def test_wrong_manager_layout_build_and_host_are_flagged():
    prov = parse_log_text(ep_log("0.11.0", "naive"))
    flags, _ = expectation_flags(prov, all2all(vllm_ref="2f13319f", host="127.0.0.1"))
    assert any("the default of vLLM 0.11.0 (allgather_reducescatter)" in f for f in flags)
    assert any("vLLM build: claimed 2f13319f" in f for f in flags)
    prov = parse_log_text(tp_log(DEV))
    flags, _ = expectation_flags(prov, all2all(host="127.0.0.1", max_num_seqs=32))
    text = " | ".join(flags)
    assert "tensor-parallel size: claimed 1, the log shows 4" in text
    assert "data-parallel size: claimed 4, the log shows 1" in text
    assert "expert parallel: claimed on" in text
    assert "bind address: claimed 127.0.0.1, the server bound 0.0.0.0" in text
    assert "max-num-seqs: claimed 32, the log shows 16" in text
    assert "all2all: claimed default" in text


def test_cut_log_is_noted_not_flagged():
    text = ep_log("0.11.0", "AllGather-ReduceScatter").split("Starting vLLM")[0]
    prov = parse_log_text(text)
    flags, notes = expectation_flags(prov, all2all(enable_eplb=False))
    assert not prov.ready and flags == []
    assert any("never reached" in n for n in notes)


def study_tree(root: Path) -> list[Path]:
    """A miniature of the original study's layout: name and card carry the claim."""
    runs = {
        "Mixtral8x7B-vllmEP4-Perlmutter[defaultall2all_32_8192]-group12": ep_log(DEV, "naive"),
        "Mixtral8x7B-vllmEP4-Perlmutter[defaultall2all_32_4096]-group12": ep_log(
            "0.11.0", "AllGather-ReduceScatter"
        ).replace("8192", "4096"),
        "Mixtral8x7B-vllmEP4-Perlmutter[defaultall2all_32_8192_eplbon]-group12": ep_log(
            "0.11.0", "AllGather-ReduceScatter"
        ),
        "Mixtral8x7B-vllmTP4-Perlmutter[baseline_16_4096]-group12": tp_log(DEV),
    }
    logs = []
    for name, text in runs.items():
        (root / name / "logs").mkdir(parents=True)
        card = {"description": "Online serving using Baseline (Triton MoE) kernel"}
        if "eplbon" in name:
            card = {
                "description": "with EPLB enabled",
                "Model-executor": {"expert_parallel": {"eplb": True}},
            }
        (root / name / f"{name}.yaml").write_text(json.dumps(card))
        log = root / name / "logs" / "vllm.log"
        log.write_text(text)
        logs.append(log)
    return logs


def test_study_directory_claims(tmp_path):
    logs = study_tree(tmp_path)
    exp = expectation_from_study_dir(logs[2].parent.parent)
    assert exp.enable_eplb and exp.data_parallel_size == 4 and exp.max_num_seqs == 32
    exp = expectation_from_study_dir(logs[3].parent.parent)
    assert exp.tensor_parallel_size == 4 and exp.moe_kernel == TRITON
    report = analyse(logs, expect="auto")
    flagged = {r["name"].split("[")[1].split("]")[0]: r["flags"] for r in report["runs"]}
    assert flagged["defaultall2all_32_8192"] == []
    assert flagged["defaultall2all_32_4096"] == []
    assert flagged["baseline_16_4096"] == []
    assert len(flagged["defaultall2all_32_8192_eplbon"]) == 1
    assert report["sweep_flags"][0].startswith("the sweep mixes 2 vLLM builds")
    assert any(f.startswith("mode all2all ran on 2 builds") for f in report["sweep_flags"])


def test_cards_with_per_mode_kernel_claims(tmp_path):
    logs = study_tree(tmp_path)
    card = tmp_path / "workload.yaml"
    card.write_text(
        "description: Compares Baseline (Triton MoE) vs DefaultAll2All (FlashInfer MoE)\n"
        "workload: {hardware: {xpu_spec: {model: nvidia_a100}}}\n"
    )
    report = analyse(logs[:2] + logs[3:], cards=[card])
    by_family = {r["family"]: r["flags"] for r in report["runs"]}
    assert by_family["baseline"] == []
    assert "claimed 'DefaultAll2All (FlashInfer MoE)'" in by_family["all2all"][0]
    assert "compute capability 8.0" in report["card_flags"][0]


def test_cli_exit_codes_and_json(tmp_path, capsys):
    log = tmp_path / "server.log"
    log.write_text(ep_log("0.11.0", "AllGather-ReduceScatter"))
    assert main(["provenance", str(log)]) == 0
    capsys.readouterr()
    assert main(["provenance", str(log), "--json", "--expect", "all2all"]) == 1
    report = json.loads(capsys.readouterr().out)
    flags = report["runs"][0]["flags"]
    # the perlmutter profile pins 2f13319f and expects a tuned-for-EP Triton kernel
    assert any("vLLM build: claimed 2f13319f" in f for f in flags)
    assert main(["provenance", str(log), "--expect", "all2all-eplb", "--json"]) == 1
    flags = json.loads(capsys.readouterr().out)["runs"][0]["flags"]
    assert any(f.startswith("EPLB: claimed enabled") for f in flags)
    assert main(["provenance", str(tmp_path / "missing.log")]) == 2
    assert main(["provenance", str(log), "--expect", "nope"]) == 2


@pytest.mark.parametrize("version", [DEV, "0.11.0"])
def test_partial_and_garbage_lines_do_not_break_the_parser(version):
    text = ep_log(version, "naive")
    cut = text[: len(text) // 2] + "\x00\xff garbage (x pid=) non-default args: {oops\n"
    prov = parse_log_text(cut)
    assert prov.vllm_version == version


def failed_start_0110() -> str:
    """vLLM 0.11 dying in start-up: every line, tracebacks included, carries a process tag."""
    lines = api("0.11.0", {"model": "/m/tiny-mixtral", "tensor_parallel_size": 1})
    core = f"{C}(EngineCore_DP0 pid=1300){R} "
    lines += [
        core + "Process EngineCore_DP0:",
        core + "Traceback (most recent call last):",
        core + '  File "/v/vllm/v1/engine/core.py", line 699, in run_engine_core',
        core + "    raise e",
        core + "RuntimeError: Class values must be smaller than num_classes.",
        "(APIServer pid=1234) Traceback (most recent call last):",
        '(APIServer pid=1234)   File "/v/bin/vllm", line 8, in <module>',
        "(APIServer pid=1234) RuntimeError: Engine core initialization failed. "
        "See root cause above. Failed core proc(s): {}",
    ]
    return "\n".join(lines) + "\n"


def test_process_tagged_tracebacks_are_errors_with_the_error_they_ended_in():
    prov = parse_log_text(failed_start_0110())
    assert not prov.ready
    assert prov.errors == [
        "(EngineCore_DP0 pid=1300) Traceback (most recent call last):",
        "(EngineCore_DP0 pid=1300) RuntimeError: Class values must be smaller than num_classes.",
        "(APIServer pid=1234) Traceback (most recent call last):",
        "(APIServer pid=1234) RuntimeError: Engine core initialization failed. "
        "See root cause above. Failed core proc(s): {}",
    ]


def test_a_log_that_never_started_is_flagged_without_expect(tmp_path, capsys):
    failed, cut = tmp_path / "failed.log", tmp_path / "cut.log"
    failed.write_text(failed_start_0110())
    cut.write_text(ep_log("0.11.0", "AllGather-ReduceScatter").split("Starting vLLM")[0])
    report = analyse([failed, cut])
    assert report["flagged"]
    failed_flags, cut_flags = (run["flags"] for run in report["runs"])
    assert failed_flags == [
        "the log never reached 'Application startup complete' (cut or failed); error: "
        "RuntimeError: Class values must be smaller than num_classes."
    ]
    assert cut_flags == ["the log never reached 'Application startup complete' (cut or failed)"]
    for log in (failed, cut):
        assert main(["provenance", str(log)]) == 1
    capsys.readouterr()
    assert main(["provenance", str(cut), "--expect", "baseline", "--json"]) == 1
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert sum("never reached" in line for line in run["flags"] + run["notes"]) == 1


def test_the_routing_plugin_line_in_the_server_log():
    text = ep_log("0.11.0", "AllGather-ReduceScatter")
    assert parse_log_text(text).routing_plugin is None
    active = (
        "(Worker_TP0 pid=40) INFO 01-02 03:04:12 [hooks.py:499] moe-artifact routing plugin "
        "active: hooks on FusedMoE.select_experts and GPUModelRunner.execute_model "
        "(control file /run/control.json)\n"
    )
    assert parse_log_text(text + active).routing_plugin == "active"
    missing = (
        "(EngineCore_DP0 pid=20) WARNING 01-02 03:04:12 [__init__.py:40] moe-artifact routing "
        "plugin not installed: No module named 'vllm.model_executor'\n"
    )
    assert parse_log_text(text + missing + active).routing_plugin == "not installed"
