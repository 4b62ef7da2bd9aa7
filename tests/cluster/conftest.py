"""Fixtures of the cluster tests: HAProxy in front of brokers, per test
(`postgres` and `database_url` are in tests/conftest.py, for the audit
tests that run on both backends too). See tests/cluster/harness.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.cluster.harness import HAProxy, start_haproxy
from tests.e2e.conftest import deployment, running

__all__ = ["deployment", "running"]  # the e2e fixtures, for the brokers behind HAProxy


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[..., HAProxy]]:
    """Starts HAProxy in front of the given (host, port) backends; stops every
    one it started when the test ends."""
    started: list[HAProxy] = []

    def start(backends: Sequence[tuple[str, int]], *, check_ca: Path | None = None,
              healthz: bool = False, source: str | None = None) -> HAProxy:
        proxy = start_haproxy(tmp_path / f"haproxy{len(started)}", backends, check_ca=check_ca,
                              healthz=healthz, source=source)
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()
