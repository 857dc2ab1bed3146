#!/usr/bin/env bash
# Install stage on a Perlmutter login node (needs the network; not a batch job):
#   1. a host Python environment with the artifact (orchestration only, no torch);
#   2. the two vLLM images: built with podman-hpc (or pulled with IMAGE_PULL=registry/path),
#      then `podman-hpc migrate`d so compute nodes can run them; their digests and the
#      versions recorded inside them go to $RUN_DIR/install/images.json;
#   3. the Mixtral weights in the scratch Hugging Face cache ($HF_HOME), downloaded inside the
#      image with the token from the environment (HF_TOKEN; passed by name, never printed).
# Usage: reproduce/perlmutter/install.sh [--skip-images] [--skip-weights]
# shellcheck source=reproduce/perlmutter/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

skip_images=0
skip_weights=0
for arg in "$@"; do
    case "$arg" in
        --skip-images) skip_images=1 ;;
        --skip-weights) skip_weights=1 ;;
        *) log "unknown argument: $arg"; exit 2 ;;
    esac
done

mkdir -p "$SCRATCH_ROOT" "$HF_HOME" "$RUN_DIR/install"

if [[ ! -x "$HOST_VENV/bin/python" ]]; then
    log "creating the host environment in $HOST_VENV"
    module load python 2>/dev/null || true
    python3 -m venv "$HOST_VENV"
fi
"$HOST_VENV/bin/python" -m pip install --quiet --upgrade pip
"$HOST_VENV/bin/python" -m pip install --quiet -e "${ARTIFACT_ROOT}[hpc]" nox

build_image() {  # $1 tag, $2 vLLM ref
    local tag=$1 ref=$2
    if [[ -n "${IMAGE_PULL:-}" ]]; then
        podman-hpc pull "$IMAGE_PULL:${tag##*:}"
        podman-hpc tag "$IMAGE_PULL:${tag##*:}" "$tag"
    else
        "$ARTIFACT_ROOT/containers/build.sh" --tool podman-hpc --variant gpu --vllm-ref "$ref" \
            --tag "$tag" --info "$RUN_DIR/install/image-${tag##*:}.json"
    fi
    podman-hpc migrate "$tag"
}

if [[ $skip_images -eq 0 ]]; then
    build_image "$IMAGE_MAIN" "$VLLM_REF_MAIN"
    build_image "$IMAGE_EPLB" "$VLLM_REF_EPLB"
fi

if [[ $skip_weights -eq 0 ]]; then
    if [[ -z "${HF_TOKEN:-}" ]]; then
        log "HF_TOKEN is not set: Mixtral-8x7B-v0.1 is gated, export a token that may read it"
        exit 2
    fi
    log "downloading $MODEL_ID into $HF_HOME"
    podman-hpc run --rm -e HF_TOKEN -e "HF_HOME=$HF_HOME" -v "$HF_HOME:$HF_HOME" "$IMAGE_MAIN" \
        python -c 'import sys; from huggingface_hub import snapshot_download as s; s(sys.argv[1], allow_patterns=["*.json", "*.safetensors", "tokenizer.model"])' \
        "$MODEL_ID"
fi
log "install done: run dir $RUN_DIR, images $IMAGE_MAIN and $IMAGE_EPLB, weights in $HF_HOME"
