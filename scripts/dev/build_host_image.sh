#!/usr/bin/env bash
# Build the Debian 12 image that Molecule runs as "hosts": scripts/dev/build_host_image.sh [IMAGE]
#
# No registry is reachable here, so the image is made from scratch: debootstrap (minbase + python3 and what
# Ansible and the roles need) from the host's own Debian mirror, the host's extra CA certificates trusted
# (HTTPS inside fails without them), the host's apt sources copied in, then `podman import`.
# Exits at once when IMAGE exists and trusts the same CA certificates as this machine (one of them is made at
# boot, so an image from an earlier boot is rebuilt). Needs root and the apt packages debootstrap and podman.
set -euo pipefail

IMAGE=${1:-localhost/imagenet-fleet-debian12}
SUITE=bookworm
PACKAGES=python3,python3-venv,python3-apt,ca-certificates,sudo,procps,iproute2,curl
CA_DIR=/usr/local/share/ca-certificates
CA_LABEL=imagenet-fleet.ca-sha256

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
# shellcheck source=scripts/dev/podman_env.sh
. "$REPO/scripts/dev/podman_env.sh"

die() { echo "error: $1 (fix: $2)" >&2; exit 2; }

# A fingerprint of the extra CA certificates the image must trust.
ca_sha256() {
    if [ -d "$CA_DIR" ]; then
        (cd "$CA_DIR" && find . -type f -name '*.crt' -print0 | LC_ALL=C sort -z | xargs -0r sha256sum) | sha256sum | cut -d' ' -f1
    else
        echo none
    fi
}
want_ca=$(ca_sha256)

OLD_ID=
if podman image exists "$IMAGE"; then
    OLD_ID=$(podman image inspect --format '{{.Id}}' "$IMAGE")
    have_ca=$(podman image inspect --format "{{ index .Labels \"$CA_LABEL\" }}" "$IMAGE" 2>/dev/null || true)
    if [ "$have_ca" = "$want_ca" ]; then
        echo "image $IMAGE exists"
        exit 0
    fi
    echo "image $IMAGE trusts other CA certificates than this machine: rebuilding it" >&2
fi

[ "$(id -u)" -eq 0 ] || die "debootstrap needs root" "run as root (sudo $0)"
command -v debootstrap >/dev/null || die "debootstrap is not installed" "apt-get install -y debootstrap"

# The mirror: the first deb URI serving $SUITE in the host's deb822 sources, else in sources.list,
# else Debian's CDN.
mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk -v suite="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }   # one paragraph = one deb822 stanza
            {
                types = ""; uris = ""; suites = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^Types:/)  types = $i
                    if ($i ~ /^URIs:/)   uris = $i
                    if ($i ~ /^Suites:/) suites = $i
                }
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && (" " suites " ") ~ ("[ \t]" suite "[ \t]")) {
                    sub(/^URIs:[ \t]*/, "", uris); split(uris, u, /[ \t]+/); print u[1]; exit
                }
            }' "$f")
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
    if [ -f /etc/apt/sources.list ]; then
        uri=$(awk -v suite="$SUITE" '$1 == "deb" {
                  i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                  if ($(i + 1) == suite) { print $i; exit } }' /etc/apt/sources.list)
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    fi
    echo http://deb.debian.org/debian
}

start=$SECONDS
MIRROR=$(mirror)
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/imagenet-fleet-image.XXXXXX")
ROOTFS=$WORK/rootfs
LOG=$WORK/debootstrap.log
cleanup() {
    # debootstrap mounts /proc and /sys inside the rootfs; never let rm walk into a live mount.
    local m
    for m in $(awk -v d="$WORK/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# Downloaded .debs are kept for the next build on this machine (they do not depend on the boot).
CACHE="$REPO/.cache/debootstrap"
mkdir -p "$CACHE"
echo "debootstrap $SUITE from $MIRROR into $ROOTFS" >&2
if ! debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$CACHE" \
        "$SUITE" "$ROOTFS" "$MIRROR" > "$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    die "debootstrap of $SUITE from $MIRROR failed (log above)" "check that the mirror answers: curl -sI $MIRROR/dists/$SUITE/Release"
fi

# Trust the same extra CA certificates as the host.
if [ -d "$CA_DIR" ]; then
    mkdir -p "$ROOTFS$CA_DIR"
    cp -a "$CA_DIR/." "$ROOTFS$CA_DIR/"
fi
chroot "$ROOTFS" update-ca-certificates > "$LOG" 2>&1 \
    || { cat "$LOG" >&2; die "update-ca-certificates failed inside the image" "check the certificates in $CA_DIR"; }

# apt inside uses the host's sources (same mirror, same snapshot), their keyrings, and the host's Acquire:: settings.
rm -f "$ROOTFS/etc/apt/sources.list" "$ROOTFS"/etc/apt/sources.list.d/*
[ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$ROOTFS/etc/apt/"
for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && cp "$f" "$ROOTFS/etc/apt/sources.list.d/"
done
for key in $(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
             | grep -oiE 'signed-by[:=][[:space:]]*/[^] [:space:]]+' | sed -E 's/^[^/]*//' | sort -u); do
    if [ -f "$key" ] && [ ! -e "$ROOTFS$key" ]; then
        mkdir -p "$ROOTFS$(dirname "$key")" && cp "$key" "$ROOTFS$key"
    fi
done
for f in /etc/apt/apt.conf.d/*; do
    [ -f "$f" ] && grep -q '^[[:space:]]*Acquire::' "$f" && cp "$f" "$ROOTFS/etc/apt/apt.conf.d/"
done

# Smaller image: no .debs, no package lists (a role that needs apt runs `apt-get update`).
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* 2>/dev/null || true

tar -C "$ROOTFS" --numeric-owner -c . \
    | podman import --quiet --change 'CMD ["/bin/sleep","infinity"]' --change "LABEL $CA_LABEL=$want_ca" - "$IMAGE" >/dev/null
# The image it replaces keeps no tag: drop it unless a container still uses it.
[ -z "$OLD_ID" ] || podman rmi "$OLD_ID" >/dev/null 2>&1 || true
echo "built $IMAGE in $((SECONDS - start)) s"
