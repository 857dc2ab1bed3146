"""Slurm settings of a profile, printed one sbatch argument per line (for submit.sh).

    python profile_slurm.py --profile perlmutter experiments [NAME...]
    python profile_slurm.py --profile perlmutter sbatch-args EXPERIMENT
    python profile_slurm.py --profile perlmutter account-args

The account comes from the profile's `slurm.account` or $MOE_ARTIFACT_SLURM_ACCOUNT.
"""

from __future__ import annotations

import argparse
import os
import sys

from artifact.config.profiles import load_profile
from artifact.core.errors import ArtifactError

EXPERIMENTS = ("config_sweep", "eplb_ablation", "imbalance")


def enabled(profile) -> list[str]:
    out = []
    for name in EXPERIMENTS:
        exp = getattr(profile.experiments, name)
        if exp is not None and exp.enabled:
            out.append(name)
    return out


def account(profile) -> str:
    value = (profile.slurm.account if profile.slurm else None) or os.environ.get(
        "MOE_ARTIFACT_SLURM_ACCOUNT"
    )
    if not value:
        raise ArtifactError(
            "no Slurm account: set slurm.account or export MOE_ARTIFACT_SLURM_ACCOUNT",
            path=profile.path,
            where="field 'slurm.account'",
        )
    return value


def sbatch_args(profile, experiment: str) -> list[str]:
    slurm = profile.slurm
    if slurm is None:
        raise ArtifactError("the profile has no slurm section", path=profile.path)
    if experiment not in slurm.time:
        raise ArtifactError(
            f"no wall time for {experiment}", path=profile.path, where="field 'slurm.time'"
        )
    qos = slurm.qos_per_experiment.get(experiment, slurm.qos)
    return [
        f"--account={account(profile)}",
        f"--constraint={slurm.constraint}",
        f"--qos={qos}",
        f"--time={slurm.time[experiment]}",
        f"--nodes={slurm.nodes}",
        f"--gpus-per-node={slurm.gpus_per_node}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="perlmutter")
    sub = parser.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("experiments")
    e.add_argument("names", nargs="*")
    s = sub.add_parser("sbatch-args")
    s.add_argument("experiment", choices=EXPERIMENTS)
    sub.add_parser("account-args")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.profile)
        if args.cmd == "experiments":
            names = enabled(profile)
            unknown = [n for n in args.names if n not in names]
            if unknown:
                raise ArtifactError(f"not enabled experiments: {unknown}; enabled: {names}")
            lines = args.names or names
        elif args.cmd == "sbatch-args":
            lines = sbatch_args(profile, args.experiment)
        else:
            lines = [f"--account={account(profile)}"]
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
