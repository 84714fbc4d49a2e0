#!/usr/bin/env bash
# demo.sh runs the end-to-end demo (see test/demo) with the built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
exec go run ./test/demo -bin bin "$@"
