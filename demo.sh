#!/usr/bin/env bash
# A guided tour of unionmount on the sample layers in examples/layers:
# mounts base and extra under an empty upper, shows on disk what a copy-up,
# a whiteout and an opaque directory are, then lists the changes, commits
# them into a new layer while the mount runs, asks which layer serves
# what, and stores the result as an OCI image that it mounts and saves.
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
trap 'mountpoint -q merged && ./unionmount umount merged; mountpoint -q container && ./unionmount umount container; echo; echo "demo files left in $work"' EXIT

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

step "Diff: the changes, as docker diff lists them, read from upper alone"
show ./unionmount diff merged

step "Commit: freeze upper into a new read-only layer while the mount runs"
show ./unionmount commit merged -m "'the tour'"
show ls -la upper .upper.work/layers .upper.work/layers/1
show ./unionmount layers merged

step "Which: the layer that serves a path, or what hides it"
show ./unionmount which merged/app/data/log.txt merged/etc/motd merged/etc/hostname merged/docs/README

step "Writes after the commit go to the fresh upper; the layer stays frozen"
show "echo 'third record' >> merged/app/data/log.txt"
show ./unionmount diff merged
show cat .upper.work/layers/1/app/data/log.txt

step "Images: store the mount as an image, then mount the image in a container layer"
export UNIONMOUNT_STORE="$work/store"
show ./unionmount commit merged --tag tour:1 -m "'the tour, as an image'"
show ./unionmount images
show ./unionmount history tour:1
mkdir container
show ./unionmount --image tour:1 container
show cat container/app/data/log.txt
show ./unionmount umount container
show ./unionmount save tour:1 -o tour.tar
show "tar -tf tour.tar | head -8"

step "The lowers never changed"
show ls -lR base/etc base/docs

step "Unmount"
show ./unionmount umount merged
show ls -lR upper
