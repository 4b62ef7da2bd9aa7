"""The engineer's own sessions as the TUI lists them: pure state, time passed in."""

from __future__ import annotations

from dataclasses import dataclass

from console.backend import LiveSession, Progress
from console.errors import (
    ConsoleError,
    JoinRefused,
    KeyMismatch,
    NotApproved,
    SessionFull,
    WrongCode,
)

# What the engineer can do next, per outcome.
NEXT_STEP = {
    "wrong code": "The code is used up. Ask the customer for the new code on their screen.",
    "key mismatch": "The code was right: do not blame it. Tell the customer and your "
                    "administrator; someone may be between you and the broker.",
    "declined": "The customer said no. Ask them if they want to try again with a new code.",
    "timed out": "The customer did not answer. Ask them to look at their screen; "
                 "a new code is shown there.",
    "session full": "Nobody else can join until an engineer leaves or is removed.",
    "refused": "Check the code with the customer; codes work once and expire after 10 minutes.",
    "failed": "Check the broker settings or try again.",
}


@dataclass(eq=False)
class SessionRecord:
    key: str
    code: str
    wants_control: bool
    created: float
    state: str = "joining"  # joining|pairing|waiting|active|ended|<outcome in NEXT_STEP>
    detail: str = "Connecting to the broker..."
    wants_files: bool = False
    alias: str = ""
    granted: tuple[str, ...] = ()
    started: float | None = None
    ended_at: float | None = None
    deadline: float | None = None
    live: LiveSession | None = None
    # Who else is in a shared session, with their rights (escaped text from
    # the broker's latest roster); "" while nobody else ever joined.
    others: str = ""

    @property
    def open(self) -> bool:
        return self.state in ("joining", "pairing", "waiting", "active")

    def elapsed(self, now: float) -> float:
        start = self.started if self.started is not None else self.created
        return (self.ended_at or now) - start

    def status_text(self, now: float) -> str:
        if self.state == "waiting" and self.deadline is not None:
            left = max(0, int(self.deadline - now + 0.999))
            return f"Waiting for the customer to approve ({left} s)."
        return self.detail

    def progress(self, step: Progress) -> None:
        self.state = {"connecting": "joining", "logged_in": "joining", "moved": "joining",
                      "approved": "active"}.get(step.state, step.state)
        self.detail = step.text
        self.deadline = step.deadline

    def activate(self, live: LiveSession, now: float) -> None:
        self.live = live
        self.alias = live.alias
        self.granted = live.granted
        self.state = "active"
        self.started = now
        self.deadline = None
        self.detail = f"Connected to {live.alias}."

    def fail(self, exc: ConsoleError, now: float) -> None:
        if isinstance(exc, WrongCode):
            outcome = "wrong code"
        elif isinstance(exc, KeyMismatch):
            outcome = "key mismatch"
        elif isinstance(exc, NotApproved):
            outcome = "timed out" if "did not answer" in str(exc) else "declined"
        elif isinstance(exc, SessionFull):
            outcome = "session full"
        elif isinstance(exc, JoinRefused):
            outcome = "refused"
        else:
            outcome = "failed"
        self.state = outcome
        self.deadline = None
        self.ended_at = now
        self.detail = f"{str(exc)[:1].upper()}{str(exc)[1:]}. {NEXT_STEP[outcome]}"

    def end(self, text: str, now: float) -> None:
        if self.state != "ended":
            self.state = "ended"
            self.ended_at = now
            self.detail = text
