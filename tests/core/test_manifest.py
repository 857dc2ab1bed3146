"""The stage runner's contract: skip when unchanged, redo on --force or changed inputs,
resume after an interruption, refuse to run before upstream stages."""

import pytest

from artifact.config.profiles import EXPERIMENTS_ENV, load_profile, selected_experiments
from artifact.core.errors import ArtifactError
from artifact.core.io import atomic_write_text
from artifact.core.manifest import RunDir
from artifact.core.runner import Stage, StageContext, StageOutcome, run_stage


class Producer(Stage):
    name = "producer"
    profile_sections = ("datasets",)

    def __init__(self):
        self.calls = 0
        self.payload = "v1"

    def run(self, ctx):
        self.calls += 1
        atomic_write_text(ctx.stage_dir(self.name) / "out.txt", self.payload)
        return StageOutcome(summary="produced")


class Consumer(Stage):
    """Two units; fails after the first when `fail_after_first` is set (an interruption)."""

    name = "consumer"
    upstream = ("producer",)
    profile_sections = ("engine",)

    def __init__(self):
        self.units_run = []
        self.fail_after_first = False

    def run(self, ctx):
        out = ctx.stage_dir(self.name)
        for unit in ("a", "b"):
            target = out / f"{unit}.txt"
            if target.exists():
                continue  # finished unit from an interrupted run
            self.units_run.append(unit)
            atomic_write_text(target, unit)
            if self.fail_after_first:
                raise ArtifactError("server died")
        return StageOutcome(summary="consumed")


@pytest.fixture
def ctx(tmp_path):
    return StageContext(profile=load_profile("local"), run_dir=RunDir(tmp_path / "run"))


def test_complete_stage_is_skipped_and_force_redoes(ctx):
    stage = Producer()
    assert run_stage(stage, ctx) == "complete"
    record = ctx.run_dir.record("producer")
    assert record["status"] == "complete"
    assert record["outputs"] == {"producer/out.txt": record["outputs"]["producer/out.txt"]}
    for key in ("start", "end", "profile_hash", "packages", "git", "host", "inputs"):
        assert key in record
    assert record["packages"]["numpy"]
    assert run_stage(stage, ctx) == "skipped" and stage.calls == 1
    ctx.force = True
    assert run_stage(stage, ctx) == "complete" and stage.calls == 2


def test_changed_upstream_output_reruns_downstream_and_keeps_the_old_outputs(ctx, capsys):
    producer, consumer = Producer(), Consumer()
    run_stage(producer, ctx)
    run_stage(consumer, ctx)
    assert consumer.units_run == ["a", "b"]
    assert run_stage(consumer, ctx) == "skipped"
    producer.payload = "v2"
    ctx.force = True
    run_stage(producer, ctx)
    ctx.force = False
    capsys.readouterr()
    assert run_stage(consumer, ctx) == "complete"
    assert consumer.units_run == ["a", "b", "a", "b"]  # stale outputs set aside, all redone
    err = capsys.readouterr().err
    assert "consumer: input(s) changed since it ran: producer/out.txt (sha256 " in err
    (old,) = ctx.run_dir.path.glob("consumer.old-*")
    assert f"moved to {old}" in err
    assert sorted(p.name for p in old.iterdir()) == ["a.txt", "b.txt"]


def test_damaged_output_is_named_set_aside_and_redone_on_a_skip(ctx, capsys):
    consumer = Consumer()
    run_stage(Producer(), ctx)
    run_stage(consumer, ctx)
    (ctx.stage_dir("consumer") / "b.txt").write_text("")  # cut short
    (ctx.stage_dir("consumer") / "a.txt").unlink()
    capsys.readouterr()
    assert run_stage(consumer, ctx) == "complete"
    assert consumer.units_run == ["a", "b", "a", "b"]
    err = capsys.readouterr().err
    assert "consumer: 2 output file(s) missing or damaged since it completed: " in err
    assert "consumer/a.txt (missing), consumer/b.txt (sha256 " in err
    (old,) = ctx.run_dir.path.glob("consumer.old-*")
    assert [p.name for p in old.iterdir()] == ["b.txt"]
    assert run_stage(consumer, ctx) == "skipped"


def test_downstream_refuses_a_damaged_upstream(ctx):
    run_stage(Producer(), ctx)
    (ctx.stage_dir("producer") / "out.txt").write_text("v")
    with pytest.raises(ArtifactError, match=r"1 changed since 'producer' completed: producer/"):
        run_stage(Consumer(), ctx)


def test_changed_profile_section_reruns(ctx, write_profile, local_profile_raw):
    stage = Producer()
    run_stage(stage, ctx)
    datasets = dict(local_profile_raw["datasets"], seed=7)
    ctx.profile = load_profile(write_profile({"datasets": datasets}))
    assert run_stage(stage, ctx) == "complete" and stage.calls == 2
    engine = dict(local_profile_raw["engine"], startup_timeout_s=5)
    ctx.profile = load_profile(write_profile({"engine": engine, "datasets": datasets}))
    assert run_stage(stage, ctx) == "skipped"  # engine is not one of its sections


def test_interrupted_stage_resumes_at_first_unfinished_unit(ctx):
    run_stage(Producer(), ctx)
    consumer = Consumer()
    consumer.fail_after_first = True
    with pytest.raises(ArtifactError, match="server died"):
        run_stage(consumer, ctx)
    record = ctx.run_dir.record("consumer")
    assert record["status"] == "failed" and record["error"] == "server died"
    consumer.fail_after_first = False
    assert run_stage(consumer, ctx) == "complete"
    assert consumer.units_run == ["a", "b"]  # 'a' was kept, only 'b' ran again


def test_downstream_refuses_before_upstream(ctx):
    with pytest.raises(ArtifactError, match="needs stage 'producer' to be complete first"):
        run_stage(Consumer(), ctx)


def test_run_dir_is_tied_to_one_profile(ctx, write_profile):
    run_stage(Producer(), ctx)
    ctx.profile = load_profile(write_profile(name="other"))
    with pytest.raises(ArtifactError, match="belongs to profile 'local'"):
        run_stage(Producer(), ctx)


def test_corrupt_manifest_is_one_clear_error(ctx):
    ctx.run_dir.path.mkdir(parents=True)
    ctx.run_dir.manifest_path.write_text("{not json")
    with pytest.raises(ArtifactError, match=r"manifest.json: corrupt JSON .*; move it away"):
        run_stage(Producer(), ctx)


class PerExperiment(Stage):
    """A serve/bench-like stage: one unit per selected experiment, kept across selections."""

    name = "perexp"
    profile_sections = ("experiments",)
    per_experiment = True

    def __init__(self):
        self.units_run = []

    def clear(self, ctx, experiments):
        if experiments is None:
            return super().clear(ctx, None)
        for name in experiments:
            (ctx.stage_dir(self.name) / f"{name}.txt").unlink(missing_ok=True)

    def run(self, ctx):
        for name in selected_experiments(ctx.profile):
            target = ctx.stage_dir(self.name) / f"{name}.txt"
            if not target.exists():
                self.units_run.append(name)
                atomic_write_text(target, name)
        return StageOutcome(summary="ran")


class NeedsPerExperiment(Stage):
    name = "after"
    requires = ("perexp",)
    per_experiment = True

    def run(self, ctx):
        return StageOutcome(summary="ran")


def test_per_experiment_stage_runs_each_selection_once(ctx, monkeypatch):
    stage = PerExperiment()
    monkeypatch.setenv(EXPERIMENTS_ENV, "imbalance")
    assert run_stage(stage, ctx) == "complete"
    assert ctx.run_dir.record("perexp")["experiments"] == ["imbalance"]
    assert run_stage(stage, ctx) == "skipped"
    # The next job's experiment is not covered by the record: it runs, the first is kept.
    monkeypatch.setenv(EXPERIMENTS_ENV, "config_sweep")
    with pytest.raises(ArtifactError, match="needs stage 'perexp' to have run experiment"):
        run_stage(NeedsPerExperiment(), ctx)
    assert run_stage(stage, ctx) == "complete"
    assert stage.units_run == ["imbalance", "config_sweep"]
    assert ctx.run_dir.record("perexp")["experiments"] == ["config_sweep", "imbalance"]
    assert run_stage(NeedsPerExperiment(), ctx) == "complete"
    monkeypatch.delenv(EXPERIMENTS_ENV)
    assert run_stage(stage, ctx) == "skipped"  # every enabled experiment is done
    # --force with a selection redoes only the selected experiment.
    monkeypatch.setenv(EXPERIMENTS_ENV, "imbalance")
    ctx.force = True
    assert run_stage(stage, ctx) == "complete"
    assert stage.units_run == ["imbalance", "config_sweep", "imbalance"]
    assert (ctx.stage_dir("perexp") / "config_sweep.txt").exists()
    assert ctx.run_dir.record("perexp")["experiments"] == ["config_sweep", "imbalance"]


def test_experiment_selection_errors_name_the_valid_choices(ctx, monkeypatch):
    monkeypatch.setenv(EXPERIMENTS_ENV, "config_sweep, imbalance")
    assert selected_experiments(ctx.profile) == ["config_sweep", "imbalance"]
    monkeypatch.setenv(EXPERIMENTS_ENV, "imbalence")
    with pytest.raises(ArtifactError, match="valid names: config_sweep, eplb_ablation, imbalance"):
        run_stage(PerExperiment(), ctx)
    monkeypatch.setenv(EXPERIMENTS_ENV, "eplb_ablation")
    with pytest.raises(ArtifactError, match="does not run .*EPLB rearranges experts"):
        selected_experiments(ctx.profile)
    monkeypatch.delenv(EXPERIMENTS_ENV)
    assert selected_experiments(ctx.profile) == ["config_sweep", "imbalance"]
