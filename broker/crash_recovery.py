"""Closing, at start-up, what a broker that died left open in the audit log.

A broker killed mid-session (`kill -9`, a power cut, an out-of-memory kill)
never records `session_ended` for its sessions or `agent_disconnected` for
its agents, and an admin reading the log would see sessions that never
ended. So each run is bracketed by `broker_started` and `broker_stopped`;
a start that finds the previous run without its `broker_stopped` reads that
run's events, works out what was still open (`left_open`, pure), and closes
each with reason `broker_crashed` before it serves anyone. Every session
still ends exactly once: only those with no closing event are closed.

What closes a join: `session_ended` once it was active; before that
`join_abandoned`, `pairing_failed`, or a refusal (`consent_denied`,
`consent_timeout` that answered the join rather than a later request for
control). An event that names a `seat` closes (or opens) one engineer's
place in a session with several, not the session: a second engineer's
join that failed leaves the session open. Agents are counted per device
pseudonym: connections minus disconnections.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from broker.audit.interface import AuditStore
from broker.audit.store import AuditLog
from broker.wire.codes import EndReason

__all__ = [
    "CRASH_REASON",
    "RUN_STARTED",
    "RUN_STOPPED",
    "LeftOpen",
    "close_what_a_crash_left_open",
    "left_open",
    "record_clean_stop",
]

RUN_STARTED = "broker_started"
RUN_STOPPED = "broker_stopped"
CRASH_REASON = EndReason.BROKER_CRASHED

_SESSION_CLOSERS = frozenset({"session_ended", "join_abandoned", "pairing_failed"})
_REFUSALS = frozenset({"consent_denied", "consent_timeout"})
_TYPES = ("join_requested", "session_started", *_SESSION_CLOSERS, *_REFUSALS,
          "agent_connected", "agent_disconnected")


@dataclass
class OpenSession:
    actor: str | None
    pseudonym: str | None
    granted: list[str] | None = None  # set once `session_started` was recorded


@dataclass
class LeftOpen:
    sessions: dict[str, OpenSession] = field(default_factory=dict)
    agents: Counter[str] = field(default_factory=Counter)  # pseudonym -> open connections


Row = tuple[str, str | None, str | None, str | None, dict[str, Any]]


def left_open(rows: Iterable[Row]) -> LeftOpen:
    """What a run's events, oldest first, leave open: (type, session, actor,
    subject pseudonym, body) in; open sessions and agent connections out."""
    found = LeftOpen()
    for type_, session, actor, subject, body in rows:
        if type_ == "agent_connected" and subject is not None:
            found.agents[subject] += 1
        elif type_ == "agent_disconnected" and subject is not None:
            if found.agents[subject] > 0:
                found.agents[subject] -= 1
        elif session is None:
            continue
        elif "seat" in body:
            continue  # one engineer of several: the session's own events decide
        elif type_ == "join_requested":
            found.sessions[session] = OpenSession(actor, subject)
        elif type_ == "session_started" and session in found.sessions:
            found.sessions[session].granted = list(body.get("granted", []))
        elif type_ in _SESSION_CLOSERS or (type_ in _REFUSALS and not body.get("upgrade")):
            found.sessions.pop(session, None)
    found.agents = +found.agents  # drop the zeros
    return found


async def close_what_a_crash_left_open(audit: AuditLog, *, now: dt.datetime) -> LeftOpen:
    """Close what the previous run left open (nothing after a clean stop),
    then record this run's start; one transaction, so a crash here repeats
    the work next time rather than doing half of it."""
    async with audit.maintenance() as work:
        marker = await (await work.db.execute(
            "SELECT seq, type FROM events WHERE type IN (?, ?) ORDER BY seq DESC LIMIT 1",
            (RUN_STARTED, RUN_STOPPED),
        )).fetchone()
        found = LeftOpen()
        if marker is None or marker[1] != RUN_STOPPED:
            placeholders = ", ".join("?" * len(_TYPES))
            cursor = await work.db.execute(
                f"SELECT type, session, actor, subject, body FROM events "  # noqa: S608 - constant placeholders
                f"WHERE seq > ? AND type IN ({placeholders}) ORDER BY seq",
                (0 if marker is None else int(marker[0]), *_TYPES),
            )
            found = left_open((t, s, a, p, json.loads(b)) for t, s, a, p, b in
                              await cursor.fetchall())
        for session, open_ in found.sessions.items():
            if open_.granted is None:
                await work.append("join_abandoned", now=now, session=session, actor=open_.actor,
                                  pseudonym=open_.pseudonym, body={"reason": CRASH_REASON})
            else:
                await work.append("session_ended", now=now, session=session, actor=open_.actor,
                                  pseudonym=open_.pseudonym,
                                  body={"reason": CRASH_REASON, "granted": open_.granted})
        for pseudonym, count in found.agents.items():
            for _ in range(count):
                await work.append("agent_disconnected", now=now, pseudonym=pseudonym,
                                  body={"reason": CRASH_REASON})
        await work.append(RUN_STARTED, now=now, body={
            "closed_sessions": len(found.sessions), "closed_agents": found.agents.total()})
    return found


async def record_clean_stop(audit: AuditStore, *, now: dt.datetime) -> None:
    """The run ended in order: every session and agent recorded its end."""
    await audit.append(RUN_STOPPED, now=now)
