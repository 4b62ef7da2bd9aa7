"""Several engineers in one session, on a real broker process over real TLS
WebSockets, with the agent's and consoles' frames scripted (the agent and
console programs do not use invitations yet): the customer's invitation,
a second engineer joining the same session id, the relay kept one to one per
seat on the broker's fast path, the limit refused without asking the
customer, one engineer removed while the other goes on, and the customer's
end for all — with the audit log's events under one session id.

Pairing is the clients' business (the broker only forwards it), so these
clients go straight to the customer's signed consent."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import nacl.signing
from websockets.asyncio.client import ClientConnection, connect

from broker.wire.limits import MAX_ENGINEERS_PER_SESSION
from broker.wire.login import login_payload
from broker.wire.messages import b64decode, b64encode, encode
from broker.wire.receipt import Receipt, sign_receipt
from tests.e2e.conftest import Deployment

WAIT = 10.0


async def recv(ws: ClientConnection) -> Any:
    """The next frame: a control message as a dict, or relay bytes."""
    frame = await asyncio.wait_for(ws.recv(), WAIT)
    return frame if isinstance(frame, bytes) else json.loads(frame)


async def recv_type(ws: ClientConnection, msg_type: str) -> dict[str, Any]:
    """Read until a control message of `msg_type` (skipping others, e.g. seals)."""
    while True:
        msg = await recv(ws)
        if isinstance(msg, dict) and msg["type"] == msg_type:
            return msg


async def recv_bytes(ws: ClientConnection) -> bytes:
    """The next relay bytes (skipping control messages: rosters, seals)."""
    while True:
        msg = await recv(ws)
        if isinstance(msg, bytes):
            return msg


@dataclass
class Customer:
    """The agent's side, scripted: a device key that signs receipts."""

    control: ClientConnection
    device: nacl.signing.SigningKey
    nameplate: str
    second: int = 0

    def consent(self, session: str, engineer: str, key: str, asked: list[str]) -> str:
        self.second += 1
        receipt = Receipt.make(
            session=session, device_id="dev-seats", engineer=engineer,
            key_fingerprint=asyncssh.import_public_key(key).get_fingerprint("sha256"),
            asked=tuple(asked), granted=tuple(asked), decision="granted",
            now=dt.datetime(2025, 3, 1, 12, 0, self.second, tzinfo=dt.UTC))
        data, signature = sign_receipt(receipt, self.device)
        return encode("consent", receipt=b64encode(data), signature=b64encode(signature))


class Clients:
    def __init__(self, dep: Deployment, stack: AsyncExitStack) -> None:
        self.dep, self.stack = dep, stack
        self.tls = ssl.create_default_context(cafile=str(dep.pki.ca_cert))

    async def open(self, path: str) -> ClientConnection:
        return await self.stack.enter_async_context(
            connect(self.dep.url + path, ssl=self.tls, compression=None))

    async def customer(self) -> Customer:
        device = nacl.signing.SigningKey.generate()
        ws = await self.open("/v1/agent")
        await ws.send(encode("hello", device_id="dev-seats", alias="Front Desk",
                             device_key=b64encode(bytes(device.verify_key))))
        return Customer(ws, device, (await recv_type(ws, "nameplate"))["nameplate"])

    async def engineer(self, name: str, key: Path, nameplate: str,
                       wants: list[str]) -> ClientConnection:
        """A console that logs in and joins with `nameplate`."""
        ws = await self.open("/v1/console")
        await ws.send(encode("login", user=name))
        nonce = b64decode((await recv_type(ws, "challenge"))["nonce"])
        keypair = asyncssh.load_keypairs(str(key))[0]
        await ws.send(encode("login_proof", signature=b64encode(
            bytes(keypair.sign(login_payload(name, nonce))))))
        await recv_type(ws, "login_ok")
        await ws.send(encode("join", nameplate=nameplate, wants=wants))
        return ws

    async def seat(self, customer: Customer, console: ClientConnection,
                   key: Path) -> tuple[ClientConnection, str]:
        """The customer's side of one join: attach, consent; the agent_session."""
        request = await recv_type(customer.control, "join_request")
        agent = await self.open("/v1/agent/session")
        await agent.send(encode("attach", session=request["session"], token=request["token"]))
        assert (await recv_type(console, "joined"))["session"] == request["session"]
        await agent.send(customer.consent(request["session"], request["engineer_login"],
                                          Path(f"{key}.pub").read_text().strip(),
                                          request["wants"]))
        assert (await recv_type(console, "consent_result"))["decision"] == "granted"
        await recv_type(agent, "relay_open")
        return agent, request["session"]


async def test_two_engineers_share_one_session_and_one_is_removed(running: Deployment) -> None:
    alice, bob = running.add_engineer("alice"), running.add_engineer("bob")
    extra = [running.add_engineer(f"eng{n}") for n in range(3, MAX_ENGINEERS_PER_SESSION + 2)]
    async with AsyncExitStack() as stack:
        clients = Clients(running, stack)
        customer = await clients.customer()
        a_console = await clients.engineer("alice", alice, customer.nameplate,
                                           ["view", "control"])
        a_agent, session = await clients.seat(customer, a_console, alice)

        # The customer invites: a code bound to this session, not a waiting one.
        await a_agent.send(encode("invite"))
        invitation = await recv_type(a_agent, "invitation")
        assert invitation["expires_in"] == 600
        b_console = await clients.engineer("bob", bob, invitation["nameplate"], ["view"])
        b_agent, b_session = await clients.seat(customer, b_console, bob)
        assert b_session == session  # one session id for both
        roster = await recv_type(a_console, "roster")
        assert [(s["login"], s["rights"]) for s in roster["seats"]] == [
            ("alice", ["view", "control"]), ("bob", ["view"])]
        assert (await recv_type(b_agent, "roster"))["you"] != roster["you"]

        # The invitation was single use.
        again = await clients.engineer("eng3", extra[0], invitation["nameplate"], ["view"])
        assert (await recv_type(again, "error"))["code"] == "unknown_code"

        # Each seat's bytes go to its own pair only (the fast relay).
        await a_console.send(b"alice keys")
        assert await recv_bytes(a_agent) == b"alice keys"
        await b_agent.send(b"output for bob")
        assert await recv_bytes(b_console) == b"output for bob"
        await a_agent.send(b"output for alice")
        assert await recv_bytes(a_console) == b"output for alice"

        # Fill the session; one more is refused and the customer is not asked.
        for key, n in zip(extra[1:], range(3, MAX_ENGINEERS_PER_SESSION + 1), strict=False):
            await a_agent.send(encode("invite"))
            plate = (await recv_type(a_agent, "invitation"))["nameplate"]
            await clients.seat(customer, await clients.engineer(f"eng{n + 1}", key, plate,
                                                                ["view"]), key)
        await a_agent.send(encode("invite"))
        plate = (await recv_type(a_agent, "invitation"))["nameplate"]
        late = await clients.engineer("eng3", extra[0], plate, ["view"])
        refusal = await recv_type(late, "error")
        assert refusal["code"] == "session_full"
        assert str(MAX_ENGINEERS_PER_SESSION) in refusal["message"]

        # The customer removes bob; alice's seat goes on.
        await b_agent.send(encode("remove"))
        assert (await recv_type(b_console, "ended"))["reason"] == "engineer_removed"
        await a_console.send(b"still here")
        assert await recv_bytes(a_agent) == b"still here"

        # The customer ends it: everyone still there is told.
        await a_agent.send(encode("end", reason="customer_ended"))
        assert (await recv_type(a_console, "ended"))["reason"] == "customer_ended"

    result = running.cli("audit", "list", "--json", "--session", session)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    types = [e["type"] for e in events]
    assert types.count("consent_granted") == MAX_ENGINEERS_PER_SESSION
    assert types.count("session_ended") == 1 and types.count("engineer_removed") == 1
    assert "join_refused" in types and "invite_issued" in types
    ended = next(e for e in events if e["type"] == "session_ended")
    assert {p["engineer"] for p in ended["body"]["participants"]} >= {"alice", "bob"}
    # No relayed byte in any of the broker's files.
    for path in running.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"alice keys" not in data and b"output for bob" not in data, path
