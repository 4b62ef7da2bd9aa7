"""The broker must be trusted before anything is said, and must survive
anything a peer sends."""

from __future__ import annotations

import asyncio
import json
import ssl

import pexpect
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from broker.certs import make_ca, write_pem_cert
from broker.wire.limits import MAX_CONTROL_FRAME
from broker.wire.messages import encode
from tests.e2e.conftest import Deployment, read_code, write_key


def test_agent_and_console_refuse_a_broker_signed_by_another_ca(running: Deployment) -> None:
    other_cert, _key = make_ca("someone else's CA")
    other = running.root / "other-ca.crt"
    write_pem_cert(other, other_cert)

    agent = running.agent(ca=other)
    agent.expect("not signed by the CA")
    agent.expect(pexpect.EOF)
    agent.close()
    assert agent.exitstatus == 3

    key = write_key(running.root / "k_ed25519")
    console = running.console("1234-456-789", key, "alice", ca=other)
    console.expect("not signed by the CA")
    console.expect(pexpect.EOF)
    console.close()
    assert console.exitstatus == 4


def _tls(dep: Deployment) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(dep.pki.ca_cert))
    return ctx


async def _exchange(dep: Deployment, path: str, frames: list[str | bytes]) -> dict:
    """Send frames, return the broker's `error` message; the socket must close."""
    async with connect(dep.url + path, ssl=_tls(dep), compression=None,
                       max_size=4 * MAX_CONTROL_FRAME) as ws:
        for frame in frames:
            await ws.send(frame)
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1008
        return reply


BAD_FRAMES: list[tuple[str, list[str | bytes], str]] = [
    ("/v1/agent", ["this is not json"], "bad_json"),
    ("/v1/agent", ['{"v":1,"type":"hello"'], "bad_json"),
    ("/v1/agent", ["[1,2,3]"], "bad_json"),
    ("/v1/agent", ['{"v":2,"type":"hello"}'], "bad_version"),
    ("/v1/agent", ['{"v":1,"type":"launch_missiles"}'], "unknown_type"),
    ("/v1/agent", ['{"v":1,"type":"hello","device_id":"x","device_key":"AAAA","alias":"a",'
                   '"extra":1}'], "unknown_field"),
    ("/v1/agent", ['{"v":1,"type":"hello","alias":"a"}'], "missing_field"),
    ("/v1/agent", ["x" * (MAX_CONTROL_FRAME + 10)], "too_big"),
    ("/v1/agent", [b"\x00binary before hello"], "protocol_error"),
    ("/v1/agent", ["[" * 8000 + "]" * 8000], "bad_json"),
    ("/v1/console", [encode("join", nameplate="123", wants=["view"])], "unexpected_message"),
    ("/v1/agent/session", [encode("attach", session="nope", token="nope")], "unknown_session"),
]


@pytest.mark.parametrize(("path", "frames", "code"), BAD_FRAMES,
                         ids=[f"{c}-{i}" for i, (_p, _f, c) in enumerate(BAD_FRAMES)])
async def test_malformed_frames_get_a_protocol_error_not_a_crash(
    running: Deployment, path: str, frames: list[str | bytes], code: str
) -> None:
    reply = await _exchange(running, path, frames)
    assert reply["type"] == "error"
    assert reply["code"] == code
    assert "Traceback" not in reply["message"]
    # The broker is still serving: a well-formed agent still gets a code.
    async with connect(running.url + "/v1/agent", ssl=_tls(running), compression=None) as ws:
        await ws.send(encode("hello", device_id="dev1", device_key="A" * 43 + "=",
                             alias="still alive"))
        nameplate = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert nameplate["type"] == "nameplate"
    assert running.broker is not None and running.broker.poll() is None
    assert "Traceback" not in running.broker_stdout.read_text()


async def test_unknown_endpoint_is_404(running: Deployment) -> None:
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as info:
        async with connect(running.url + "/admin", ssl=_tls(running)):
            pass
    assert info.value.response.status_code == 404


async def test_frames_over_the_websocket_limit_are_closed_as_too_big(
    running: Deployment,
) -> None:
    async with connect(running.url + "/v1/agent", ssl=_tls(running), compression=None,
                       max_size=None) as ws:
        await ws.send("[" * 200_000)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1009  # "message too big", refused before parsing


def test_escapes_never_enter_names_people_see(running: Deployment) -> None:
    """Display names and aliases are refused with escapes in them; whatever
    arrives from the network is escaped again before display (unit-tested in
    tests/agent/test_consent.py and tests/wire/test_text.py)."""
    key = write_key(running.root / "eve_ed25519")
    refused = running.cli("engineer", "add", "eve", "--key", f"{key}.pub",
                          "--display", "Eve\x1b]0;pwned\x07")
    assert refused.returncode != 0
    assert "control characters" in refused.stderr
    agent = running.agent("--alias", "desk\x1b[2J\nroot#")
    agent.expect("alias must not contain control characters")
    agent.expect(pexpect.EOF)
    agent.close()
    assert agent.exitstatus == 2

    running.cli("engineer", "add", "eve", "--key", f"{key}.pub", "--display", "Ève Ünïcode")
    agent = running.agent("--alias", "caf\u00e9 \u2603")
    console = running.console(read_code(agent), key, "eve")
    agent.expect(r"Ève Ünïcode \(eve, engineer\)")
    console.expect("Paired with caf\u00e9 \u2603")
