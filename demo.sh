#!/usr/bin/env bash
# A guided tour of unionmount on the sample layers in examples/layers:
# mounts base and extra under an empty upper, then shows on disk what a
# copy-up, a whiteout and an opaque directory are.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/deps.sh

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; eval "$@"; }

work=$(mktemp -d /tmp/unionmount-demo.XXXXXX)
go build -o "$work/unionmount" ./cmd/unionmount
cp -a examples/layers/base examples/layers/extra "$work/"
mkdir "$work/upper" "$work/merged"
cd "$work"
trap 'mountpoint -q merged && ./unionmount umount merged; echo; echo "demo files left in $work"' EXIT

step "Mount: extra on top of base, changes go to upper"
show ./unionmount extra:base upper merged
show ls -l merged merged/etc merged/app
show cat merged/etc/motd

step "Copy-up: appending to a lower file copies it into upper first"
show "echo 'second record' >> merged/app/data/log.txt"
show cat merged/app/data/log.txt
show ls -l upper/app/data
show cat base/app/data/log.txt

step "Whiteout: deleting a lower file leaves a 0/0 character device in upper"
show rm merged/etc/hostname
show ls -l merged/etc upper/etc

step "Opaque directory: a directory made where a lower one was deleted"
show rm -r merged/docs
show mkdir merged/docs
show "echo 'fresh docs' > merged/docs/NEW"
show ls -l merged/docs
show getfattr -d -m - upper/docs

step "The lowers never changed"
show ls -lR base/etc base/docs

step "Unmount"
show ./unionmount umount merged
show ls -lR upper
