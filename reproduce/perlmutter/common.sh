#!/usr/bin/env bash
# Shared settings for the Perlmutter scripts (sourced, not run). Every path can be overridden
# from the environment; nothing here prints a secret.
# shellcheck disable=SC2034  # variables are used by the scripts that source this file

set -euo pipefail

ARTIFACT_ROOT=${ARTIFACT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
PROFILE=${MOE_ARTIFACT_PROFILE:-perlmutter}
SCRATCH_ROOT=${MOE_ARTIFACT_SCRATCH:-${SCRATCH:?SCRATCH is not set (run on Perlmutter)}/moe-artifact}
RUN_DIR=${MOE_ARTIFACT_RUN_DIR:-$SCRATCH_ROOT/runs/$PROFILE}
HOST_VENV=${MOE_ARTIFACT_VENV:-$SCRATCH_ROOT/venv}
export HF_HOME=${HF_HOME_OVERRIDE:-$SCRATCH_ROOT/hf}
# Images, vLLM builds and the model come from the profile (the install stage reads them).

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

activate_host_env() {
    if [[ ! -x "$HOST_VENV/bin/python" ]]; then
        log "no host environment at $HOST_VENV: run reproduce/perlmutter/install.sh first"
        return 1
    fi
    # shellcheck source=/dev/null
    source "$HOST_VENV/bin/activate"
}
