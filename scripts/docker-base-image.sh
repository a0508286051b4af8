#!/usr/bin/env bash
# Make sure the base image debian:bookworm-slim exists in the local Docker daemon.
#
# Real users simply `docker pull debian:bookworm-slim`. Machines without an image
# registry (such as the project's CI) build an equivalent image from Debian's
# mirror with debootstrap and `docker import`. Idempotent: does nothing when the
# image is already present.
#
# The mirror is the one apt on this machine already uses: the first Debian source of
# the suite's `main` component, read in apt's order from $APT_SOURCES_DIR/sources.list
# (one-line format: `deb [options] URI SUITE COMPONENT...`), then the files of
# sources.list.d/ by name: *.list (one-line) and *.sources (deb822: `Types:`, `URIs:`,
# `Suites:`, `Components:`, `Enabled:`). A Debian source is a `deb` entry of exactly
# $SUITE (not $SUITE-security or -updates) with `main`, whose URI's path ends in /debian
# or whose host is under debian.org (never debian-security): a third-party repository
# serving `bookworm main` (packages.sury.org/php, packages.microsoft.com/debian/12/prod)
# is not a Debian mirror.
#
# Environment:
#   BASE_IMAGE      image to ensure           (default debian:bookworm-slim)
#   SUITE           Debian suite              (default bookworm)
#   DEBIAN_MIRROR   mirror for debootstrap    (default: apt's, as above)
#   APT_SOURCES_DIR where apt's sources are   (default /etc/apt)
#
# `docker-base-image.sh --mirror` only prints the mirror it would use (or fails saying
# to set DEBIAN_MIRROR), without Docker or debootstrap.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
SUITE=${SUITE:-bookworm}
APT_SOURCES_DIR=${APT_SOURCES_DIR:-/etc/apt}

# One apt sources file ($1: list or sources) on stdin: print the first Debian mirror
# of $SUITE main it names, or nothing.
read -r -d '' APT_SOURCES_AWK <<'AWK' || true
function debian(uri,    rest, host, path, n, seg, i) {
    if (uri !~ /^(https?|file):/) return 0
    rest = uri; sub(/^[a-z]+:(\/\/)?/, "", rest)
    host = rest; sub(/\/.*/, "", host); sub(/:[0-9]+$/, "", host); sub(/^.*@/, "", host)
    path = substr(rest, length(host) + 1)
    n = split(path, seg, "/")
    for (i = 1; i <= n; i++) if (seg[i] == "debian-security") return 0
    if (host == "security.debian.org") return 0
    while (n > 0 && seg[n] == "") n--
    return seg[n] == "debian" || host == "debian.org" || host ~ /\.debian\.org$/
}
function has(list, word,    n, w, i) {
    n = split(list, w, /[ \t]+/)
    for (i = 1; i <= n; i++) if (w[i] == word) return 1
    return 0
}
function found(uri) { sub(/\/+$/, "", uri); print uri; done = 1; exit }
function stanza(    n, uris, i) {
    if (tolower(field["enabled"]) != "no" && has(field["types"], "deb") \
        && has(field["suites"], suite) && has(field["components"], "main")) {
        n = split(field["uris"], uris, /[ \t]+/)
        for (i = 1; i <= n; i++) if (uris[i] != "" && debian(uris[i])) found(uris[i])
    }
    delete field; key = ""
}
# One-line format: `deb [opt=value ...] URI SUITE COMPONENT...`, `#` starts a comment.
format == "list" {
    line = $0; sub(/#.*/, "", line)
    if (line !~ /^[ \t]*deb[ \t]/) next
    sub(/^[ \t]*deb[ \t]+/, "", line)
    if (line ~ /^\[/) { if (!sub(/^\[[^]]*\][ \t]*/, "", line)) next }
    n = split(line, word, /[ \t]+/)
    if (n < 3 || word[2] != suite || !debian(word[1])) next
    for (i = 3; i <= n; i++) if (word[i] == "main") found(word[1])
    next
}
# deb822: stanzas of `Key: value` (keys in any case), continuation lines start with
# blanks, `#` lines are comments, blank lines end a stanza.
format == "sources" && /^[ \t]*$/ { stanza(); next }
format == "sources" && /^#/ { next }
format == "sources" && /^[ \t]/ { if (key != "") field[key] = field[key] " " $0; next }
format == "sources" {
    key = tolower($0); sub(/:.*/, "", key)
    value = $0; sub(/^[^:]*:[ \t]*/, "", value)
    field[key] = value
}
END { if (format == "sources" && !done) stanza() }
AWK

# The first Debian mirror of suite $1 in the apt sources under directory $2, or nothing.
apt_mirror() {
    local suite=$1 dir=$2 file mirror
    local files=() LC_ALL=C  # file names sorted bytewise, as apt does
    [[ -f $dir/sources.list ]] && files+=("$dir/sources.list")
    # apt reads sources.list.d/ by file name, *.list and *.sources alike, and skips the rest.
    for file in "$dir"/sources.list.d/*; do
        [[ -f $file && $file =~ \.(list|sources)$ ]] && files+=("$file")
    done
    for file in "${files[@]}"; do
        [[ -r $file ]] || continue
        mirror=$(awk -v suite="$suite" -v format="${file##*.}" "$APT_SOURCES_AWK" <"$file")
        if [[ -n $mirror ]]; then
            echo "$mirror"
            return
        fi
    done
}

# DEBIAN_MIRROR if set, else apt's; none: one line saying to set it, and exit 1.
debian_mirror() {
    local mirror=${DEBIAN_MIRROR:-}
    if [[ -z $mirror ]]; then
        mirror=$(apt_mirror "$SUITE" "$APT_SOURCES_DIR")
    fi
    if [[ -z $mirror ]]; then
        echo "docker-base-image: no Debian mirror of $SUITE main in $APT_SOURCES_DIR/sources.list or" \
             "$APT_SOURCES_DIR/sources.list.d/: set DEBIAN_MIRROR (e.g. DEBIAN_MIRROR=http://deb.debian.org/debian)" >&2
        exit 1
    fi
    echo "$mirror"
}

if [[ ${1-} == --mirror ]]; then
    debian_mirror
    exit 0
fi

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "docker-base-image: $BASE_IMAGE already present"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "docker-base-image: debootstrap is missing (apt-get install -y debootstrap)" >&2
    exit 1
fi

DEBIAN_MIRROR=$(debian_mirror)

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
