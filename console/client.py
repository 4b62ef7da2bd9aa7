"""The console's broker client: log in, join with a code, pair, wait for
consent, and hand back a session ready for SSH. No UI in here: progress is
reported through a callback, so the plain terminal and the TUI share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from broker.link import BrokerLink, LinkError, bridge, open_link
from broker.wire.code import JoinCode
from broker.wire.e2e import Pairing
from broker.wire.errors import PairingError, WireError
from broker.wire.limits import SSH_CIPHERS
from broker.wire.login import login_payload
from broker.wire.messages import Message, b64decode, b64encode
from console.errors import BrokerError, JoinRefused, NotApproved, WrongCode
from console.identity import Identity

HANDSHAKE_TIMEOUT = 60.0
# Generous bound on the customer's answer: the agent decides the real timeout
# and tells us; this only guards against an agent that never answers.
MAX_CONSENT_WAIT = 11 * 60.0


@dataclass(frozen=True)
class Progress:
    """A step of the join, for the engineer's screen."""

    state: str  # connecting | logged_in | pairing | waiting | approved
    text: str
    deadline: float | None = None  # monotonic time the customer's prompt times out


@dataclass(eq=False)
class JoinedSession:
    """A consented session: the relay link and what pairing established."""

    link: BrokerLink
    session: str
    alias: str
    sas: str
    host_key: asyncssh.SSHKey
    granted: tuple[str, ...]
    identity: Identity
    on_control: list[Callable[[Message], Awaitable[None]]] = field(default_factory=list)
    ended: Message | None = None

    @property
    def control(self) -> bool:
        return "control" in self.granted

    async def _dispatch(self, msg: Message) -> None:
        if msg.type == "rights":
            self.granted = tuple(msg["granted"])
        elif msg.type in ("ended", "error"):
            self.ended = msg
        for handler in self.on_control:
            await handler(msg)

    async def open_ssh(self) -> tuple[asyncssh.SSHClientConnection, asyncio.Task[None]]:
        """SSH to the agent over the relay, its host key pinned from pairing."""
        sock, pump = await bridge(self.link, self._dispatch)
        try:
            conn = await asyncssh.connect(
                sock=sock, host="consentry-agent", username=self.identity.user,
                client_keys=[self.identity.keypair], agent_path=None, config=None,
                known_hosts=([self.host_key], [], []), preferred_auth="publickey",
                encryption_algs=list(SSH_CIPHERS), keepalive_interval=0, connect_timeout=30,
            )
        except (OSError, asyncssh.Error) as exc:
            pump.cancel()
            sock.close()
            raise BrokerError(f"the secure shell to the customer failed: {exc}") from exc
        return conn, pump

    async def leave(self) -> None:
        with contextlib.suppress(Exception):
            await self.link.send("end", reason="engineer_left")
        await self.link.close()


class ConsoleClient:
    """Talks to one broker as one engineer."""

    def __init__(self, broker_url: str, ca: Path, identity: Identity) -> None:
        self.broker_url = broker_url
        self.ca = ca
        self.identity = identity
        self.display = identity.user
        self.role = ""

    async def connect(self) -> BrokerLink:
        """A new logged-in connection (each join has its own)."""
        try:
            link = await open_link(self.broker_url, "/v1/console", self.ca)
        except LinkError as exc:
            raise BrokerError(str(exc)) from exc
        try:
            await link.send("login", user=self.identity.user)
            challenge = await link.expect("challenge", timeout=HANDSHAKE_TIMEOUT)
            nonce = b64decode(challenge["nonce"])
            signature = await self.identity.sign(login_payload(self.identity.user, nonce))
            await link.send("login_proof", signature=b64encode(signature))
            ok = await link.expect("login_ok", timeout=HANDSHAKE_TIMEOUT)
        except (LinkError, WireError) as exc:
            await link.close()
            raise BrokerError(str(exc)) from exc
        self.display, self.role = ok["display"], ok["role"]
        return link

    async def join(
        self, code: JoinCode, wants: tuple[str, ...],
        on_progress: Callable[[Progress], None] = lambda _p: None,
    ) -> JoinedSession:
        on_progress(Progress("connecting", "Connecting to the broker..."))
        link = await self.connect()
        on_progress(Progress("logged_in", f"Logged in as {self.display} ({self.role})."))
        try:
            return await self._join(link, code, wants, on_progress)
        except BaseException:
            await link.close()
            raise

    async def _join(self, link: BrokerLink, code: JoinCode, wants: tuple[str, ...],
                    on_progress: Callable[[Progress], None]) -> JoinedSession:
        try:
            await link.send("join", nameplate=code.nameplate, wants=list(wants))
            joined = await link.expect("joined", timeout=HANDSHAKE_TIMEOUT)
            on_progress(Progress("pairing", "Pairing with the customer's computer..."))
            pairing = Pairing("console", code, joined["session"])
            await link.send("pake", body=b64encode(pairing.start()))
            theirs = await link.expect("pake", timeout=HANDSHAKE_TIMEOUT)
            pairing.receive_pake(b64decode(theirs["body"]))
            offer = pairing.seal({"ssh_key": self.identity.public_line})
            await link.send("sealed", body=b64encode(offer))
            sealed = await link.expect("sealed", timeout=HANDSHAKE_TIMEOUT)
            answer = pairing.open(b64decode(sealed["body"]))
            host_key = asyncssh.import_public_key(str(answer["host_key"]))
            timeout = float(answer.get("consent_timeout", 60))
        except LinkError as exc:
            if exc.code == "wrong_code":
                raise WrongCode(
                    "the code did not match. It is now used up: ask the customer for the "
                    "new code on their screen"
                ) from exc
            if exc.code == "unknown_code":
                raise JoinRefused(str(exc).removeprefix("the broker refused: ")) from exc
            raise BrokerError(str(exc)) from exc
        except PairingError as exc:
            raise WrongCode("the code did not match; ask the customer for the new code") from exc
        except (WireError, asyncssh.KeyImportError, KeyError, ValueError) as exc:
            raise BrokerError(f"pairing failed: {exc}") from exc
        deadline = time.monotonic() + min(timeout, MAX_CONSENT_WAIT)
        on_progress(Progress(
            "waiting", f"Paired with {joined['alias']}. Pairing fingerprint {pairing.sas} "
            "(the customer sees the same). Waiting for the customer to approve...",
            deadline=deadline,
        ))
        try:
            result = await link.expect("consent_result", timeout=MAX_CONSENT_WAIT)
        except LinkError as exc:
            raise BrokerError(str(exc)) from exc
        if result["decision"] != "granted":
            reason = ("did not answer in time" if result["decision"] == "timeout"
                      else "declined the request")
            raise NotApproved(f"the customer {reason}")
        granted = tuple(result["granted"])
        on_progress(Progress("approved", "Approved: " + (
            "view and control." if "control" in granted else "view only.")))
        return JoinedSession(
            link=link, session=joined["session"], alias=joined["alias"], sas=pairing.sas,
            host_key=host_key, granted=granted, identity=self.identity,
        )


