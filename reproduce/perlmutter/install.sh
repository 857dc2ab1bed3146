#!/usr/bin/env bash
# Install on a Perlmutter login node (needs the network; not a batch job):
#   1. a host Python environment with the artifact (orchestration only, no torch);
#   2. the install stage, `python -m artifact install` (artifact/engines/vllm/hpc_install.py): the images
#      the profile's modes name, built with podman-hpc (or pulled with IMAGE_PULL=registry/path)
#      and `podman-hpc migrate`d; the Mixtral weights downloaded inside the image into the
#      profile's scratch Hugging Face cache with the token from the environment (HF_TOKEN;
#      passed by name, never printed); records in $RUN_DIR/install/. It resumes: images and
#      weights already there are reused.
# Usage: reproduce/perlmutter/install.sh [--force]
# shellcheck source=reproduce/perlmutter/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

mkdir -p "$SCRATCH_ROOT" "$RUN_DIR"
if [[ ! -x "$HOST_VENV/bin/python" ]]; then
    log "creating the host environment in $HOST_VENV"
    module load python 2>/dev/null || true
    python3 -m venv "$HOST_VENV"
fi
"$HOST_VENV/bin/python" -m pip install --quiet --upgrade pip
"$HOST_VENV/bin/python" -m pip install --quiet \
    --constraint "$ARTIFACT_ROOT/reproduce/constraints/hpc.txt" -e "${ARTIFACT_ROOT}[hpc]" nox

cd "$ARTIFACT_ROOT"
"$HOST_VENV/bin/python" -m artifact install --profile "$PROFILE" --run-dir "$RUN_DIR" "$@"
log "install done: run dir $RUN_DIR (install/images.json, install/model.json)"
