"""The client's side of a join, as a sans-I/O machine: join → PAKE → sealed
key exchange → consent result, for either end of the pairing.

The console and the agent each drive one `Handshake` (the console with a
`ConsoleSide`, the agent with an `AgentSide`) instead of two mirrored
copies of the sequence. Like `SessionMachine` it does no I/O and keeps no
clock: a driver (`broker.client.handshake.HandshakeRun`) hands it what the
broker sent, with `now` (a monotonic clock), and performs what it returns,
in order — `Send` a control message, or an event saying what happened:

    console                                     agent
    start      → Send join                       start     → Send attach
    joined     → Send pake,   Joined             pake      → Send pake
    pake       → Send sealed {ssh_key}           sealed    → (key checked) Send sealed
    sealed     → Paired (sas, host key,                       {host_key, consent_timeout},
                 consent timeout)                            Paired (sas, engineer key)
    consent_result → Established | Refused       answer()  → Send consent (the agent signs,
                                                              keeps and sends its receipt)
                                                 consent_sealed → Sealed (keep the checkpoint)
                                                 relay_open → Established; after a refusal
                                                   the seal or `ended` → Refused

Anything else ends the handshake with one `Failed` naming a reason: the
broker's end reason (`ended`) or error code (`error`), or one of ours
(`Failure`) — a wrong code, a key the broker did not announce, a deadline
passed (`tick`), the link lost (`lost`), or a message out of place. Which
messages may arrive and be sent at all is the catalogue's business
(`protocol.may_send`, `protocol.INBOUND`): this machine tracks its
connection's phase by the catalogue's "then" column, refuses what the
broker may not send it there, and never sends what the catalogue does not
list (`LocalProtocolError`: our bug). On top of that each step awaits one
message, so a valid message early or late is refused too.

Texts in `Failed.message` that came from the broker are untrusted: escape
them (`broker.wire.text.printable`) before showing them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from broker.wire.code import JoinCode
from broker.wire.codes import EndReason, ErrorCode
from broker.wire.e2e import Pairing
from broker.wire.errors import LocalProtocolError, PairingError, ProtocolError
from broker.wire.machine.protocol import (
    CATALOGUE,
    INBOUND,
    Conn,
    Party,
    Phase,
    may_send,
)
from broker.wire.messages import Message, b64decode, b64encode, decode
from broker.wire.resume.proof import ResumeKey

__all__ = [
    "MAX_CONSENT_WAIT",
    "SEAL_WAIT",
    "STEP_TIMEOUT",
    "AgentSide",
    "ConsoleSide",
    "Established",
    "Event",
    "Failed",
    "Failure",
    "Handshake",
    "Joined",
    "Output",
    "Paired",
    "Refused",
    "Sealed",
    "Send",
    "Source",
    "Step",
    "same_public_key",
]

# How long each step waits for the broker (the peer's pake, sealed...).
STEP_TIMEOUT = 60.0
# Generous bound on the customer's answer: the agent decides the real timeout
# (1 to 600 s) and tells the console; this only guards against an agent that
# never answers.
MAX_CONSENT_WAIT = 11 * 60.0
# After a refusal the broker seals that event and then ends the join; how
# long the agent waits for the seal (the broker seals at once: a little more
# than its COVER_WAIT). The refusal stands either way.
SEAL_WAIT = 6.0
# A sealed key exchange holds one OpenSSH public key line, nothing longer.
_MAX_KEY_TEXT = 200
# The consent timeout the agent may announce (its --consent-timeout bounds).
_CONSENT_TIMEOUT_RANGE = (1, 600)


class Failure(StrEnum):
    """Reasons this machine finds itself (the broker's come as they are)."""

    # the peer's pake or sealed did not open: another code
    WRONG_CODE = EndReason.WRONG_CODE.value
    # agent: the sealed engineer key is not the announced one
    KEY_MISMATCH = EndReason.KEY_MISMATCH.value
    BAD_SEALED = "bad_sealed"  # it opened (right code) but does not say what it must
    # a message the catalogue or this step does not allow
    UNEXPECTED = ErrorCode.UNEXPECTED_MESSAGE.value
    UNREADABLE = ErrorCode.PROTOCOL_ERROR.value  # a frame that is not a valid control message
    TIMEOUT = "timeout"  # the broker said nothing before the step's deadline
    CLOSED = "closed"  # the link closed (or a send on it failed)
    WITHDRAWN = "withdrawn"  # our own side gave up (`withdraw`)


class Source(StrEnum):
    """Where a `Failed` reason comes from."""

    ENDED = "ended"  # the broker ended the join (`ended`): the session's end reason
    ERROR = "error"  # the broker refused a frame (`error`): its error code
    # a cluster node sent the join elsewhere (`moved`): the message is the URL
    MOVED = "moved"
    LOCAL = "local"  # found here: a `Failure`


class Step(StrEnum):
    START = "start"  # nothing sent yet
    JOINING = "joining"  # join / attach sent; console: awaits joined, agent: the first pake
    PAKE = "pake"  # console: its pake sent, awaits the agent's
    SEALED = "sealed"  # awaits the peer's sealed key exchange
    ASKING = "asking"  # agent: paired; the customer is being asked (`answer`)
    CONSENT = "consent"  # console: awaits consent_result; agent: awaits relay_open or the seal
    DONE = "done"  # Established, Refused or Failed: no more input


@dataclass(frozen=True)
class ConsoleSide:
    """The engineer's end: what to ask for, and the key to seal for the agent."""

    wants: tuple[str, ...]
    ssh_key: str  # the engineer's public key, one OpenSSH line


@dataclass(frozen=True)
class AgentSide:
    """The customer's end of one join (from the broker's `join_request`)."""

    session: str
    token: str
    engineer_key: str  # the key the broker announced for the engineer
    host_key: str  # this session's fresh SSH host key, public, one OpenSSH line
    consent_timeout: int  # seconds the customer has to answer, shown on the console


@dataclass(frozen=True)
class Send:
    """Send control message `type` with `fields` to the broker."""

    type: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Joined:
    """Console: the agent's side is there; pairing starts."""

    session: str
    alias: str  # the customer's chosen name: untrusted text


@dataclass(frozen=True)
class Paired:
    """Both ends hold the pairing key and the other's key.

    `peer_key`: for the console the agent's host key for this session, for
    the agent the engineer's key (checked to be the one announced).
    `consent_timeout`: console only, the customer's seconds to answer."""

    sas: str
    peer_key: str
    consent_timeout: float | None = None


@dataclass(frozen=True)
class Sealed:
    """Agent: the broker's signed checkpoint covering the consent event `seq`."""

    seq: int
    checkpoint: str


@dataclass(frozen=True)
class Established:
    """Consent granted and recorded: the session runs with `granted`."""

    granted: tuple[str, ...]


@dataclass(frozen=True)
class Refused:
    """The customer's answer was no (`denied`) or none (`timeout`), as recorded."""

    decision: str


@dataclass(frozen=True)
class Failed:
    """The join is over without a session (see `Source`, `Failure`)."""

    reason: str
    message: str
    source: Source


Event = Joined | Paired | Sealed | Established | Refused | Failed
Output = Send | Event
Role = Literal["console", "agent"]


def same_public_key(a: str, b: str) -> bool:
    """Whether two OpenSSH public key lines hold the same key (comments aside).

    Both lines must be well formed ("ALGORITHM BASE64 [comment]", the blob
    naming the same algorithm), so nothing unparsable is ever "the same"."""
    first, second = _key_blob(a), _key_blob(b)
    return first is not None and first == second


def _key_blob(line: str) -> bytes | None:
    parts = line.split()
    if len(parts) < 2 or len(line) > _MAX_KEY_TEXT * 4:
        return None
    try:
        blob = base64.b64decode(parts[1].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    # RFC 4253: the blob begins with the algorithm's name as an SSH string.
    size = int.from_bytes(blob[:4], "big")
    if len(blob) < 4 + size or blob[4:4 + size] != parts[0].encode("ascii", "replace"):
        return None
    return blob


# The message each step awaits (besides `ended` and `error`, always possible).
_AWAITS: dict[tuple[Role, Step], frozenset[str]] = {
    ("console", Step.JOINING): frozenset({"joined"}),
    ("console", Step.PAKE): frozenset({"pake"}),
    ("console", Step.SEALED): frozenset({"sealed"}),
    ("console", Step.CONSENT): frozenset({"consent_result"}),
    ("agent", Step.JOINING): frozenset({"pake"}),
    ("agent", Step.SEALED): frozenset({"sealed"}),
    ("agent", Step.ASKING): frozenset(),  # nothing comes while the customer decides
    ("agent", Step.CONSENT): frozenset({"relay_open", "consent_sealed"}),
}


class Handshake:
    """One end of a join, from its first message to the consent result."""

    def __init__(self, side: ConsoleSide | AgentSide, code: JoinCode) -> None:
        self.side = side
        self.code = code
        self.role: Role = "console" if isinstance(side, ConsoleSide) else "agent"
        self._conn = Conn.CONSOLE if self.role == "console" else Conn.AGENT_SESSION
        self._party = Party(self._conn.value)
        # The connection's phase as the broker's catalogue sees it: a console
        # is logged in (ready), an agent's session connection is new (hello).
        self._phase = Phase.READY if self.role == "console" else Phase.HELLO
        self.step = Step.START
        self.session: str | None = side.session if isinstance(side, AgentSide) else None
        self._pairing: Pairing | None = None
        self._deadline: float | None = None
        self._decision: str | None = None  # agent: what the customer answered
        self._granted: tuple[str, ...] = ()  # agent: and the rights that gives
        self.outcome: Established | Refused | Failed | None = None

    # -- what the driver may ask --------------------------------------------

    @property
    def phase(self) -> Phase:
        """This connection's phase in the catalogue's terms."""
        return self._phase

    @property
    def done(self) -> bool:
        return self.step is Step.DONE

    def deadline(self) -> float | None:
        """When `tick` must be called if nothing arrives (None: no deadline)."""
        return self._deadline

    @property
    def sas(self) -> str | None:
        """The pairing fingerprint both screens show, once paired."""
        return self._pairing.sas if self._pairing is not None and self._pairing.ready else None

    def resume_key(self) -> ResumeKey | None:
        """The key that proves a resume of this session after a dropped link
        (`broker.wire.resume`), once paired; the broker can never make it."""
        if self._pairing is None or not self._pairing.ready or self.session is None:
            return None
        return ResumeKey(self._pairing.resume_secret(), self.session)

    # -- inputs -------------------------------------------------------------

    def start(self, now: float) -> list[Output]:
        """The first message: the console's `join`, the agent's `attach`."""
        if self.step is not Step.START:
            raise LocalProtocolError("the handshake has already started")
        self._move(Step.JOINING, now, STEP_TIMEOUT)
        if isinstance(self.side, ConsoleSide):
            return [self._send("join", nameplate=self.code.nameplate,
                               wants=list(self.side.wants))]
        return [self._send("attach", session=self.side.session, token=self.side.token)]

    def receive_frame(self, frame: str | bytes, now: float) -> list[Output]:
        """A frame as read from the link; one that is not a valid control
        message fails the handshake (the broker broke the protocol)."""
        if self.step is Step.DONE:
            return []
        try:
            msg = decode(frame)
        except ProtocolError as exc:
            return self._fail(Failure.UNREADABLE, f"the broker sent an invalid message: {exc}")
        return self.receive(msg, now)

    def receive(self, msg: Message, now: float) -> list[Output]:
        """A message from the broker. After the end nothing is taken: the
        driver reads the session's own messages itself."""
        if self.step is Step.DONE:
            return []
        if self.step is Step.START:
            raise LocalProtocolError("receive() before start()")
        if msg.type == "error":
            return self._finish(Failed(msg["code"], msg["message"], Source.ERROR))
        if msg.type == "ended":
            if self._decision is not None and self._decision != "granted":
                return self._finish(Refused(self._decision))  # the refusal, as recorded
            return self._finish(Failed(msg["reason"], msg["message"], Source.ENDED))
        if not may_send(self._conn, self._phase, msg.type):
            return self._fail(Failure.UNEXPECTED, f"the broker may not send {msg.type!r} "
                              f"while this connection is {self._phase.value}")
        if msg.type == "moved":
            self._moved_by(msg.type, Party.BROKER, self._party)
            return self._finish(Failed("moved", msg["url"], Source.MOVED))
        awaited = _AWAITS[self.role, self.step]
        if msg.type not in awaited:
            return self._fail(Failure.UNEXPECTED, (
                f"expected {' or '.join(sorted(awaited))}, got {msg.type}" if awaited
                else f"got {msg.type} while the customer was being asked"))
        self._moved_by(msg.type, Party.BROKER, self._party)
        try:
            return _HANDLERS[msg.type](self, msg, now)
        except PairingError:
            return self._wrong_code()
        except ProtocolError as exc:  # a sealed body that opened but is no JSON object
            return self._fail(Failure.BAD_SEALED if msg.type == "sealed"
                              else Failure.UNREADABLE, str(exc))

    def answer(self, *, receipt: bytes, signature: bytes, decision: str,
               granted: tuple[str, ...], now: float) -> list[Output]:
        """Agent: the customer answered (`decision`, and the rights `granted`);
        the agent signed and kept the receipt. Returns the `consent` to send."""
        if self.role != "agent" or self.step is not Step.ASKING:
            raise LocalProtocolError(f"no consent to give while {self.step.value}")
        self._decision, self._granted = decision, granted
        wait = STEP_TIMEOUT if decision == "granted" else SEAL_WAIT
        out = self._send("consent", receipt=b64encode(receipt), signature=b64encode(signature))
        self._move(Step.CONSENT, now, wait)
        return [out]

    def tick(self, now: float) -> list[Output]:
        """Time passed: past the deadline the step has failed (or, after a
        refusal, the refusal stands without its seal)."""
        if self._deadline is None or now < self._deadline or self.step is Step.DONE:
            return []
        if self._decision is not None and self._decision != "granted":
            return self._finish(Refused(self._decision))
        return self._fail(Failure.TIMEOUT, "the broker did not answer in time")

    def lost(self, now: float, message: str = "the connection to the broker closed"
             ) -> list[Output]:
        """The link closed, or a send on it failed."""
        if self.step is Step.DONE:
            return []
        if self._decision is not None and self._decision != "granted":
            return self._finish(Refused(self._decision))
        return self._fail(Failure.CLOSED, message)

    def withdraw(self, reason: str) -> list[Output]:
        """Our side gives up (the engineer pressed Ctrl-C, the customer
        quit): the `end` to send, if the broker's side of the join exists."""
        if self.step is Step.DONE:
            return []
        out: list[Output] = [self._send("end", reason=reason)] if self._may_say("end") else []
        self._finish(Failed(Failure.WITHDRAWN, f"withdrawn: {reason}", Source.LOCAL))
        return out

    # -- the messages -------------------------------------------------------

    def _on_joined(self, msg: Message, now: float) -> list[Output]:
        self.session = msg["session"]
        pairing = self._pairing = Pairing("console", self.code, msg["session"])
        out = self._send("pake", body=b64encode(pairing.start()))
        self._move(Step.PAKE, now, STEP_TIMEOUT)
        return [out, Joined(msg["session"], msg["alias"])]

    def _on_pake(self, msg: Message, now: float) -> list[Output]:
        theirs = b64decode(msg["body"])
        if isinstance(self.side, ConsoleSide):
            assert self._pairing is not None  # made on `joined`
            self._pairing.receive_pake(theirs)
            out = self._send("sealed", body=b64encode(self._pairing.seal(
                {"ssh_key": self.side.ssh_key})))
        else:
            # The console speaks first, so our pake answers its one.
            pairing = self._pairing = Pairing("agent", self.code, self.side.session)
            ours = pairing.start()
            pairing.receive_pake(theirs)
            out = self._send("pake", body=b64encode(ours))
        self._move(Step.SEALED, now, STEP_TIMEOUT)
        return [out]

    def _on_sealed(self, msg: Message, now: float) -> list[Output]:
        assert self._pairing is not None  # a pake came first (the step says so)
        offered = self._pairing.open(b64decode(msg["body"]))
        if isinstance(self.side, ConsoleSide):
            host_key, timeout = offered.get("host_key"), offered.get("consent_timeout", 60)
            low, high = _CONSENT_TIMEOUT_RANGE
            if (not isinstance(host_key, str) or not 0 < len(host_key) <= _MAX_KEY_TEXT
                    or type(timeout) not in (int, float) or not low <= timeout <= high):
                return self._fail(Failure.BAD_SEALED, "the customer's computer sent a key "
                                  "exchange without a usable host key or consent timeout")
            self._move(Step.CONSENT, now, MAX_CONSENT_WAIT)
            return [Paired(self._pairing.sas, host_key, float(timeout))]
        ssh_key = offered.get("ssh_key")
        if not isinstance(ssh_key, str) or not same_public_key(ssh_key, self.side.engineer_key):
            # The code was right, but the key is not the one the broker
            # announced: someone between console and broker may have swapped it.
            out = self._send("pairing_failed", reason=EndReason.KEY_MISMATCH)
            return [out, *self._fail(Failure.KEY_MISMATCH, "the engineer's key did not match "
                                     "the one the support service announced")]
        out = self._send("sealed", body=b64encode(self._pairing.seal(
            {"host_key": self.side.host_key, "consent_timeout": self.side.consent_timeout})))
        self._move(Step.ASKING, now, None)  # the customer's prompt has its own timeout
        return [out, Paired(self._pairing.sas, self.side.engineer_key)]

    def _on_consent_result(self, msg: Message, now: float) -> list[Output]:
        if msg["decision"] != "granted":
            return self._finish(Refused(msg["decision"]))
        return self._finish(Established(tuple(msg["granted"])))

    def _on_consent_sealed(self, msg: Message, now: float) -> list[Output]:
        sealed = Sealed(msg["seq"], msg["checkpoint"])
        if self._decision != "granted":
            return [sealed, *self._finish(Refused(self._decision or "denied"))]
        return [sealed]

    def _on_relay_open(self, msg: Message, now: float) -> list[Output]:
        if self._decision != "granted":
            return self._fail(Failure.UNEXPECTED, "the relay opened for a refused join")
        return self._finish(Established(self._granted))

    # -- small helpers ------------------------------------------------------

    def _wrong_code(self) -> list[Output]:
        # The agent says so, which spends the code and tells the engineer;
        # a console that finds it (the agent's pake was bad) just stops.
        out: list[Output] = (
            [self._send("pairing_failed", reason=EndReason.WRONG_CODE)]
            if self.role == "agent" else [])
        return [*out, *self._fail(Failure.WRONG_CODE, "the code did not match: pairing failed")]

    def _fail(self, reason: Failure, message: str) -> list[Output]:
        return self._finish(Failed(reason, message, Source.LOCAL))

    def _finish(self, outcome: Established | Refused | Failed) -> list[Output]:
        self.outcome = outcome
        self.step = Step.DONE
        self._deadline = None
        return [outcome]

    def _move(self, step: Step, now: float, wait: float | None) -> None:
        self.step = step
        self._deadline = None if wait is None else now + wait

    def _may_say(self, msg_type: str) -> bool:
        return msg_type in INBOUND.get((self._conn, self._phase), frozenset())

    def _send(self, msg_type: str, **fields: Any) -> Send:
        if not self._may_say(msg_type):
            raise LocalProtocolError(f"{self._conn.value} may not send {msg_type!r} "
                                     f"while {self._phase.value}")
        self._moved_by(msg_type, self._party, Party.BROKER)
        return Send(msg_type, fields)

    def _moved_by(self, msg_type: str, sender: Party, receiver: Party) -> None:
        """Follow the catalogue's "then" column for this message."""
        for route in CATALOGUE:
            if (route.type == msg_type and route.sender is sender
                    and route.receiver is receiver and self._phase in route.phases):
                if route.then is not None:
                    self._phase = route.then
                return


_HANDLERS: dict[str, Callable[[Handshake, Message, float], list[Output]]] = {
    "joined": Handshake._on_joined,
    "pake": Handshake._on_pake,
    "sealed": Handshake._on_sealed,
    "consent_result": Handshake._on_consent_result,
    "consent_sealed": Handshake._on_consent_sealed,
    "relay_open": Handshake._on_relay_open,
}
