#!/usr/bin/env bash
# Build the wheelhouse that test hosts (Molecule containers) install from: scripts/dev/wheelhouse.sh [DIR]
#
# Every wheel that requirements/host-cpu.txt resolves to (TensorFlow, TFDS, boto3, ...), built once here with the
# repo's .venv/bin/pip (this machine's pip has a local package mirror; pip inside a container does not) and
# bind-mounted read-only at /wheelhouse, so that a host installs offline and fast:
#     python3 -m venv /opt/v && /opt/v/bin/pip install --no-index --find-links /wheelhouse -r host-cpu.txt
# `promise` is source-only on the registry: `pip wheel` builds its wheel here, so no host needs to build it.
# pip/setuptools/wheel are included because a venv from Debian's python3-venv (pip 23.0.1, setuptools 66) can
# then install a source tree (our package: build isolation needs setuptools and wheel) or upgrade pip with
# --no-index. Skipped when DIR/.stamp holds the sha256 of the inputs already. Prints one line: what it did.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
DIR=${1:-$REPO/.cache/wheelhouse}
REQ=$REPO/requirements/host-cpu.txt
PIP=$REPO/.venv/bin/pip
# Build tools for offline installs on the hosts (the versions in the controller .venv).
TOOLS=(pip==26.3 setuptools==84.2.1 wheel==0.48.0)

die() { echo "error: $1 (fix: $2)" >&2; exit 2; }
[ -f "$REQ" ] || die "$REQ is missing" "run from a full checkout of the repository"
[ -x "$PIP" ] || die "$PIP is missing" "make venv"

want=$( { sha256sum < "$REQ"; printf '%s\n' "${TOOLS[@]}"; } | sha256sum | cut -d' ' -f1)
if [ -f "$DIR/.stamp" ] && [ "$(cat "$DIR/.stamp")" = "$want" ]; then
    echo "wheelhouse $DIR is up to date"
    exit 0
fi

start=$SECONDS
# Build beside DIR and swap it in, so DIR is never half a wheelhouse and holds no wheels from older pins.
mkdir -p "$(dirname "$DIR")"
NEW=$(mktemp -d "$DIR.new.XXXXXX")
LOG=$NEW.log
trap 'rm -rf "$NEW" "$LOG"' EXIT
if ! "$PIP" wheel --wheel-dir "$NEW" -r "$REQ" "${TOOLS[@]}" > "$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    die "pip wheel failed (log above)" "check that $PIP can reach the package index"
fi
# pip wheel turns every sdist (promise today) into a wheel; anything else would make the hosts build from source.
if find "$NEW" -type f ! -name '*.whl' | grep -q .; then
    die "pip wheel left files that are not wheels in $NEW" "check the requirements in $REQ"
fi
chmod -R a+rX "$NEW"
printf '%s\n' "$want" > "$NEW/.stamp"
sync -f "$NEW/.stamp"
rm -rf "$DIR"
mv "$NEW" "$DIR"
rm -f "$LOG"
trap - EXIT
echo "built wheelhouse $DIR ($(ls "$DIR"/*.whl | wc -l) wheels, $(du -sh "$DIR" | cut -f1)) in $((SECONDS - start)) s"
