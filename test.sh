#!/usr/bin/env bash
# Runs every test of unionmount. As root it first installs what the tests
# need from Debian's packages (fuse3, attr) when missing. Tests that need a
# tool or root that is not there skip and say why.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" = 0 ]; then
	missing=()
	command -v fusermount3 >/dev/null || missing+=(fuse3)
	command -v getfattr >/dev/null || missing+=(attr)
	if [ ${#missing[@]} -gt 0 ]; then
		echo "test.sh: installing ${missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	fi
	# Debian makes /dev/fuse usable by everyone (udev); a container may
	# not have, and the rootless tests need it.
	[ -c /dev/fuse ] || mknod -m 0666 /dev/fuse c 10 229
	chmod 0666 /dev/fuse
fi

go vet ./...
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
	echo "test.sh: not gofmt-formatted: $unformatted" >&2
	exit 1
fi
# -count=1: no cached results; -p 1: the mount tests share the 2 cores
# with their own daemons.
go test -count=1 -p 1 -timeout 25m ./...
