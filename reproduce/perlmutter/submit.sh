#!/usr/bin/env bash
# Submit the perlmutter profile: one job per enabled experiment (account, QoS and time from
# the profile's `slurm` section), run one after another on the same run directory, then the
# analysis job. Prints the job ids.
# Usage: reproduce/perlmutter/submit.sh [EXPERIMENT...]   (default: every enabled one)
# shellcheck source=reproduce/perlmutter/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
activate_host_env

here=$(dirname "${BASH_SOURCE[0]}")
mapfile -t experiments < <(python "$here/profile_slurm.py" --profile "$PROFILE" experiments "$@")
if [[ ${#experiments[@]} -eq 0 ]]; then
    log "no enabled experiment to submit"
    exit 2
fi
export ARTIFACT_ROOT
dependency=()
ids=()
for experiment in "${experiments[@]}"; do
    mapfile -t args < <(python "$here/profile_slurm.py" --profile "$PROFILE" sbatch-args "$experiment")
    id=$(sbatch --parsable --export=ALL "${dependency[@]}" "${args[@]}" \
        --job-name="moe-$experiment" "$here/experiment.sbatch" "$experiment")
    log "submitted $experiment as job $id"
    ids+=("$id")
    dependency=("--dependency=afterany:$id")
done
account_args=()
mapfile -t account_args < <(python "$here/profile_slurm.py" --profile "$PROFILE" account-args)
id=$(sbatch --parsable --export=ALL "${account_args[@]}" "--dependency=afterany:${ids[-1]}" \
    "$here/finish.sbatch")
log "submitted the analysis as job $id"
printf '%s\n' "${ids[@]}" "$id"
