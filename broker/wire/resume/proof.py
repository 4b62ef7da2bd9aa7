"""Proving a resume: only the two paired ends can, never the broker.

A dropped end comes back on a new link and says which session it resumes.
The broker routes that to the peer, but it must not be able to attach
anyone else by "resuming": the proof is keyed with a secret both ends
derived from their SPAKE2 key (`Pairing.resume_secret`), which the broker
never had.

A challenge-response, both ways, with one fresh nonce from each side:

    resumer                                  challenger (the peer)
    resume {attempt, nonce_r, received_r} ──▶
                        ◀── resume_challenge {nonce_c, received_c, proof_c}
    checks proof_c (so the peer is the paired end, not the broker)
    resume_proof {proof_r} ─────────────────▶ checks proof_r

Each proof is an HMAC over the whole exchange (session, who resumes, the
attempt number, both nonces, both received offsets) under a label naming
who proves, so a proof cannot be reflected to its sender, replayed on
another attempt, or kept while the broker changes an offset. The
challenger's nonce is fresh for every attempt, so a recorded proof never
opens a later one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.wire.errors import ResumeError
from broker.wire.limits import MAX_STREAM_OFFSET, RESUME_NONCE_BYTES, RESUME_PROOF_BYTES

__all__ = [
    "NONCE_BYTES",
    "PROOF_BYTES",
    "ResumeChallenge",
    "ResumeKey",
    "ResumeRequest",
    "ResumeVerifier",
    "Resumer",
    "Side",
]

# Same as broker.wire.e2e.Side, not imported from there: this module needs
# only the secret, not the pairing machinery (SPAKE2, NaCl).
Side = Literal["console", "agent"]
_SIDES: tuple[Side, ...] = ("console", "agent")

NONCE_BYTES = RESUME_NONCE_BYTES
PROOF_BYTES = RESUME_PROOF_BYTES

# The attempt number rides in JSON too; the same ceiling as the offsets.
MAX_ATTEMPT = MAX_STREAM_OFFSET

_KEY_LABEL = b"consentry resume proof v1|"
_TRANSCRIPT_LABEL = b"consentry-resume-v1"


def _check_side(side: object) -> None:
    if side not in _SIDES:
        raise ValueError(f"a side is 'console' or 'agent', not {side!r}")


def _peer_of(side: Side) -> Side:
    return "agent" if side == "console" else "console"


def _check_received(received: int, what: str) -> None:
    if isinstance(received, bool) or not isinstance(received, int) \
            or not 0 <= received <= MAX_STREAM_OFFSET:
        raise ResumeError(f"{what} is not a valid byte offset")


@dataclass(frozen=True)
class ResumeRequest:
    """What the resuming end sends first (the proposed `resume` message)."""

    attempt: int
    nonce: bytes
    received: int  # the resumer's received offset: where the peer's replay starts


@dataclass(frozen=True)
class ResumeChallenge:
    """The peer's answer (`resume_challenge`): its nonce, its received offset,
    and its own proof, so the resumer knows it speaks to the paired end."""

    nonce: bytes
    received: int
    proof: bytes


class ResumeKey:
    """The session's resume key, on one paired end.

    `secret` is `Pairing.resume_secret()`; HKDF with this module's label and
    the session id makes a key used for nothing but resume proofs."""

    def __init__(self, secret: bytes, session: str) -> None:
        if len(secret) < 32:
            raise ValueError("a resume secret has at least 32 bytes")
        self.session = session
        self._key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None,
            info=_KEY_LABEL + session.encode(),
        ).derive(secret)

    def transcript(self, resumer: Side, request: ResumeRequest,
                   challenger_nonce: bytes, challenger_received: int) -> bytes:
        """The exchange as bytes, every field fixed-size or length-prefixed, so
        two different exchanges never encode alike."""
        _check_side(resumer)
        session = self.session.encode()
        return b"".join((
            _TRANSCRIPT_LABEL,
            struct.pack(">H", len(session)), session,
            resumer.encode().ljust(8, b"\0"),
            struct.pack(">Q", request.attempt),
            request.nonce, challenger_nonce,
            struct.pack(">QQ", request.received, challenger_received),
        ))

    def prove(self, prover: Side, transcript: bytes) -> bytes:
        _check_side(prover)
        label = f"proof by {prover}|".encode()
        return hmac.new(self._key, label + transcript, hashlib.sha256).digest()

    def check(self, prover: Side, transcript: bytes, proof: bytes) -> bool:
        """Whether `proof` is `prover`'s proof of `transcript`, in constant time."""
        return hmac.compare_digest(self.prove(prover, transcript), proof)


def _check_nonce(nonce: bytes, who: str) -> None:
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise ResumeError(f"the {who}'s resume nonce is not {NONCE_BYTES} bytes")


class Resumer:
    """The end that lost its link and comes back: asks, checks the peer, proves.

    Each `request` is a new attempt with a fresh nonce; only the latest one
    can be answered, once."""

    def __init__(self, key: ResumeKey, side: Side,
                 token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        _check_side(side)
        self.key = key
        self.side: Side = side
        self._token_bytes = token_bytes
        self._attempt = 0
        self._pending: ResumeRequest | None = None

    def request(self, received: int) -> ResumeRequest:
        """Start an attempt; `received` is this end's `ReceiveCursor.received`."""
        _check_received(received, "this end's received offset")
        if self._attempt >= MAX_ATTEMPT:
            raise ResumeError("no resume attempts are left for this session")
        self._attempt += 1
        self._pending = ResumeRequest(self._attempt, self._token_bytes(NONCE_BYTES), received)
        return self._pending

    def answer(self, challenge: ResumeChallenge) -> bytes:
        """Check the peer's proof and return ours (the `resume_proof`).

        A challenge that does not prove the paired peer (the broker or anyone
        else answering in its place) is refused, and this attempt is spent."""
        request, self._pending = self._pending, None
        if request is None:
            raise ResumeError("a resume challenge came with no resume attempt open")
        _check_nonce(challenge.nonce, "peer")
        _check_received(challenge.received, "the peer's received offset")
        transcript = self.key.transcript(self.side, request, challenge.nonce,
                                         challenge.received)
        if not self.key.check(_peer_of(self.side), transcript, challenge.proof):
            raise ResumeError("the resume challenge is not from the paired end: refused")
        return self.key.prove(self.side, transcript)


class ResumeVerifier:
    """The end that stayed (or the peer of the one that dropped): challenges a
    resume and accepts it only with the resumer's valid proof.

    One challenge is open at a time (a newer request replaces it); a proof
    opens its own challenge once. An attempt number not above the last
    accepted one is refused, so the order of resumes is the resumer's."""

    def __init__(self, key: ResumeKey, side: Side,
                 token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        _check_side(side)
        self.key = key
        self.side: Side = side
        self._token_bytes = token_bytes
        self._accepted_attempt = 0
        self._pending: tuple[int, bytes] | None = None  # (attempt, transcript)

    @property
    def accepted_attempt(self) -> int:
        return self._accepted_attempt

    def challenge(self, request: ResumeRequest, received: int) -> ResumeChallenge:
        """Answer a `resume`; `received` is this end's `ReceiveCursor.received`."""
        attempt = request.attempt
        if isinstance(attempt, bool) or not isinstance(attempt, int) \
                or not 0 < attempt <= MAX_ATTEMPT:
            raise ResumeError("the resume attempt number is not valid")
        if attempt <= self._accepted_attempt:
            raise ResumeError(
                f"resume attempt {attempt} is not newer than the last accepted one "
                f"({self._accepted_attempt}): refused as a replay")
        _check_nonce(request.nonce, "resuming end")
        _check_received(request.received, "the resuming end's received offset")
        _check_received(received, "this end's received offset")
        nonce = self._token_bytes(NONCE_BYTES)
        transcript = self.key.transcript(_peer_of(self.side), request, nonce, received)
        self._pending = (attempt, transcript)
        return ResumeChallenge(nonce, received, self.key.prove(self.side, transcript))

    def verify(self, proof: bytes) -> int:
        """Check the `resume_proof`; returns the accepted attempt number.

        Refused when no challenge is open, or the proof is not the resumer's
        for this very exchange; either way the open challenge is spent."""
        pending, self._pending = self._pending, None
        if pending is None:
            raise ResumeError("a resume proof came with no resume challenge open")
        attempt, transcript = pending
        if not isinstance(proof, bytes) or len(proof) != PROOF_BYTES \
                or not self.key.check(_peer_of(self.side), transcript, proof):
            raise ResumeError("the resume proof does not match this session: refused")
        self._accepted_attempt = attempt
        return attempt
