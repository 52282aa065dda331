#!/usr/bin/env bash
# Python provider client: install it and run its tests against the real gateway.
# Run from the repository root once the gateway is built (cargo build).
# PUSHGATE_BIN overrides the binary (default target/debug/pushgate).
set -euo pipefail

PY="${PYTHON:-python3}"
export PUSHGATE_BIN="${PUSHGATE_BIN:-$PWD/target/debug/pushgate}"

if [ ! -x "$PUSHGATE_BIN" ]; then
    echo "clients/python/ci.sh: gateway binary $PUSHGATE_BIN not found (run cargo build first)" >&2
    exit 1
fi
if ! "$PY" -c "import pytest" 2>/dev/null; then
    "$PY" -m pip install -q pytest
fi
"$PY" -m pip install -q --force-reinstall --no-deps ./clients/python

# Run outside the source tree so the installed package is the one tested.
cd clients/python/tests
# pytest exits 5 when it collected no tests; that is a failure too (set -e).
"$PY" -m pytest -q -p no:cacheprovider . "$@"
