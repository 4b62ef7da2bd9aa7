"""Errors of the shared protocol core.

    WireError
    ├── ProtocolError     a frame broke the protocol (bad JSON, unknown type,
    │                     unknown or missing field, too big, wrong state)
    ├── LocalProtocolError  we were about to break it ourselves: our bug,
    │                     logged as an internal error, never blamed on the peer
    ├── CodeError         a join code that cannot be parsed
    ├── PairingError      the end-to-end pairing failed (wrong code or tampering)
    └── ResumeError       a stream could not be resumed: an offset the sender
                          cannot serve, or a resume proof that does not check

Each program wraps these in its own exception root where it meets a person.
"""

from __future__ import annotations


class WireError(Exception):
    """Root of the protocol core's errors."""


class ProtocolError(WireError):
    """A peer sent something the protocol does not allow.

    `code` is a stable machine-readable reason sent back in the `error`
    message; the text is for the person reading the other side's screen.
    """

    def __init__(self, message: str, code: str = "protocol_error") -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(WireError):
    """Our own code was about to send what the protocol does not allow (a
    message the catalogue does not list for that connection and phase).

    Unlike `ProtocolError` this is never sent to the peer as its fault: the
    driver logs it as an internal error (after h11's LocalProtocolError)."""


class CodeError(WireError):
    """A join code that does not have the NAMEPLATE-SSS-SSS shape (4821-193-775)."""


class PairingError(WireError):
    """The PAKE key did not match: the code was wrong, or someone in between
    tried to guess it."""


class ResumeError(WireError):
    """A dropped stream cannot be resumed as asked: the peer claims an offset
    that was never sent or is no longer held, bytes would be lost, or its
    resume proof is forged or replayed. The session cannot continue on it."""
