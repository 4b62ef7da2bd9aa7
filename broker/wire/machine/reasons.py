"""Why a session ended, in words, and the refusal of a broker that cannot record.

An end reason is the session's "mood" (magic-wormhole's transit relay): one
per session, chosen where the machine ends it, sent to both ends in `ended`
and kept in the closing audit event.
"""

from __future__ import annotations

__all__ = ["AUDIT_UNAVAILABLE", "END_MESSAGES", "end_message"]

# Human wording of each end reason, shown on the other side's screen.
END_MESSAGES: dict[str, str] = {
    "customer_ended": "The customer ended the session.",
    "engineer_left": "The engineer left the session.",
    "engineer_removed": "The customer removed the engineer from the session.",
    "shell_exited": "The remote shell exited.",
    "agent_quit": "The customer closed the support program.",
    "wrong_code": "The code did not match. The customer has been warned and shown a new code.",
    # Not the code: the customer's computer refused the engineer key offered
    # in pairing, as it is not the one the broker announced for this engineer.
    "key_mismatch": "The customer's computer refused the connection: the engineer's key it "
                    "received did not match the one the broker announced (possible "
                    "interception). The customer has been warned and shown a new code.",
    "denied": "The customer declined the request.",
    "timeout": "The customer did not answer in time, so the request was declined.",
    "idle_timeout": "The session was idle for too long and was ended.",
    "max_duration": "The session reached its maximum duration and was ended.",
    "agent_lost": "The connection to the customer's computer was lost.",
    "console_lost": "The connection to the engineer was lost.",
    "agent_unreachable": "The customer's computer did not answer the join request.",
    "protocol_error": "A protocol error ended the session.",
    "audit_unavailable": "The broker cannot record sessions right now, so none can start.",
    "broker_shutdown": "The broker is shutting down.",
}

# Fail closed: what an agent or console is told when the audit log cannot be
# written (disk full, the operator's --audit-max-mb reached, database error).
AUDIT_UNAVAILABLE = ("the broker cannot record sessions right now, so no session can start; "
                     "ask the operator to check the audit log's disk space or quota")


def end_message(reason: str) -> str:
    return END_MESSAGES.get(reason, reason)
