"""A broker behind a TCP load balancer (issue 14): PROXY v2 headers from
the balancers it trusts (`--proxy-protocol-from`) name the client it
records and rate-limits; from anyone else no header is believed.

Peers speak the raw protocol over real TLS to a real broker subprocess;
other client addresses come from binding to other loopback addresses."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pexpect
import pytest
from websockets.asyncio.client import ClientConnection, connect

from broker.proxy_protocol import build
from broker.wire.messages import encode
from tests.cluster.harness import HAProxy
from tests.e2e.conftest import Deployment
from tests.e2e.test_session import approve_session

REPLY_TIMEOUT = 30.0
CLAIMED = "203.0.113.7"  # TEST-NET-3: no real client has it


@asynccontextmanager
async def _agent(url: str, dep: Deployment, *, source: str = "127.0.0.1",
                 header: bytes = b"") -> AsyncIterator[ClientConnection]:
    """A WebSocket to /v1/agent from `source`, `header` sent before TLS."""
    host, port = url.removeprefix("wss://").rsplit(":", 1)
    sock = socket.socket()
    sock.setblocking(False)
    try:
        sock.bind((source, 0))
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        if header:
            await asyncio.get_running_loop().sock_sendall(sock, header)
    except BaseException:
        sock.close()
        raise
    tls = ssl.create_default_context(cafile=str(dep.pki.ca_cert))
    async with connect(url + "/v1/agent", ssl=tls, sock=sock, server_hostname=host,
                       compression=None, open_timeout=REPLY_TIMEOUT) as ws:
        yield ws


async def _hello(ws: ClientConnection, device: str) -> dict[str, Any]:
    await ws.send(encode("hello", device_id=device, device_key="A" * 43 + "=",
                         alias="front desk"))
    return json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT))


def _connected_ips(dep: Deployment) -> list[str]:
    result = dep.cli("audit", "list", "--json", "--type", "agent_connected")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return [event["personal"]["ip"] for event in events]


async def test_a_trusted_balancers_header_names_the_client_recorded_and_rate_limited(
        deployment: Deployment) -> None:
    deployment.start_broker(0, "--proxy-protocol-from", "127.0.0.1",
                            "--agent-hellos-per-minute", "2")
    for n in range(2):
        async with _agent(deployment.url, deployment,
                          header=build((CLAIMED, 40000 + n), ("127.0.0.1", 443))) as ws:
            assert (await _hello(ws, f"dev-{n}"))["type"] == "nameplate"
    # The limit counts the header's client, not the balancer all come from.
    async with _agent(deployment.url, deployment, header=build((CLAIMED, 40002))) as ws:
        reply = await _hello(ws, "dev-2")
        assert reply["type"] == "error" and reply["code"] == "rate_limited"
    async with _agent(deployment.url, deployment, header=build(("203.0.113.8", 40003))) as ws:
        assert (await _hello(ws, "dev-3"))["type"] == "nameplate"
    # The balancer's own connection (a LOCAL header, as its checks send) is
    # the balancer's.
    async with _agent(deployment.url, deployment, header=build(None)) as ws:
        assert (await _hello(ws, "dev-4"))["type"] == "nameplate"
    deployment.stop_broker()
    assert sorted(_connected_ips(deployment)) == sorted(
        [CLAIMED, CLAIMED, "203.0.113.8", "127.0.0.1"])


async def test_a_header_from_an_untrusted_address_is_not_believed(
        deployment: Deployment) -> None:
    deployment.start_broker(0, "--proxy-protocol-from", "127.0.0.1")
    # From 127.0.0.2 the header is not read: it reaches TLS and fails it.
    with pytest.raises((ssl.SSLError, OSError, asyncio.TimeoutError)):
        async with _agent(deployment.url, deployment, source="127.0.0.2",
                          header=build((CLAIMED, 40000))) as ws:
            await _hello(ws, "dev-spoof")
    # Without one, 127.0.0.2 is served as it would be with no balancer at all.
    async with _agent(deployment.url, deployment, source="127.0.0.2") as ws:
        assert (await _hello(ws, "dev-plain"))["type"] == "nameplate"
    # The trusted balancer's address without a header is refused (fail closed).
    with pytest.raises((ssl.SSLError, OSError, asyncio.TimeoutError)):
        async with _agent(deployment.url, deployment) as ws:
            await _hello(ws, "dev-noheader")
    deployment.stop_broker()
    assert _connected_ips(deployment) == ["127.0.0.2"]
    log = deployment.broker_stdout.read_text()
    assert "without a usable PROXY v2 header: no PROXY header: the connection began with TLS" \
        in log


async def test_through_haproxy_the_broker_sees_the_clients_address(
        deployment: Deployment, haproxy: Callable[..., HAProxy]) -> None:
    deployment.start_broker(0, "--proxy-protocol-from", "127.0.0.1")
    proxy = haproxy([("127.0.0.1", deployment.port)])
    async with _agent(proxy.url, deployment, source="127.0.0.3") as ws:
        assert (await _hello(ws, "dev-balanced"))["type"] == "nameplate"
    deployment.stop_broker()
    assert _connected_ips(deployment) == ["127.0.0.3"]


async def test_haproxys_tls_check_passes_its_proxy_header_and_handshake(
        deployment: Deployment, haproxy: Callable[..., HAProxy]) -> None:
    deployment.start_broker(0, "--proxy-protocol-from", "127.0.0.1")
    proxy = haproxy([("127.0.0.1", deployment.port)], check_ca=deployment.pki.ca_cert)
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        (server,) = proxy.servers().values()
        if server["check_status"] in ("L6OK", "L7OK"):
            break
        assert asyncio.get_running_loop().time() < deadline, f"check never passed: {server}"
        await asyncio.sleep(0.1)
    assert server["status"] == "UP"
    assert "load balancer without a usable PROXY" not in deployment.broker_stdout.read_text()


def test_a_whole_session_runs_through_haproxy(
        deployment: Deployment, haproxy: Callable[..., HAProxy]) -> None:
    """The real agent and console, both through the balancer: TLS passes
    through it untouched (the CA pins the broker's own certificate)."""
    deployment.start_broker(0, "--proxy-protocol-from", "127.0.0.1")
    proxy = haproxy([("127.0.0.1", deployment.port)])
    deployment.port = proxy.port  # the agent and the console dial the balancer
    agent, console, _code = approve_session(deployment, "c", "--control")
    marker = "CSY" + secrets.token_hex(8)
    console.send(f"echo {marker}-$((6*7))\r")
    console.expect(f"{marker}-42")
    agent.expect(f"{marker}-42")
    console.send("\x1dq")
    console.expect(pexpect.EOF)
    deployment.stop()
    # Served at all means every connection began with HAProxy's header (the
    # broker drops one from 127.0.0.1 without it); the address it names is
    # shown by test_through_haproxy_the_broker_sees_the_clients_address.
    assert "session_ended" in deployment.audit_types()
