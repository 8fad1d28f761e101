#!/bin/sh
# Installs the Debian/Ubuntu packages gondolin needs, only those missing,
# through sudo when not root. Go itself must already be installed.
# With --test, also what the tests need (tmux, a static busybox for the
# OCI pull test, ssh for the SSH tests, sshd for the contexts' tests).
set -eu

need=""
check() { # check COMMAND PACKAGE
	command -v "$1" >/dev/null 2>&1 || need="$need $2"
}
check qemu-system-x86_64 qemu-system-x86
check qemu-img qemu-utils
check zstd zstd
check mke2fs e2fsprogs
check debugfs e2fsprogs
check dpkg-deb dpkg
check curl curl
if [ "${1:-}" = --test ]; then
	check tmux tmux
	check ssh openssh-client
	check ssh-keygen openssh-client
	# The contexts' tests start a real sshd on a loopback port.
	[ -x /usr/sbin/sshd ] || need="$need openssh-server"
	# The pull test packs the host's busybox into an image: it must be
	# the static one.
	if ! { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; }; then
		need="$need busybox-static"
	fi
fi
[ -e /usr/sbin/ldconfig ] || [ -e /sbin/ldconfig ] || need="$need libc-bin"

if ! command -v go >/dev/null 2>&1; then
	echo "deps: Go is not installed (gondolin needs Go 1.26 or newer: https://go.dev/dl/)" >&2
	exit 1
fi

sudo=""
if [ "$(id -u)" != 0 ]; then
	sudo=sudo
fi
# The image build downloads Debian packages through apt: it needs package
# lists, which a fresh container or a cleaned machine may not have.
if ! apt-cache show --no-all-versions busybox-static >/dev/null 2>&1; then
	echo "deps: updating apt's package lists" >&2
	$sudo apt-get update -q
fi
if [ -z "$need" ]; then
	exit 0
fi
echo "deps: installing$need" >&2
$sudo apt-get update -q
# shellcheck disable=SC2086 # word splitting of the package list is wanted
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends $need
