#!/usr/bin/env bash
# Runs every test of unionmount, after installing (as root) what they need
# when it is missing. Tests that need root or a tool that is not there skip
# and say why.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/deps.sh

go vet ./...
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
	echo "test.sh: not gofmt-formatted: $unformatted" >&2
	exit 1
fi
# -count=1: no cached results; -p 1: the mount tests share the 2 cores
# with their own daemons.
go test -count=1 -p 1 -timeout 25m ./...
