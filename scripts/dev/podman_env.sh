# shellcheck shell=sh
# Source me (`. scripts/dev/podman_env.sh`, from bash or sh): makes rootful podman usable on the CI/dev VMs.
#
# Writes $REPO/.cache/podman/containers.conf and exports CONTAINERS_CONF pointing at it. Fixes, per
# /work/shared/notes/ENVIRONMENT.md ("Podman as Molecule hosts"):
#  - `crun: setrlimit RLIMIT_NOFILE: Operation not permitted`: root cannot raise limits here, so the
#    containers' default ulimits are capped at this shell's hard limits (nproc at most 32768);
#  - `crun: cgroups in hybrid mode not supported`: use runc with the cgroupfs manager;
#  - no journald/systemd: events go to a file.
# Idempotent (rewrites the file only when its content would change) and quiet.

if [ -n "${BASH_SOURCE:-}" ]; then
    _ifp_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
else
    # POSIX sh has no way to know the sourced file's path: fall back to the checkout around $PWD.
    _ifp_repo=$(git rev-parse --show-toplevel 2>/dev/null || pwd -P)
fi

_ifp_nofile=$(ulimit -Hn)
[ "$_ifp_nofile" = unlimited ] && _ifp_nofile=1048576
_ifp_nproc=$(ulimit -Hu 2>/dev/null || echo 32768)
if [ "$_ifp_nproc" = unlimited ] || [ "$_ifp_nproc" -gt 32768 ]; then _ifp_nproc=32768; fi

_ifp_dir="$_ifp_repo/.cache/podman"
_ifp_conf="$_ifp_dir/containers.conf"
_ifp_text="# Written by scripts/dev/podman_env.sh; do not edit (rewritten when the limits change).
[containers]
default_ulimits = [\"nofile=$_ifp_nofile:$_ifp_nofile\", \"nproc=$_ifp_nproc:$_ifp_nproc\"]

[engine]
runtime = \"runc\"
cgroup_manager = \"cgroupfs\"
events_logger = \"file\""

mkdir -p "$_ifp_dir"
if [ ! -f "$_ifp_conf" ] || [ "$(cat "$_ifp_conf")" != "$_ifp_text" ]; then
    # Atomic: a podman started meanwhile reads the old file or the new one, never half of one.
    printf '%s\n' "$_ifp_text" > "$_ifp_conf.tmp.$$" && mv -f "$_ifp_conf.tmp.$$" "$_ifp_conf"
fi
CONTAINERS_CONF="$_ifp_conf"
export CONTAINERS_CONF
unset _ifp_repo _ifp_nofile _ifp_nproc _ifp_dir _ifp_conf _ifp_text
