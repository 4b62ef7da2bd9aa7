"""Why a session ended, in words, and the refusal of a broker that cannot record.

An end reason is the session's "mood" (magic-wormhole's transit relay): one
per session, chosen where the machine ends it, sent to both ends in `ended`
and kept in the closing audit event.
"""

from __future__ import annotations

from broker.wire.codes import EndReason

__all__ = ["AUDIT_UNAVAILABLE", "END_MESSAGES", "end_message"]

# Human wording of each end reason, shown on the other side's screen.
END_MESSAGES: dict[str, str] = {
    EndReason.CUSTOMER_ENDED: "The customer ended the session.",
    EndReason.ENGINEER_LEFT: "The engineer left the session.",
    EndReason.ENGINEER_REMOVED: "The customer removed the engineer from the session.",
    EndReason.SHELL_EXITED: "The remote shell exited.",
    EndReason.AGENT_QUIT: "The customer closed the support program.",
    EndReason.WRONG_CODE: ("The code did not match. The customer has been warned and shown a new "
                           "code."),
    # Not the code: the customer's computer refused the engineer key offered
    # in pairing, as it is not the one the broker announced for this engineer.
    EndReason.KEY_MISMATCH: ("The customer's computer refused the connection: the engineer's key "
                             "it received did not match the one the broker announced (possible "
                             "interception). The customer has been warned and shown a new code."),
    EndReason.DENIED: "The customer declined the request.",
    EndReason.TIMEOUT: "The customer did not answer in time, so the request was declined.",
    EndReason.IDLE_TIMEOUT: "The session was idle for too long and was ended.",
    EndReason.MAX_DURATION: "The session reached its maximum duration and was ended.",
    EndReason.AGENT_LOST: "The connection to the customer's computer was lost.",
    EndReason.CONSOLE_LOST: "The connection to the engineer was lost.",
    EndReason.AGENT_UNREACHABLE: "The customer's computer did not answer the join request.",
    EndReason.PROTOCOL_ERROR: "A protocol error ended the session.",
    EndReason.AUDIT_UNAVAILABLE: "The broker cannot record sessions right now, so none can start.",
    EndReason.BROKER_SHUTDOWN: "The broker is shutting down.",
    # Only in the audit log: crash recovery closes what a dead broker left open.
    EndReason.BROKER_CRASHED: "The broker stopped unexpectedly, which ended the session.",
}

# Fail closed: what an agent or console is told when the audit log cannot be
# written (disk full, the operator's --audit-max-mb reached, database error).
AUDIT_UNAVAILABLE = ("the broker cannot record sessions right now, so no session can start; "
                     "ask the operator to check the audit log's disk space or quota")


def end_message(reason: str) -> str:
    return END_MESSAGES.get(reason, reason)
