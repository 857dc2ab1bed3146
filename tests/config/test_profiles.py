import pytest

from artifact.config.profiles import available_profiles, default_profile_name, load_profile
from artifact.core.errors import ArtifactError


def test_shipped_profiles_load():
    assert {"local", "perlmutter"} <= set(available_profiles())
    local = load_profile("local")
    assert local.engine.kind == "transformers" and local.engine.host == "127.0.0.1"
    hpc = load_profile("perlmutter")
    assert hpc.modes["all2all-eplb"].enable_eplb
    assert hpc.modes["baseline"].tensor_parallel_size == 4


def test_default_profile_follows_nersc_host(monkeypatch):
    monkeypatch.delenv("NERSC_HOST", raising=False)
    assert default_profile_name() == "local"
    monkeypatch.setenv("NERSC_HOST", "perlmutter")
    assert default_profile_name() == "perlmutter"


def test_unknown_field_names_file_field_and_allowed(write_profile):
    path = write_profile(
        {"datasets": {"seed": 1, "count": 5, "prompts_per_dataset": 3, "cuont": 4}}
    )
    with pytest.raises(ArtifactError) as err:
        load_profile(path)
    message = str(err.value)
    assert str(path) in message
    assert "field 'datasets.cuont'" in message and "unknown field" in message
    assert "allowed here: count, prompts_per_dataset, seed" in message


def test_bad_value_and_bad_choice(write_profile, local_profile_raw):
    path = write_profile({"datasets": {"count": "many"}})
    with pytest.raises(ArtifactError, match=r"field 'datasets.count'.*valid integer.*'many'"):
        load_profile(path)
    engine = dict(local_profile_raw["engine"], kind="sglang")
    path = write_profile({"engine": engine})
    with pytest.raises(ArtifactError, match=r"field 'engine.kind'.*allowed: 'transformers'"):
        load_profile(path)


def test_experiment_mode_must_exist(write_profile, local_profile_raw):
    experiments = dict(local_profile_raw["experiments"])
    experiments["imbalance"] = dict(experiments["imbalance"], modes=["eager", "turbo"])
    path = write_profile({"experiments": experiments})
    with pytest.raises(ArtifactError, match="names 'turbo', not one of the profile's modes"):
        load_profile(path)


def test_nsys_traces_need_the_vllm_engine(write_profile, local_profile_raw):
    modes = dict(local_profile_raw["modes"])
    modes["eager"] = dict(modes["eager"], nsys=True)
    with pytest.raises(ArtifactError, match="modes.eager.nsys: nsys kernel traces need engine"):
        load_profile(write_profile({"modes": modes}))


def test_name_must_match_file_and_missing_profile(write_profile, tmp_path):
    path = write_profile({"name": "other"})
    with pytest.raises(ArtifactError, match="name is 'other' but the file is local.yaml"):
        load_profile(path)
    with pytest.raises(ArtifactError, match="no such profile; available: .*local"):
        load_profile("nonexistent")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ArtifactError, match=r"broken.yaml:\d+: not valid YAML"):
        load_profile(broken)


def test_section_hash_tracks_only_named_sections(write_profile, local_profile_raw):
    a = load_profile(write_profile())
    changed = dict(local_profile_raw["engine"], startup_timeout_s=10)
    b = load_profile(write_profile({"engine": changed}))
    assert a.section_hash("datasets") == b.section_hash("datasets")
    assert a.section_hash("engine") != b.section_hash("engine")


def test_gpu_profile_has_mixtral_8x7b_layer_shapes_and_runnable_modes():
    from artifact.engines.base import get_engine

    gpu = load_profile("gpu")
    arch = gpu.model.architecture
    assert (arch["hidden_size"], arch["intermediate_size"]) == (4096, 14336)
    assert (arch["num_local_experts"], arch["num_experts_per_tok"]) == (8, 2)
    assert (arch["num_attention_heads"], arch["num_key_value_heads"]) == (32, 8)
    assert arch["vocab_size"] == 32000
    assert (gpu.engine.device, gpu.model.dtype) == ("cuda", "bfloat16")
    assert 0 < gpu.engine.replay_tolerance <= 0.1
    engine = get_engine(gpu, None)
    for name, mode in gpu.modes.items():
        engine.validate_mode(name, mode)
    # batched_mm gathers a 352 MB weight slab per routed token-expert pair at these shapes
    assert {m.experts_implementation for m in gpu.modes.values()} == {"eager", "grouped_mm"}


def patched(raw: dict, dotted: str, value) -> dict:
    """A deep copy of raw with the field at `dotted` (a.b.c) set to value."""
    import copy

    raw = copy.deepcopy(raw)
    *parents, last = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


@pytest.mark.parametrize(
    "field, value, where, allowed",
    [
        ("experiments.imbalance.datasets", -5, "experiments.imbalance.datasets", "'all'"),
        ("experiments.imbalance.max_num_seqs", 0, "experiments.imbalance.max_num_seqs", ">= 1"),
        ("experiments.config_sweep.max_num_seqs", [-2], "config_sweep.max_num_seqs.0", ">= 1"),
        ("experiments.config_sweep.max_num_batched_tokens", [], "max_num_batched_tokens", "1 it"),
        ("experiments.config_sweep.fixed_max_num_seqs", 0, "fixed_max_num_seqs", ">= 1"),
        ("experiments.imbalance.bench.repeat", 0, "bench.repeat", ">= 1"),
        ("experiments.config_sweep.bench.launches", 0, "config_sweep.bench.launches", ">= 1"),
        ("experiments.imbalance.bench.request_timeout_s", 0, "request_timeout_s", "> 0"),
        ("engine.startup_timeout_s", -1, "engine.startup_timeout_s", "> 0"),
        ("model.architecture.hidden_size", -256, "model.architecture", "hidden_size is -256"),
        ("model.architecture.num_experts_per_tok", 9, "model.architecture", "<= num_local"),
        ("model.architecture.num_local_experts", 0, "model.architecture", ">= 1"),
        ("engine.host", "0.0.0.0", "engine", "allow_remote_host: true"),
    ],
)
def test_every_count_limit_and_shape_is_checked_at_load(
    write_profile, local_profile_raw, field, value, where, allowed
):
    raw = patched(local_profile_raw, field, value)
    path = write_profile({k: raw[k] for k in ("experiments", "model", "engine")})
    with pytest.raises(ArtifactError) as err:
        load_profile(path)
    message = str(err.value)
    assert message.startswith(f"{path}:field '") and where in message and allowed in message
    shown = value[0] if isinstance(value, list) and value else value
    assert repr(shown) in message
    assert "\n" not in message


def test_remote_host_needs_the_documented_flag(write_profile, local_profile_raw):
    engine = dict(local_profile_raw["engine"], host="0.0.0.0", allow_remote_host=True)
    assert load_profile(write_profile({"engine": engine})).engine.host == "0.0.0.0"


@pytest.mark.parametrize("name", ["../../../victim", "a/b", "..", ".hidden", "x..y", ""])
def test_mode_names_are_safe_folder_names(write_profile, local_profile_raw, name):
    modes = {name: local_profile_raw["modes"]["eager"]}
    experiments = patched(local_profile_raw["experiments"], "imbalance.modes", [name])
    experiments["config_sweep"]["modes"] = [name]
    with pytest.raises(ArtifactError, match=f"field 'modes': mode name {name!r} is not allowed"):
        load_profile(write_profile({"modes": modes, "experiments": experiments}))


@pytest.mark.parametrize("name", ["gpu", "perlmutter"])
def test_gpu_profiles_repeat_over_at_least_three_server_launches(name):
    """Issue 19: repetitions are independent server launches, at least 3 per mode and
    configuration on the GPU profiles (the local profile keeps one: its start-up cost)."""
    experiments = load_profile(name).experiments
    for exp in (experiments.config_sweep, experiments.eplb_ablation, experiments.imbalance):
        if exp is not None and exp.enabled:
            assert exp.bench.launches >= 3
    assert load_profile("local").experiments.imbalance.bench.launches == 1


def perlmutter_with(write_profile, mutate) -> str:
    import yaml

    from artifact.config.profiles import profile_dir

    raw = yaml.safe_load((profile_dir() / "perlmutter.yaml").read_text())
    mutate(raw)
    return write_profile(raw, name="perlmutter")


def test_balancedness_logging_is_no_mode_setting(write_profile):
    """It would reach every server of the mode, timed and profiled: refused, naming the field
    and the diagnostic pass that logs it instead."""

    def flag_on_the_mode(raw):
        raw["modes"]["all2all-eplb"]["eplb"]["log_balancedness"] = True

    path = perlmutter_with(write_profile, flag_on_the_mode)
    with pytest.raises(ArtifactError) as err:
        load_profile(path)
    message = str(err.value)
    assert "\n" not in message and "field 'modes.all2all-eplb.eplb'" in message
    assert "log_balancedness is no mode setting" in message
    assert "experiments.eplb_ablation.balancedness_pass" in message


def test_the_balancedness_pass_needs_an_eplb_arm_and_vllm(write_profile):
    assert load_profile("perlmutter").experiments.eplb_ablation.balancedness_pass

    def no_eplb_arm(raw):
        raw["experiments"]["eplb_ablation"]["modes"] = ["all2all-v011"]

    with pytest.raises(ArtifactError, match="balancedness_pass: none of .* has enable_eplb"):
        load_profile(perlmutter_with(write_profile, no_eplb_arm))
    local = {"experiments": {"eplb_ablation": {"modes": [], "balancedness_pass": True}}}
    with pytest.raises(ArtifactError, match="balancedness_pass: EPLB balancedness is logged by"):
        load_profile(write_profile(local))
