"""What the broker records when a session breaks the rules or the broker
itself dies, and whose device a `hello` may speak for: real broker process,
real agent under a PTY, the console's client library in-process."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl

import pytest
from websockets.asyncio.client import connect

from broker.wire.messages import b64encode, encode
from tests.e2e.conftest import Deployment
from tests.e2e.test_control import audit_events, expect, view_only_session


def _tls(dep: Deployment) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(dep.pki.ca_cert))


async def test_a_violation_in_an_active_session_is_a_protocol_error_the_peer_hears(
    running: Deployment,
) -> None:
    async with view_only_session(running) as (agent, engineer):
        link = engineer.joined.link
        errors: asyncio.Queue[dict] = asyncio.Queue()

        async def on_control(msg) -> None:  # type: ignore[no-untyped-def]
            if msg.type in ("error", "ended"):
                await errors.put({"type": msg.type, **msg.fields})

        engineer.joined.on_control.append(on_control)
        # A `pake` is a pairing message: never allowed once the session runs.
        await link.ws.send(encode("pake", body=b64encode(b"x" * 32)))
        first = await asyncio.wait_for(errors.get(), 20)
        assert first["type"] == "error"
        assert first["code"] == "unexpected_message"
        await expect(agent, "ended")
    running.stop()
    ended = [e for e in audit_events(running) if e["type"] == "session_ended"]
    assert len(ended) == 1
    assert ended[0]["body"]["reason"] == "protocol_error"
    assert ended[0]["body"]["violation"] == {"by": "console", "code": "unexpected_message"}


async def test_after_a_broker_crash_every_open_session_and_agent_is_closed_on_restart(
    running: Deployment,
) -> None:
    async with view_only_session(running) as (_agent, _engineer):
        assert running.broker is not None
        running.broker.send_signal(signal.SIGKILL)
        running.broker.wait()
    running.start_broker()
    running.stop_broker()
    events = audit_events(running)
    types = [e["type"] for e in events]
    started = types.index("session_started")
    ended = [e for e in events if e["type"] == "session_ended"]
    assert len(ended) == 1, types
    assert ended[0]["seq"] > events[started]["seq"]
    assert ended[0]["body"]["reason"] == "broker_crashed"
    assert ended[0]["session"] == events[started]["session"]
    assert types.count("agent_connected") == types.count("agent_disconnected")
    crashed = [e for e in events if e["type"] == "agent_disconnected"
               and e["body"].get("reason") == "broker_crashed"]
    assert len(crashed) >= 1
    # The next clean restart closes nothing twice.
    running.start_broker()
    running.stop_broker()
    again = audit_events(running)
    assert [e["type"] for e in again].count("session_ended") == 1


async def _hello(dep: Deployment, device_id: str, key: bytes, alias: str = "desk") -> dict:
    # Built by hand: `encode` would refuse the bad aliases some tests send.
    frame = json.dumps({"v": 1, "type": "hello", "device_id": device_id,
                        "device_key": b64encode(key), "alias": alias})
    async with connect(dep.url + "/v1/agent", ssl=_tls(dep), compression=None) as ws:
        await ws.send(frame)
        return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def test_a_device_id_stays_bound_to_the_first_key_it_came_with(
    running: Deployment,
) -> None:
    first = await _hello(running, "device-victim", b"\x01" * 32)
    assert first["type"] == "nameplate"
    again = await _hello(running, "device-victim", b"\x01" * 32)
    assert again["type"] == "nameplate"
    impostor = await _hello(running, "device-victim", b"\x02" * 32)
    assert impostor["type"] == "error"
    assert impostor["code"] == "device_key_mismatch"
    other = await _hello(running, "device-other", b"\x02" * 32)
    assert other["type"] == "nameplate"
    running.stop()
    connected = [e for e in audit_events(running) if e["type"] == "agent_connected"]
    assert len(connected) == 3  # the impostor is not recorded under the victim


@pytest.mark.parametrize("alias", ["desk\x1b[2J", "a\nb", "bidi\u202e", "nul\x00"])
async def test_the_broker_refuses_control_characters_in_an_alias(
    running: Deployment, alias: str,
) -> None:
    reply = await _hello(running, "device-x", b"\x03" * 32, alias=alias)
    assert reply["type"] == "error"
    assert "control characters" in reply["message"]


def test_serve_on_a_port_in_use_says_so_in_one_line(deployment: Deployment) -> None:
    import socket
    import subprocess

    from tests.e2e.conftest import BIN

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(BIN / "consentry-broker"), "serve", "--listen", f"127.0.0.1:{port}",
             "--data-dir", str(deployment.data_dir), "--cert", str(deployment.pki.cert),
             "--key", str(deployment.pki.key)],
            capture_output=True, text=True, timeout=60, cwd=deployment.root,
        )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "already running" in result.stderr


def test_one_address_registers_a_bounded_number_of_agents_a_minute(
    deployment: Deployment,
) -> None:
    deployment.start_broker(0, "--agent-hellos-per-minute", "5")

    async def flood() -> list[str]:
        return [(await _hello(deployment, f"flood-{i}", bytes([i]) * 32))["type"]
                for i in range(8)]

    replies = asyncio.run(flood())
    assert replies == ["nameplate"] * 5 + ["error"] * 3
    deployment.stop()
    connected = [e for e in audit_events(deployment) if e["type"] == "agent_connected"]
    assert len(connected) == 5
