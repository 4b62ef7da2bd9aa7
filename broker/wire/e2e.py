"""End-to-end pairing between a console and an agent, through a blind broker.

Both ends know the join code; the broker knows only its nameplate. They run
SPAKE2 with the code as password, which gives both the same key only if both
used the same code. A relay that does not know the code gets one online guess
(one in a million), and the agent burns the code after any failure.

From the SPAKE2 key we derive one key per purpose and direction (the idea of
magic-wormhole's ``_key.py``), so a message sealed by one side can never be
reflected back to it. The first sealed message each side opens is the key
confirmation: a wrong code makes it fail to open, and nothing else is
revealed before then.

The broker's own modules never import this file (see the import-hygiene test):
it relays ``pake`` and ``sealed`` bodies without looking inside.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Literal, Protocol

import nacl.exceptions
import nacl.secret
import nacl.utils
from spake2 import SPAKE2_A, SPAKE2_B
from spake2.ed25519_basic import NotOnCurve
from spake2.spake2 import SPAKEError

from broker.wire.code import JoinCode
from broker.wire.errors import PairingError, ProtocolError

__all__ = ["Pairing", "Side"]

Side = Literal["console", "agent"]

_ID_CONSOLE = b"consentry-v1-console"
_ID_AGENT = b"consentry-v1-agent"
_MAX_SEALED_PLAINTEXT = 2048


def _derive(key: bytes, purpose: str, session: str, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) with one expand block: enough for 32 bytes."""
    prk = hmac.new(b"consentry-e2e-v1", key, hashlib.sha256).digest()
    info = f"{purpose}|{session}".encode()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:length]


class _Spake2(Protocol):
    """What is used of spake2's SPAKE2_A and SPAKE2_B (spake2 ships no types)."""

    def start(self) -> bytes: ...

    def finish(self, inbound_message: bytes) -> bytes: ...


class Pairing:
    """One side of the pairing, with no I/O.

    ``start()`` gives the PAKE message to send; ``receive_pake()`` takes the
    peer's; then ``seal()`` and ``open()`` protect the key exchange. ``sas``
    is the short fingerprint both sides show so people can compare.
    """

    def __init__(self, side: Side, code: JoinCode, session: str) -> None:
        self.side = side
        self.session = session
        cls = SPAKE2_A if side == "console" else SPAKE2_B
        self._spake: _Spake2 = cls(code.password, idA=_ID_CONSOLE, idB=_ID_AGENT)
        self._key: bytes | None = None
        self._started = False

    def start(self) -> bytes:
        if self._started:
            raise ProtocolError("pairing already started")
        self._started = True
        return self._spake.start()

    def receive_pake(self, message: bytes) -> None:
        if not self._started:
            raise ProtocolError("pake received before start()")
        if self._key is not None:
            raise ProtocolError("a second pake message arrived")
        try:
            self._key = self._spake.finish(message)
        except (SPAKEError, NotOnCurve, ValueError, TypeError, AssertionError) as exc:
            # A malformed or wrong-side PAKE message is as good as a wrong code.
            raise PairingError("the pairing message from the other side is invalid") from exc

    @property
    def ready(self) -> bool:
        return self._key is not None

    def _require_key(self) -> bytes:
        if self._key is None:
            raise ProtocolError("pairing not finished")
        return self._key

    def _box(self, direction: str) -> nacl.secret.SecretBox:
        return nacl.secret.SecretBox(_derive(self._require_key(), direction, self.session))

    def seal(self, payload: dict[str, Any]) -> bytes:
        """Encrypt and authenticate a small JSON object for the other side."""
        plaintext = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        if len(plaintext) > _MAX_SEALED_PLAINTEXT:
            raise ProtocolError("sealed payload too large")
        direction = f"{self.side}->peer"
        return bytes(self._box(direction).encrypt(plaintext))

    def open(self, box: bytes) -> dict[str, Any]:
        """Open the peer's sealed message; a failure means a wrong code."""
        peer = "agent" if self.side == "console" else "console"
        try:
            plaintext = self._box(f"{peer}->peer").decrypt(box)
        except nacl.exceptions.CryptoError as exc:
            raise PairingError("the code did not match: pairing failed") from exc
        try:
            payload = json.loads(plaintext)
        except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, too deep
            raise ProtocolError("sealed payload is not JSON") from exc
        if not isinstance(payload, dict):
            raise ProtocolError("sealed payload is not a JSON object")
        return payload

    @property
    def sas(self) -> str:
        """A short fingerprint of the shared key, e.g. ``7F3A-91C2``, the same on
        both ends only if nobody sits in between with the code."""
        digest = _derive(self._require_key(), "sas", self.session, 4).hex().upper()
        return f"{digest[:4]}-{digest[4:]}"

    def resume_secret(self) -> bytes:
        """A 32-byte secret, the same on both paired ends, for proving a resume
        after a dropped link (`broker.wire.resume.ResumeKey`).

        Derived from the SPAKE2 key under its own purpose, so it is never a
        box key or the fingerprint, and bound to the session id. The broker
        never has the SPAKE2 key, so it cannot compute this either."""
        return _derive(self._require_key(), "resume", self.session)
