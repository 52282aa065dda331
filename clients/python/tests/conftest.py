"""Fixtures: a real gateway per test (memory store unless the test asks), a provider on it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gateway import Gateway, binary  # noqa: E402

import pushgate  # noqa: E402


def pytest_sessionstart(session: pytest.Session) -> None:
    if not Path(binary()).is_file():
        raise pytest.UsageError("gateway binary %s not found: build it or set PUSHGATE_BIN" % binary())


@pytest.fixture
def gateway(tmp_path: Path):
    gw = Gateway(tmp_path / "data", store="memory")
    yield gw
    gw.kill()  # memory store: nothing to flush; a drain would wait ~2 s for open devices


@pytest.fixture
def provider(gateway: Gateway):
    p = pushgate.Provider(gateway.provider_address, "demo", gateway.secret, timeout=20)
    yield p
    p.close()
