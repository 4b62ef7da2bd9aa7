"""A consent receipt checked against the session it claims to answer (pure)."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

from broker.wire.codes import ErrorCode
from broker.wire.errors import ProtocolError
from broker.wire.messages import Message, b64decode
from broker.wire.receipt import Receipt, verify_receipt

__all__ = ["CheckedReceipt", "check_receipt"]


@dataclass(frozen=True)
class CheckedReceipt:
    receipt: Receipt
    digest: str  # SHA-256 of the canonical receipt: each answer is used once
    body: dict[str, object]  # what the consent event keeps in the clear


def check_receipt(msg: Message, *, session: str, device_id: str, device_key: bytes,
                  engineer: str, fingerprint: str, asked: tuple[str, ...],
                  seen: Collection[str]) -> CheckedReceipt:
    """Verify a `consent` message for this session; raise `ProtocolError` if unfit.

    The signature must verify with the device's key; the receipt must name
    this session, device, engineer and key and what was asked; and it must
    not be one already used in this session (`seen`): each answer is signed
    afresh (its time differs), so an old receipt sent again is no new answer."""
    data, signature = b64decode(msg["receipt"]), b64decode(msg["signature"])
    receipt = verify_receipt(data, signature, device_key)
    if (
        receipt.session != session
        or receipt.device_id != device_id
        or receipt.engineer != engineer
        or receipt.key_fingerprint != fingerprint
        or len(receipt.asked) != len(asked)
        or set(receipt.asked) != set(asked)
    ):
        raise ProtocolError("the consent receipt does not match this session",
                            ErrorCode.BAD_RECEIPT)
    digest = hashlib.sha256(data).hexdigest()
    if digest in seen:
        raise ProtocolError("this consent receipt was already used", ErrorCode.BAD_RECEIPT)
    body: dict[str, object] = {
        "engineer": receipt.engineer, "key_fingerprint": receipt.key_fingerprint,
        "asked": list(receipt.asked), "granted": list(receipt.granted),
        "decision": receipt.decision, "receipt_time": receipt.time,
        "receipt_sha256": digest,
    }
    return CheckedReceipt(receipt, digest, body)
