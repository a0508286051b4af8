#!/bin/sh
# Make sure the base image debian:bookworm-slim exists in the local Docker daemon.
#
# Real users simply `docker pull debian:bookworm-slim`. Machines without an image
# registry (such as the project's CI) build an equivalent image from Debian's
# mirror with debootstrap and `docker import`. Idempotent: does nothing when the
# image is already present.
#
# Environment:
#   BASE_IMAGE    image to ensure           (default debian:bookworm-slim)
#   SUITE         Debian suite              (default bookworm)
#   DEBIAN_MIRROR mirror for debootstrap    (default http://deb.debian.org/debian)
set -eu

BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
SUITE=${SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "docker-base-image: $BASE_IMAGE already present"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "docker-base-image: debootstrap is missing (apt-get install -y debootstrap)" >&2
    exit 1
fi

tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/docker-base-image.XXXXXX")
cleanup() {
    # debootstrap leaves root-owned files and possibly mounts (proc, sys) behind.
    for m in proc sys dev/pts dev; do
        if mountpoint -q "$tmpdir/$m" 2>/dev/null; then umount -l "$tmpdir/$m" || true; fi
    done
    rm -rf "$tmpdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "docker-base-image: building $BASE_IMAGE with debootstrap ($SUITE from $DEBIAN_MIRROR)"
debootstrap --variant=minbase "$SUITE" "$tmpdir/rootfs" "$DEBIAN_MIRROR" >"$tmpdir/debootstrap.log" 2>&1 || {
    tail -n 30 "$tmpdir/debootstrap.log" >&2
    exit 1
}
# Keep the image small and free of host-specific state.
rm -rf "$tmpdir/rootfs/var/lib/apt/lists/"* "$tmpdir/rootfs/var/cache/apt/archives/"*.deb \
       "$tmpdir/rootfs/var/log/"*.log "$tmpdir/rootfs/debootstrap" 2>/dev/null || true
tar -C "$tmpdir/rootfs" -c . | docker import -c 'CMD ["bash"]' - "$BASE_IMAGE"
echo "docker-base-image: imported $BASE_IMAGE"
