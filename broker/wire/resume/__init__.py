"""Resuming a session after a dropped link: the I/O-free core.

- `stream`: byte offsets, the bounded per-direction `ReplayBuffer` and the
  receiver's `ReceiveCursor`, so the SSH stream loses and repeats nothing;
- `proof`: the challenge-response that only the two paired ends can
  complete, keyed from the SPAKE2 pairing (`Pairing.resume_secret`);
- `window`: how long a lost end may come back (`RESUME_WINDOW_SECONDS`) and
  the reconnect backoff.

Not wired into the programs yet (see docs/design.md, "Not built yet").
"""

from __future__ import annotations

from broker.wire.resume.proof import (
    NONCE_BYTES,
    PROOF_BYTES,
    ResumeChallenge,
    ResumeKey,
    Resumer,
    ResumeRequest,
    ResumeVerifier,
)
from broker.wire.resume.stream import (
    ACK_EVERY_BYTES,
    MAX_REPLAY_BYTES,
    MAX_STREAM_OFFSET,
    ReceiveCursor,
    ReplayBuffer,
)
from broker.wire.resume.window import (
    BACKOFF_MAX_SECONDS,
    RESUME_WINDOW_SECONDS,
    Backoff,
    ResumeWindow,
)

__all__ = [
    "ACK_EVERY_BYTES",
    "BACKOFF_MAX_SECONDS",
    "MAX_REPLAY_BYTES",
    "MAX_STREAM_OFFSET",
    "NONCE_BYTES",
    "PROOF_BYTES",
    "RESUME_WINDOW_SECONDS",
    "Backoff",
    "ReceiveCursor",
    "ReplayBuffer",
    "ResumeChallenge",
    "ResumeKey",
    "ResumeRequest",
    "ResumeVerifier",
    "ResumeWindow",
    "Resumer",
]
