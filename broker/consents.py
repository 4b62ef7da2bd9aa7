"""The customer's answers, recorded: each consent receipt checked against
its session, written to the audit log before anything acts on it, and both
ends told the outcome.

`check_receipt` decides (no I/O); `Consents` records and announces, and ends
a refused session through the broker's `end`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable

from broker.audit.checkpoints import COVER_WAIT, Checkpointer
from broker.audit.store import AuditLog
from broker.session import Session, send_quietly, utcnow
from broker.wire.errors import ProtocolError
from broker.wire.machine.protocol import Phase
from broker.wire.messages import Message, b64decode, b64encode, encode
from broker.wire.receipt import Receipt, verify_receipt

# Consent decisions and the reason a refused session ends with.
_REFUSAL_REASON = {"denied": "denied", "timeout": "timeout"}
# What a request for control asks for, and so what its receipt must say was asked.
UPGRADE = ("view", "control")


def check_receipt(session: Session, msg: Message,
                  asked: tuple[str, ...]) -> tuple[Receipt, dict[str, object]]:
    """Verify a consent receipt for this session; return it and its audit body.

    Decides only (no I/O): the signature must verify with the device's key,
    the receipt must name this session, device, engineer and key and what
    was asked, and it must not have been used before in this session (it is
    remembered in `session.receipts`)."""
    data, signature = b64decode(msg["receipt"]), b64decode(msg["signature"])
    receipt = verify_receipt(data, signature, session.agent.device_key)
    if (
        receipt.session != session.id
        or receipt.device_id != session.agent.device_id
        or receipt.engineer != session.engineer.name
        or receipt.key_fingerprint != session.engineer.fingerprint
        or len(receipt.asked) != len(asked)
        or set(receipt.asked) != set(asked)
    ):
        raise ProtocolError("the consent receipt does not match this session", "bad_receipt")
    digest = hashlib.sha256(data).hexdigest()
    # Each answer is signed afresh (its time differs): an old receipt sent
    # again is not a new answer from the customer.
    if digest in session.receipts:
        raise ProtocolError("this consent receipt was already used", "bad_receipt")
    session.receipts.add(digest)
    body: dict[str, object] = {
        "engineer": receipt.engineer, "key_fingerprint": receipt.key_fingerprint,
        "asked": list(receipt.asked), "granted": list(receipt.granted),
        "decision": receipt.decision, "receipt_time": receipt.time,
        "receipt_sha256": digest,
    }
    return receipt, body


def receipt_personal(session: Session, msg: Message) -> dict[str, str]:
    """What a consent event keeps encrypted: the signed receipt, and the device
    key it was verified with — beside it, so `audit show` can check the
    signature again later from this one event (personal data, as a device's
    key identifies it; erased with the receipt it verifies)."""
    return {"receipt": msg["receipt"], "receipt_signature": msg["signature"],
            "device_key": b64encode(session.agent.device_key)}


class Consents:
    """The broker's consent handling for its sessions; `end` is the broker's
    (a refused join ends like any other session: recorded, both ends told)."""

    def __init__(self, audit: AuditLog,
                 end: Callable[[Session, str], Awaitable[None]]) -> None:
        self.audit = audit
        self._end = end
        # Set by the broker once its checkpointer runs: each consent event's
        # covering checkpoint then goes back to the agent (`consent_sealed`).
        self.checkpoints: Checkpointer | None = None
        self._sealing: set[asyncio.Task[None]] = set()

    async def send_seal(self, session: Session, seq: int) -> None:
        """Send the agent the signed checkpoint covering consent event `seq`
        (sealed now if needed, waiting at most COVER_WAIT); nothing if none."""
        if self.checkpoints is None:
            return
        checkpoint = await self.checkpoints.covering(seq, COVER_WAIT)
        if checkpoint is not None:
            await send_quietly(session.agent_ws, encode(
                "consent_sealed", seq=seq, checkpoint=checkpoint.text()))

    def send_seal_later(self, session: Session, seq: int) -> None:
        """`send_seal` beside the session, so the relay opens without waiting."""
        task = asyncio.get_running_loop().create_task(self.send_seal(session, seq))
        self._sealing.add(task)
        task.add_done_callback(self._sealing.discard)

    async def record(self, session: Session, msg: Message) -> None:
        """A `consent` from the agent: the answer to the join, or, in an
        active session, to a request for control."""
        if session.phase is Phase.ACTIVE:
            await self.record_upgrade(session, msg)
        else:
            await self.record_first(session, msg)

    async def record_first(self, session: Session, msg: Message) -> None:
        """The answer to the join: a refusal ends the session; a grant starts
        it (recorded first) and opens the relay."""
        receipt, body = check_receipt(session, msg, session.wants)
        # The signed receipt names the device, so it is kept with the subject's
        # encrypted personal data; the body keeps what was allowed.
        seq = await self.audit.append(
            f"consent_{receipt.decision}", now=utcnow(), session=session.id,
            actor=session.engineer.name, subject=session.agent.device_id, body=body,
            personal=receipt_personal(session, msg),
        )
        result = encode("consent_result", decision=receipt.decision,
                        granted=list(receipt.granted) or ["view"],
                        receipt=msg["receipt"], signature=msg["signature"])
        if receipt.decision != "granted":
            await send_quietly(session.console, result)
            await self.send_seal(session, seq)  # before `ended` closes the agent's link
            await self._end(session, _REFUSAL_REASON[receipt.decision])
            return
        await self.audit.append(
            "session_started", now=utcnow(), session=session.id, actor=session.engineer.name,
            subject=session.agent.device_id, body={"granted": list(receipt.granted)},
        )
        session.granted = receipt.granted
        session.phase = Phase.ACTIVE
        session.start_fast_relay()
        session.active_since = session.last_activity = time.monotonic()
        await send_quietly(session.console, result)
        await send_quietly(session.agent_ws, encode("relay_open"))
        self.send_seal_later(session, seq)

    async def request_control(self, session: Session) -> None:
        """Forward the engineer's request for control to the customer.

        Nothing to ask (control already granted, or a request already with the
        customer) is answered `unchanged` at once, without bothering anyone.
        """
        if "control" in session.granted or session.control_pending:
            await send_quietly(session.console, encode(
                "control_result", decision="unchanged", granted=list(session.granted)))
            return
        await self.audit.append(
            "control_requested", now=utcnow(), session=session.id,
            actor=session.engineer.name, subject=session.agent.device_id,
            body={"asked": list(UPGRADE)},
        )
        session.control_pending = True
        await send_quietly(session.agent_ws, encode("control_request"))

    async def record_upgrade(self, session: Session, msg: Message) -> None:
        """Record the customer's answer to a request for control, then tell both
        ends; the agent lets the engineer type only once it hears back."""
        if not session.control_pending:
            raise ProtocolError("no request for control is waiting for an answer",
                                "unexpected_message")
        receipt, body = check_receipt(session, msg, UPGRADE)
        if receipt.decision == "granted" and set(receipt.granted) != set(UPGRADE):
            raise ProtocolError("a granted request for control must grant control",
                                "bad_receipt")
        seq = await self.audit.append(
            f"consent_{receipt.decision}", now=utcnow(), session=session.id,
            actor=session.engineer.name, subject=session.agent.device_id,
            body={**body, "upgrade": True},
            personal=receipt_personal(session, msg),
        )
        session.control_pending = False
        if receipt.decision == "granted":
            await self.audit.append(
                "rights_changed", now=utcnow(), session=session.id,
                actor=session.engineer.name, subject=session.agent.device_id,
                body={"granted": list(UPGRADE), "by": "customer", "upgrade": True},
            )
            session.granted = UPGRADE
        result = encode("control_result", decision=receipt.decision,
                        granted=list(session.granted))
        await send_quietly(session.console, result)
        await send_quietly(session.agent_ws, result)
        self.send_seal_later(session, seq)
