"""Consent receipts: what the customer decided, signed by their device key.

The agent builds and signs the receipt; the broker verifies it against the
device key the agent announced in ``hello`` and stores it in the audit log
before relaying a single byte. The receipt holds no personal data of the
customer (no alias, no IP): session, device id, engineer, key fingerprint,
what was asked, what was granted, the decision and the time.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import nacl.exceptions
import nacl.signing

from broker.wire.codes import RIGHTS, ErrorCode, Right
from broker.wire.errors import ProtocolError

__all__ = ["DECISIONS", "Receipt", "sign_receipt", "verify_receipt"]

DECISIONS = ("granted", "denied", "timeout")


@dataclass(frozen=True)
class Receipt:
    session: str
    device_id: str
    engineer: str
    key_fingerprint: str
    asked: tuple[str, ...]
    granted: tuple[str, ...]
    decision: str
    time: str  # UTC ISO 8601

    def canonical(self) -> bytes:
        fields = asdict(self)
        fields["asked"] = list(self.asked)
        fields["granted"] = list(self.granted)
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def make(
        cls,
        *,
        session: str,
        device_id: str,
        engineer: str,
        key_fingerprint: str,
        asked: tuple[str, ...],
        granted: tuple[str, ...],
        decision: str,
        now: datetime,
    ) -> Receipt:
        return cls(
            session=session,
            device_id=device_id,
            engineer=engineer,
            key_fingerprint=key_fingerprint,
            asked=tuple(asked),
            granted=tuple(granted),
            decision=decision,
            time=now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        )


def sign_receipt(receipt: Receipt, key: nacl.signing.SigningKey) -> tuple[bytes, bytes]:
    """Return (canonical receipt bytes, Ed25519 signature)."""
    data = receipt.canonical()
    return data, key.sign(data).signature


def verify_receipt(data: bytes, signature: bytes, device_key: bytes) -> Receipt:
    """Check the signature and the shape; raise `ProtocolError` if either fails."""
    try:
        nacl.signing.VerifyKey(device_key).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError) as exc:
        raise ProtocolError("consent receipt signature is invalid", ErrorCode.BAD_RECEIPT) from exc
    try:
        fields = json.loads(data)
        receipt = Receipt(
            session=str(fields["session"]),
            device_id=str(fields["device_id"]),
            engineer=str(fields["engineer"]),
            key_fingerprint=str(fields["key_fingerprint"]),
            asked=tuple(fields["asked"]),
            granted=tuple(fields["granted"]),
            decision=str(fields["decision"]),
            time=str(fields["time"]),
        )
    # ValueError covers bad JSON and bad UTF-8.
    except (ValueError, RecursionError, KeyError, TypeError) as exc:
        raise ProtocolError("consent receipt is malformed", ErrorCode.BAD_RECEIPT) from exc
    if not all(isinstance(r, str) for r in receipt.asked + receipt.granted):
        raise ProtocolError("consent receipt rights must be strings", ErrorCode.BAD_RECEIPT)
    if receipt.canonical() != data:
        raise ProtocolError("consent receipt is not in canonical form", ErrorCode.BAD_RECEIPT)
    if receipt.decision not in DECISIONS:
        raise ProtocolError("consent receipt has an unknown decision", ErrorCode.BAD_RECEIPT)
    if not set(receipt.granted) <= set(receipt.asked) <= set(RIGHTS):
        raise ProtocolError("consent receipt grants more than was asked", ErrorCode.BAD_RECEIPT)
    if receipt.decision != "granted" and receipt.granted:
        raise ProtocolError("a refused consent cannot grant rights", ErrorCode.BAD_RECEIPT)
    if receipt.decision == "granted" and Right.VIEW not in receipt.granted:
        raise ProtocolError("a granted consent includes view", ErrorCode.BAD_RECEIPT)
    return receipt
