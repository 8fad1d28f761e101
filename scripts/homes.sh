#!/bin/sh
# The end-to-end check of templates that never break (issue 11), as a new
# user would meet them: ROUNDS rounds (default 10) of HOMES fresh homes
# (default 6), each linked to the built images, in which two execs, a
# session, its disk and live snapshots and a resume of each must all
# succeed. HOG=1 runs a CPU hog beside it, as on a loaded CI machine.
#
#	scripts/homes.sh [ROUNDS [HOMES]]
set -eu
rounds=${1:-10}
homes=${2:-6}
g=$(cd "$(dirname "$0")/.." && pwd)/bin/gondolin
src=${GONDOLIN_HOME:-$HOME/.local/share/gondolin}
[ -d "$src/images" ] || { echo "homes: no images in $src: run make image" >&2; exit 1; }

hog=""
if [ "${HOG:-}" = 1 ]; then
	sh -c 'while :; do :; done' &
	hog=$!
fi
h=""
cleanup() {
	[ -n "$hog" ] && kill "$hog" 2>/dev/null
	if [ -n "$h" ]; then
		GONDOLIN_HOME=$h "$g" supervisor stop --all >/dev/null 2>&1 || true
		rm -rf "$h"
	fi
}
trap cleanup EXIT

# expect WANT CMD...: CMD's stdout must be WANT.
expect() {
	want=$1
	shift
	got=$("$@" </dev/null 2>"$h/err") || true
	if [ "$got" != "$want" ]; then
		echo "homes: round $round home $i: $*: got '$got', want '$want': $(cat "$h/err")" >&2
		exit 1
	fi
}

start=$(date +%s)
for round in $(seq "$rounds"); do
	for i in $(seq "$homes"); do
		h=$(mktemp -d /tmp/gh.XXXXXX)
		ln -s "$src/images" "$h/images"
		export GONDOLIN_HOME="$h"
		expect first "$g" exec -- echo first
		expect second "$g" exec -- echo second
		"$g" bash --detach --keep --name s -- sleep 100000 >/dev/null </dev/null
		"$g" snapshot s --name disk >/dev/null </dev/null
		"$g" snapshot s --live --name live >/dev/null </dev/null
		expect disk "$g" exec --resume disk -- echo disk
		expect live "$g" exec --resume live -- echo live
		"$g" bash --detach --resume live --name r >/dev/null </dev/null
		expect resumed "$g" exec --session r -- echo resumed
		"$g" supervisor stop --all >/dev/null 2>&1 </dev/null || true
		rm -rf "$h"
		h=""
	done
	echo "homes: round $round: $homes homes passed ($(($(date +%s) - start)) s so far)"
done
