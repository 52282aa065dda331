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
# Absolute, since the tests run from another directory.
PUSHGATE_BIN="$(cd "$(dirname "$PUSHGATE_BIN")" && pwd)/$(basename "$PUSHGATE_BIN")"
if ! "$PY" -c "import pytest" 2>/dev/null; then
    "$PY" -m pip install -q pytest
fi
# setuptools builds in the tree: start from a clean build directory so nothing stale is installed.
rm -rf clients/python/build clients/python/src/pushgate.egg-info
# Build isolation fetches setuptools from PyPI; offline, fall back to the installed
# setuptools and wheel (if there are any).
"$PY" -m pip install -q --force-reinstall --no-deps ./clients/python ||
    "$PY" -m pip install -q --force-reinstall --no-deps --no-build-isolation ./clients/python
rm -rf clients/python/build clients/python/src/pushgate.egg-info

# Run outside the source tree so the installed package is the one tested.
cd clients/python/tests
# pytest exits 5 when it collected no tests; that is a failure too (set -e).
"$PY" -m pytest -q -p no:cacheprovider . "$@"
