#!/usr/bin/env bash
# build-runsc.sh OUT builds gVisor's runsc at the version go.mod pins for
# gvisor.dev/gvisor, in a throwaway module (runsc's own dependencies stay out
# of mpshim's go.mod), into OUT. The benchmark's runsc peer runs it.
set -euo pipefail
out=${1:?usage: build-runsc.sh OUT}
root=$(cd "$(dirname "$0")/.." && pwd)
ver=$(cd "$root" && go list -m -f '{{.Version}}' gvisor.dev/gvisor)
stamp="$out.version"
if [ -x "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$ver" ]; then
	exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
goversion=$(cd "$root" && go list -m -f '{{.GoVersion}}')
cat >"$tmp/go.mod" <<MOD
module runscbuild

go $goversion

require gvisor.dev/gvisor $ver
MOD
cat >"$tmp/tools.go" <<'SRC'
//go:build tools

package tools

import _ "gvisor.dev/gvisor/runsc"
SRC
echo "build-runsc.sh: building runsc from gvisor.dev/gvisor $ver (several minutes the first time)" >&2
(cd "$tmp" && go mod tidy >/dev/null 2>&1 && CGO_ENABLED=0 go build -trimpath -o "$(realpath -m "$out")" gvisor.dev/gvisor/runsc)
echo "$ver" >"$stamp"
