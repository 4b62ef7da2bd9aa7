"""`consentry-broker serve --log-format json`: every line the broker writes is
one JSON object with time, level, logger and message, and the fields the
record has (the port it listens on, a refused connection's path and code)."""

from __future__ import annotations

import asyncio
import json

from tests.e2e.conftest import Deployment
from tests.e2e.test_trust_and_protocol import _exchange


def test_the_broker_logs_json_lines(deployment: Deployment) -> None:
    deployment.start_broker(0, "--log-format", "json")
    reply = asyncio.run(_exchange(deployment, "/v1/agent", ["this is not json"]))
    assert reply["code"] == "bad_json"
    deployment.stop_broker()
    assert deployment.broker is not None and deployment.broker.returncode == 0

    lines = deployment.broker_stdout.read_text(encoding="ascii").splitlines()
    records = [json.loads(line) for line in lines]  # any other line would fail here
    assert records and all(isinstance(r, dict) for r in records)
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert all(r["time"].endswith("Z") for r in records)

    (listening,) = [r for r in records if r["message"].startswith("listening on")]
    assert (listening["port"], listening["host"]) == (deployment.port, "127.0.0.1")
    assert listening["level"] == "info" and listening["logger"] == "consentry.broker"
    (refused,) = [r for r in records if r["message"].startswith("protocol error")]
    assert (refused["path"], refused["code"]) == ("/v1/agent", "bad_json")
    assert any(r["message"] == "shutting down" for r in records)


def test_text_is_the_default(running: Deployment) -> None:
    text = running.broker_stdout.read_text()
    assert text.startswith("consentry-broker: listening on wss://127.0.0.1:")
