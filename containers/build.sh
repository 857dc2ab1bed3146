#!/usr/bin/env bash
# Build the moe-artifact image and record its digest, size and the versions inside it.
#
#   containers/build.sh --variant gpu --vllm-ref 2f13319f47eb9a78b471c5ced0fcf90862cd16a2 \
#       --tag moe-artifact-vllm:2f13319f [--tool podman-hpc] [--info FILE]
#   containers/build.sh --variant gpu --vllm-ref v0.11.0 --tag moe-artifact-vllm:v0.11.0
#   containers/build.sh --variant cpu --base localhost/moe-artifact-base:bookworm \
#       --tag moe-artifact:cpu --tool podman --isolation chroot --wheels /opt/wheels \
#       --extra-ca /etc/ssl/certs/ca-certificates.crt
#   containers/build.sh --tool apptainer --variant gpu --vllm-ref v0.11.0 --tag moe-artifact-vllm_v0.11.0.sif
#
# --label KEY=VALUE (repeatable; podman, podman-hpc and buildah) labels the image: the install
# stage labels it moe-artifact.plugin-source=<hash of the plugin's source files> and rebuilds
# an image whose label differs from the checkout's.
# podman, podman-hpc and buildah build containers/Containerfile; apptainer builds
# containers/moe-artifact.def from a clean staged copy of the repository (both files come
# from containers/render.py and run containers/install.sh the same way).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
tool=podman
variant=gpu
vllm_ref=2f13319f47eb9a78b471c5ced0fcf90862cd16a2
base=""
tag=""
info=""
extra_ca=""
wheels=""
isolation=""
no_cache=()
labels=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tool) tool=$2; shift 2 ;;
        --variant) variant=$2; shift 2 ;;
        --vllm-ref) vllm_ref=$2; shift 2 ;;
        --base) base=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --info) info=$2; shift 2 ;;
        --extra-ca) extra_ca=$2; shift 2 ;;
        --wheels) wheels=$2; shift 2 ;;
        --isolation) isolation=$2; shift 2 ;;
        --no-cache) no_cache=(--no-cache); shift ;;
        --label) labels+=(--label "$2"); shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[[ -n "$tag" ]] || { echo "--tag is required" >&2; exit 2; }

args=(--build-arg "VARIANT=$variant" --build-arg "VLLM_REF=$vllm_ref")
[[ -z "$base" ]] || args+=(--build-arg "BASE_IMAGE=$base")
start=$(date +%s)

if [[ "$tool" == apptainer ]]; then
    [[ ${#labels[@]} -eq 0 ]] || { echo "--label: podman, podman-hpc and buildah builds only" >&2; exit 2; }
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    tar -C "$root" --exclude-vcs --exclude-from="$here/containerignore" -cf - . | tar -C "$stage" -xf -
    apptainer_args=(--build-arg "VARIANT=$variant" --build-arg "VLLM_REF=$vllm_ref")
    [[ -z "$base" ]] || apptainer_args+=(--build-arg "BASE_IMAGE=$base")
    (cd "$stage" && apptainer build --force "${apptainer_args[@]}" "$OLDPWD/$tag" containers/moe-artifact.def)
    size=$(stat -c %s "$tag")
    digest="sha256:$(sha256sum "$tag" | cut -d' ' -f1)"
    image_info=$(apptainer exec "$tag" cat /opt/moe-artifact/image-info.json)
else
    if [[ -n "$extra_ca" ]]; then
        args+=(--volume "$extra_ca:/run/moe-artifact-ca.crt:ro" --build-arg "EXTRA_CA=/run/moe-artifact-ca.crt")
    fi
    if [[ -n "$wheels" ]]; then
        args+=(--volume "$wheels:/run/moe-artifact-wheels:ro" --build-arg "WHEELS=/run/moe-artifact-wheels")
    fi
    [[ -z "$isolation" ]] || args+=(--isolation "$isolation")
    case "$tool" in
        buildah) build=(buildah bud) ;;
        *) build=("$tool" build) ;;
    esac
    "${build[@]}" "${no_cache[@]}" "${args[@]}" "${labels[@]}" --ignorefile "$here/containerignore" -f "$here/Containerfile" -t "$tag" "$root"
    inspect=podman
    [[ "$tool" == podman-hpc ]] && inspect=podman-hpc
    [[ "$tool" == buildah ]] && inspect=buildah
    size=$("$inspect" image inspect --format '{{.Size}}' "$tag" 2>/dev/null || echo null)
    digest=$("$inspect" image inspect --format '{{.Digest}}' "$tag" 2>/dev/null || echo unknown)
    if command -v buildah >/dev/null && [[ "$tool" != podman-hpc ]]; then
        ctr=$(buildah from --pull=never "$tag")
        image_info=$(buildah run --isolation "${isolation:-chroot}" "$ctr" -- cat /opt/moe-artifact/image-info.json)
        buildah rm "$ctr" >/dev/null
    else
        image_info=$("$tool" run --rm "$tag" cat /opt/moe-artifact/image-info.json)
    fi
fi

seconds=$(($(date +%s) - start))
record=$(printf '{"tag": "%s", "tool": "%s", "digest": "%s", "size_bytes": %s, "build_seconds": %s, "image": %s}\n' \
    "$tag" "$tool" "$digest" "$size" "$seconds" "$image_info")
if [[ -n "$info" ]]; then
    mkdir -p "$(dirname "$info")"
    printf '%s\n' "$record" >"$info"
fi
printf '%s\n' "$record"
echo "built $tag with $tool in ${seconds}s, $size bytes" >&2
