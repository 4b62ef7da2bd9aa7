"""Hostile load on a real broker: floods of bad logins, bad proofs for one
engineer, joins sweeping random nameplates (issue 9, items 2-4).

Peers speak the raw protocol over real TLS; several source addresses come
from binding the client's end to other loopback addresses (127.0.0.x).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncssh
from websockets.asyncio.client import ClientConnection, connect

from broker.admission import MAX_PENDING_PER_SOURCE
from broker.failures import FAILURE_EVENT_BUDGET
from broker.wire.limits import MAX_JOIN_MISSES_PER_ENGINEER
from broker.wire.login import login_payload
from broker.wire.messages import b64decode, b64encode, encode
from tests.e2e.conftest import Deployment

REPLY_TIMEOUT = 30.0


@asynccontextmanager
async def _ws(dep: Deployment, path: str, source: str = "127.0.0.1",
              ) -> AsyncIterator[ClientConnection]:
    tls = ssl.create_default_context(cafile=str(dep.pki.ca_cert))
    async with connect(dep.url + path, ssl=tls, compression=None, open_timeout=REPLY_TIMEOUT,
                       local_addr=(source, 0)) as ws:
        yield ws


async def _recv(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT))


async def _log_in(ws: ClientConnection, user: str, key: Path | None) -> dict[str, Any]:
    """Answer the challenge with `key`'s signature, or 64 random bytes."""
    await ws.send(encode("login", user=user))
    challenge = await _recv(ws)
    assert challenge["type"] == "challenge"
    if key is None:
        signature = os.urandom(64)
    else:
        private = asyncssh.read_private_key(key)
        signature = private.sign(login_payload(user, b64decode(challenge["nonce"])),
                                 b"ssh-ed25519")
    await ws.send(encode("login_proof", signature=b64encode(signature)))
    return await _recv(ws)


async def _login_reply(dep: Deployment, user: str, key: Path | None,
                       source: str = "127.0.0.1") -> str:
    async with _ws(dep, "/v1/console", source) as ws:
        reply = await _log_in(ws, user, key)
    return reply["type"] if reply["type"] == "login_ok" else reply["code"]


async def _join_reply(dep: Deployment, user: str, key: Path, nameplate: str) -> str:
    async with _ws(dep, "/v1/console") as ws:
        assert (await _log_in(ws, user, key))["type"] == "login_ok"
        await ws.send(encode("join", nameplate=nameplate, wants=["view"]))
        reply = await _recv(ws)
    return reply["code"] if reply["type"] == "error" else reply["type"]


def _events(dep: Deployment, event_type: str) -> list[dict[str, Any]]:
    result = dep.cli("audit", "list", "--json", "--type", event_type)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


async def test_a_flood_of_bad_logins_adds_a_bounded_number_of_events(
    running: Deployment,
) -> None:
    floods = 240  # 40 sources, 6 made-up names each, random bytes as proof

    async def bad_login(i: int) -> str:
        return await _login_reply(running, f"guess-{i}-{os.urandom(4).hex()}", None,
                                  source=f"127.0.0.{2 + i % 40}")

    replies = await asyncio.gather(*(bad_login(i) for i in range(floods)))
    assert set(replies) == {"login_failed"}
    running.stop_broker()  # pending aggregates are written at shutdown
    failed = _events(running, "login_failed")
    suppressed = _events(running, "failures_suppressed")
    # Bounded whatever was sent: the budget, plus one summary of the rest.
    assert len(failed) <= FAILURE_EVENT_BUDGET
    assert len(suppressed) == 1
    # And nothing went uncounted: every failure is in an event or the summary.
    counted = sum(e["body"]["count"] for e in failed) + suppressed[0]["body"]["failures"]
    assert counted == floods
    assert suppressed[0]["body"]["of"] == "login_failed"


async def test_the_right_key_gets_in_right_after_fifty_bad_proofs(
    running: Deployment,
) -> None:
    key = running.add_engineer("alice")
    replies = []
    for _wave in range(2):  # 25 at a time: within one address's unauthenticated cap
        replies += await asyncio.gather(*(_login_reply(running, "alice", None)
                                          for _ in range(25)))
    assert replies == ["login_failed"] * 50  # throttled, never locked
    # Even with an address's whole share of unauthenticated connections held
    # by someone else there, a newcomer takes the oldest one's place.
    held = [socket.create_connection(("127.0.0.1", running.port))
            for _ in range(MAX_PENDING_PER_SOURCE)]
    try:
        assert await _login_reply(running, "alice", key) == "login_ok"
    finally:
        for sock in held:
            sock.close()
    running.stop_broker()
    # Aggregated: one event for the first failure, one for the other 49.
    failed = _events(running, "login_failed")
    assert [e["body"]["count"] for e in failed] == [1, 49]
    assert {e["personal"]["user"] for e in failed} == {"alice"}
    assert len(_events(running, "engineer_login")) == 1


async def test_sweeping_joins_are_refused_without_burning_the_customers_code(
    running: Deployment,
) -> None:
    mallory = running.add_engineer("mallory")
    alice = running.add_engineer("alice")
    async with _ws(running, "/v1/agent") as agent:
        await agent.send(encode("hello", device_id="dev-sweep", device_key="A" * 43 + "=",
                                alias="front desk"))
        offered = await _recv(agent)
        assert offered["type"] == "nameplate"
        code = offered["nameplate"]
        # Same length, never the waiting agent's: every join with it misses.
        other = "1" + "0" * (len(code) - 1)
        other = other if other != code else other[:-1] + "1"
        for _ in range(MAX_JOIN_MISSES_PER_ENGINEER):
            assert await _join_reply(running, "mallory", mallory, other) == "unknown_code"
        # Limited now, even with the right nameplate, and the code is not spent.
        assert await _join_reply(running, "mallory", mallory, code) == "rate_limited"
        # The admin sees the sweeping account at once, not when the folded
        # counts are written.
        listing = running.cli("audit", "list", "--engineer", "mallory")
        assert listing.returncode == 0, listing.stderr
        [reached] = [line for line in listing.stdout.splitlines() if "join_limit_reached" in line]
        assert "actor=mallory" in reached
        assert f" misses={MAX_JOIN_MISSES_PER_ENGINEER}" in reached
        async with _ws(running, "/v1/console") as console:
            assert (await _log_in(console, "alice", alice))["type"] == "login_ok"
            await console.send(encode("join", nameplate=code, wants=["view"]))
            request = await _recv(agent)
            assert (request["type"], request["nameplate"], request["engineer_login"]) == (
                "join_request", code, "alice")
            running.stop_broker()  # ends alice's join; no need to pair for real
    failed = [e for e in _events(running, "join_failed") if e["actor"] == "mallory"]
    assert sum(e["body"]["count"] for e in failed) == MAX_JOIN_MISSES_PER_ENGINEER + 1
    reasons: dict[str, int] = {}
    for event in failed:
        for reason, count in event["body"]["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    assert reasons == {"unknown_code": MAX_JOIN_MISSES_PER_ENGINEER, "rate_limited": 1}
    assert len(failed) <= 2  # aggregated, not one per miss
    # The operator is told which account sweeps, and nothing more personal.
    warnings = [line for line in running.broker_stdout.read_text().splitlines()
                if "join" in line and "WARNING" in line]
    assert warnings and all("mallory" in line and "127.0.0" not in line for line in warnings)
