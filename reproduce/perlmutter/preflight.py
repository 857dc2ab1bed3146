"""The preflight job: 20 minutes on one node that say whether the full run will work.

    python reproduce/perlmutter/preflight.py --profile perlmutter [--run-dir DIR] [--submit]
    (nox -s preflight -- --profile perlmutter)

Writes, into the run directory (default $SCRATCH/moe-artifact/runs/<profile>-preflight):

- `<profile>-preflight.yaml`: the profile with a small seeded Mixtral-architecture model (8 experts,
  top-2, GQA; MODEL, built on the node from a fixed seed with the real tokenizer: no download)
  in place of Mixtral-8x7B, every mode and image of the profile unchanged (TP=4, DP=4 + EP,
  EPLB off and on on v0.11.0), each experiment cut to one point, a few prompts and one
  repetition, the ablation's profiled pass kept;
- `preflight.sbatch`: one Slurm job (one GPU node, --time=00:20:00) that builds the model
  inside the first image (the host environment has no torch), then runs every stage on the
  host as the experiment and finish jobs do: datasets, serve (each mode's server from the real
  image, its log checked against the mode: provenance), bench (routing captured and checked
  against the token totals, the nsys pass), imbalance (`nsys stats` in the image, the EPLB
  table), check (the claims table: a toy model's numbers do not meet Mixtral's claims, so its
  verdicts are not the test; every stage completing is) and plots. It prints each step's
  seconds and ends with PREFLIGHT OK or the failing step.

--submit runs sbatch with the profile's account; otherwise the sbatch command is printed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_slurm import account  # noqa: E402

from artifact.config.profiles import load_profile  # noqa: E402
from artifact.core.errors import ArtifactError  # noqa: E402

TIME_LIMIT = "00:20:00"
# TP=4 and EP=4 need heads, key-value heads and experts that 4 ranks divide.
MODEL = {
    "name": "preflight-mixtral",
    "source": "seeded",
    "seed": 1234,
    "dtype": "bfloat16",
    "max_model_len": 1024,
    "architecture": {
        "vocab_size": 32000,
        "hidden_size": 512,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1.0e-5,
        "rope_theta": 1000000.0,
    },
}
BENCH = {"request_rate": "inf", "output_len": 16, "warmup_requests": 1, "repeat": 1}
# The study's median start-up of a Mixtral-8x7B server is 58-71 s (artifact/stages/plan.py),
# most of it loading 87 GB of weights; a small model's start is CUDA, NCCL and the workers.
EXPECTED_START_S = 45
STAGES = ("datasets", "serve", "bench", "imbalance", "check", "plots")


def preflight_profile(raw: dict, name: str) -> dict:
    raw = dict(raw, name=f"{name}-preflight", model=MODEL)
    raw["description"] = f"preflight of {name}: a small seeded Mixtral, every mode, minutes"
    raw["engine"] = {k: v for k, v in raw["engine"].items() if k != "hf_home"}
    raw["datasets"] = dict(raw.get("datasets", {}), count=4, prompts_per_dataset=4)
    exps = raw["experiments"]
    if "config_sweep" in exps:
        exps["config_sweep"].update(
            max_num_seqs=[8],
            max_num_batched_tokens=[2048],
            fixed_max_num_seqs=8,
            fixed_max_num_batched_tokens=2048,
            prompts=8,
            bench=BENCH,
        )
    if "eplb_ablation" in exps:
        exps["eplb_ablation"].update(prompts=8, bench=BENCH)
    if "imbalance" in exps:
        exps["imbalance"].update(datasets=2, bench=BENCH)
    raw["expected_results"] = str(ROOT / raw["expected_results"])
    raw.pop("slurm", None)
    return raw


def server_starts(profile) -> int:
    """Servers the preflight starts: one per mode (serve), one per unit, one per nsys pass,
    one per EPLB arm's balancedness pass."""
    exps = profile.experiments
    modes = set()
    starts = 0
    for exp in (exps.config_sweep, exps.eplb_ablation, exps.imbalance):
        if exp is None or not exp.enabled:
            continue
        modes.update(exp.modes)
        starts += len(exp.modes) * (2 if getattr(exp, "nsys", False) else 1)
        if getattr(exp, "balancedness_pass", False):
            starts += sum(profile.modes[m].enable_eplb for m in exp.modes)
    return starts + len(modes)


def job_script(profile_path: Path, run_dir: Path, image: str, launcher: str) -> str:
    q = shlex.quote
    build = [
        launcher, "run", "--rm", "--gpu", "-v", f"{run_dir}:{run_dir}", "-v", f"{ROOT}:{ROOT}",
        "-e", f"MOE_ARTIFACT_CACHE={run_dir}/cache", "-w", str(ROOT), image,
        "python", "-m", "artifact", "install", "--profile", str(profile_path),
        "--run-dir", str(run_dir),
    ]  # fmt: skip
    return f"""#!/usr/bin/env bash
# Generated by reproduce/perlmutter/preflight.py: the preflight of {q(str(profile_path))}.
#SBATCH --job-name=moe-preflight
#SBATCH --constraint=gpu
#SBATCH --nodes=1
#SBATCH --gpus-per-node=4
#SBATCH --exclusive
#SBATCH --time={TIME_LIMIT}
#SBATCH --output=%x-%j.out
set -euo pipefail
export ARTIFACT_ROOT={q(str(ROOT))}
# shellcheck source=/dev/null
source "$ARTIFACT_ROOT/reproduce/perlmutter/common.sh"
activate_host_env
export MOE_ARTIFACT_CACHE={q(str(run_dir / "cache"))}
export NCCL_DEBUG=${{NCCL_DEBUG:-WARN}}
unset MOE_ARTIFACT_EXPERIMENTS
run_dir={q(str(run_dir))}
profile={q(str(profile_path))}
start=$(date +%s)
step() {{
    local name=$1 t0=$SECONDS code=0
    shift
    log "preflight: $name"
    "$@" || code=$?
    log "preflight: $name: exit $code after $((SECONDS - t0)) s"
    return "$code"
}}
fail() {{ log "PREFLIGHT FAILED at $1 after $(($(date +%s) - start)) s"; exit 1; }}
cd "$ARTIFACT_ROOT"
# the seeded model, built on the node inside the image (the host environment has no torch)
step install {" ".join(q(a) for a in build)} || fail install
for stage in {" ".join(STAGES)}; do
    code=0
    step "$stage" python -m artifact "$stage" --profile "$profile" --run-dir "$run_dir" || code=$?
    # check exits 1 when a claim FAILs: a toy model's numbers are not Mixtral's
    if [[ $code -ne 0 && ! ( $stage == check && $code -eq 1 ) ]]; then
        fail "$stage"
    fi
done
log "PREFLIGHT OK in $(($(date +%s) - start)) s: claims table in $run_dir/check/claims.md"
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="perlmutter")
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--submit", action="store_true", help="sbatch it (needs the account)")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.profile)
        if profile.engine.kind != "vllm" or profile.engine.image is None:
            raise ArtifactError(
                "the preflight serves the profile's vLLM images: engine.image is not set",
                path=profile.path,
                where="field 'engine.image'",
            )
        run_dir = args.run_dir
        if run_dir is None:
            if not os.environ.get("SCRATCH"):
                raise ArtifactError("give --run-dir, or run where $SCRATCH is set (Perlmutter)")
            run_dir = Path(
                os.environ["SCRATCH"], "moe-artifact", "runs", f"{profile.name}-preflight"
            )
        run_dir = run_dir.resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        raw = yaml.safe_load(profile.path.read_text())
        profile_path = run_dir / f"{profile.name}-preflight.yaml"
        profile_path.write_text(yaml.safe_dump(preflight_profile(raw, profile.name)))
        pre = load_profile(profile_path)
        script = run_dir / "preflight.sbatch"
        script.write_text(job_script(profile_path, run_dir, pre.engine.image, pre.engine.launcher))
        script.chmod(0o755)
        starts = server_starts(pre)
        sbatch = ["sbatch", f"--account={account(profile)}", str(script)] if args.submit else []
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {profile_path} and {script}")
    print(
        f"expected: {starts} server starts at about {EXPECTED_START_S} s each, "
        f"{starts * EXPECTED_START_S / 60:.0f} min in all, plus the model build and a few "
        f"seconds of requests per start: within the job's {TIME_LIMIT}"
    )
    if sbatch:
        return subprocess.run(sbatch, check=False).returncode
    print(f"submit: sbatch --account=<project> {shlex.quote(str(script))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
