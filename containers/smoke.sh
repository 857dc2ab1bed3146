#!/usr/bin/env bash
# Run `nox --no-venv -s reproduce` inside the CPU image (buildah run: plain `podman run`
# cannot set its rlimits on some hosts). The run directory is bound to OUT on the host.
#   containers/smoke.sh TAG OUT [NOX_ARGS...]
set -euo pipefail

tag=${1:?usage: smoke.sh TAG OUT}
out=${2:?usage: smoke.sh TAG OUT}
shift 2
mkdir -p "$out"
ctr=$(buildah from --pull=never "$tag")
trap 'buildah rm "$ctr" >/dev/null' EXIT
buildah run --isolation chroot -v "$(cd "$out" && pwd):/opt/moe-artifact/src/runs" "$ctr" -- \
    bash -c 'cd /opt/moe-artifact/src && nox --no-venv -s reproduce "$@"' smoke "$@"
