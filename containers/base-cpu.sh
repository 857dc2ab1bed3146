#!/usr/bin/env bash
# A Debian base image made locally with debootstrap (no registry needed), imported into
# podman as localhost/moe-artifact-base:bookworm. Used by the CPU variant of the image.
#   containers/base-cpu.sh [--mirror URL] [--tag TAG]
set -euo pipefail

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
tag=localhost/moe-artifact-base:bookworm
while [[ $# -gt 0 ]]; do
    case "$1" in
        --mirror) mirror=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
if podman image exists "$tag"; then
    echo "$tag exists" >&2
    exit 0
fi
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" >&2
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" \
    >"$rootfs/etc/apt/sources.list"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
tar -C "$rootfs" -cf - . | podman import --change 'CMD ["/bin/bash"]' - "$tag" >&2
echo "$tag"
