#!/usr/bin/env bash
# deps.sh installs what building and testing mpshim needs on a fresh Debian
# machine (run as root). It is idempotent and quiet when everything is there.
#   scripts/deps.sh build   – compiler and Go toolchain checks
#   scripts/deps.sh test    – plus the real programs the tests drive
set -euo pipefail

want=(gcc make iproute2 passwd util-linux)
case "${1:-build}" in
build) ;;
test | demo | bench)
	# Real peers of the integration tests: namespaces and shaping (iproute2),
	# reachability (ping), clients and servers in the wan namespace.
	want+=(iputils-ping curl netcat-openbsd procps psmisc binutils)
	# Real servers whose libc imports the shim must cover and which the
	# end-to-end suites run under the shim.
	want+=(nginx apache2 apache2-utils redis-server memcached haproxy wrk iperf3)
	# The flow collector the IPFIX export is checked against, and the
	# Prometheus that scrapes /metrics for the Grafana dashboard's queries.
	want+=(nfdump prometheus)
	# The Debian package's test: systemd-analyze checks the unit, and the
	# package's maintainer scripts need adduser and deb-systemd-helper.
	want+=(systemd adduser init-system-helpers)
	# Runtime libraries of gVisor's prebuilt socket tests
	# (../shared/conformance/gvisor-socket, the conformance target).
	want+=(libabsl20220623 libbenchmark1debian)
	if [ "$1" = bench ]; then
		# The benchmark's plot and its profiles of the processes under load,
		# and the small-message clients (redis-benchmark; memaslap, which
		# Debian ships as memcaslap).
		want+=(gnuplot-nox linux-perf redis-tools libmemcached-tools)
		# Linux MPTCP, the split tunnel's comparison (mptcpize).
		want+=(mptcpd)
	fi
	;;
*)
	echo "deps.sh: unknown set '$1' (want build|test|demo|bench)" >&2
	exit 2
	;;
esac

missing=()
for p in "${want[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps.sh: missing Debian packages: ${missing[*]} (run as root, or: apt-get install ${missing[*]})" >&2
		exit 1
	fi
	echo "deps.sh: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	# Installing a server must not start it on the host: the tests start
	# their own copies inside their namespaces.
	rcd=/usr/sbin/policy-rc.d
	own_rcd=0
	if [ ! -e "$rcd" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$rcd" && chmod +x "$rcd" && own_rcd=1
	fi
	trap '[ "$own_rcd" = 1 ] && rm -f "$rcd"' EXIT
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The unprivileged user every INS runs as once sealed (config ins_user,
# default mpshim-ins): a system user with no home and no login. setpriv
# (util-linux) lets the tests run programs as strangers inside namespaces.
if ! getent passwd mpshim-ins >/dev/null; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps.sh: the user mpshim-ins is missing (run as root, or: useradd --system --no-create-home --shell /usr/sbin/nologin --user-group mpshim-ins)" >&2
		exit 1
	fi
	echo "deps.sh: creating the system user mpshim-ins" >&2
	useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --user-group mpshim-ins
fi

if ! command -v go >/dev/null 2>&1; then
	echo "deps.sh: no Go toolchain on PATH (expected /usr/local/go/bin/go)" >&2
	exit 1
fi
# Module downloads go through the module proxy; go.sum pins every version.
go mod download
