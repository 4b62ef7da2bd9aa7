"""Data-subject requests: find a device, export what is held about it, erase it.

The data subject is a customer's device. Its events carry only its pseudonym;
its personal data (alias, IP address, hostname, OS user, signed consent
receipts) is encrypted under a key of its own. A person asking "what do you
hold about me?" names their device by the alias they gave it, which is found
through the alias blind index (`AuditKeys.alias_tag`), never compared in
clear. Several devices can share an alias; then the request must name one
with `device` — its pseudonym as listed, or the agent's device id.

- `find_subjects`: the devices using an alias, with what is held about them.
- `export_subject`: everything held about one device, decrypted — its events
  and their personal fields, and a note for each field already shredded.
- `erase_subject`: crypto-shreds one device: its key destroyed, its personal
  rows deleted (on SQLite zeroed on disk by secure_delete, WAL truncated; on
  PostgreSQL through `consentry_erase_subject`, see `broker.audit.pg_store`
  for what old row versions, WAL and backups keep), its alias tags gone with
  them; the events and the hash chain stay.

Both backends: the queries are the same SQL on the tables they hold alike,
run through the transaction's `select` (`broker.audit.interface.AdminTransaction`).

Exports and erasures are admin actions and are recorded (`subject_exported`,
`subject_erased`, with the pseudonym only, never the alias); so is a lookup
that found no device or several (`subject_lookup`), since its answer already
tells something about the people in the log.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

from broker.audit.chain import format_time
from broker.audit.interface import AdminTransaction, AuditStore
from broker.errors import AuditError
from broker.wire.errors import ProtocolError
from broker.wire.messages import b64decode
from broker.wire.text import printable

__all__ = ["EXPORT_FORMAT", "EraseReport", "SubjectInfo", "erase_subject", "export_subject",
           "find_subjects"]

EXPORT_FORMAT = "consentry-subject-export/1"
_PSEUDONYM_RE = re.compile(r"[0-9a-f]{32}")
# The personal fields the broker records with each event type (broker/server.py),
# so an export can say which fields of an event were shredded: once a personal
# row is deleted nothing else remembers what it held.
_PERSONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "agent_connected": ("alias", "ip"),  # + hostname/os_user as listed in body["shared"]
    "consent_granted": ("receipt", "receipt_signature", "device_key"),
    "consent_denied": ("receipt", "receipt_signature", "device_key"),
    "consent_timeout": ("receipt", "receipt_signature", "device_key"),
    "login_failed": ("user", "ip"),
}
_RETENTION_NOTE = "deleted when the retention period for personal data ended"


@dataclass(frozen=True)
class SubjectInfo:
    """One device as the log knows it. Times are UTC ISO 8601."""

    pseudonym: str
    first_seen: str | None  # its oldest event still held
    last_seen: str | None
    erased: bool  # its key is destroyed: none of its personal data can be read
    shredded_at: str | None  # when its key was last destroyed (erasure or retention)
    aliases: tuple[str, ...]  # the aliases in personal data still held, oldest first


@dataclass(frozen=True)
class EraseReport:
    pseudonym: str
    personal_rows: int  # personal records deleted
    already_erased: bool  # its key had been destroyed before this request
    event_seq: int  # the `subject_erased` event
    wal_truncated: bool  # False: a reader kept the WAL; old copies remain until the next purge


class _LookupFailed(AuditError):
    """No device, or more than one, for the request; `outcome` is recorded."""

    def __init__(self, outcome: str, message: str, devices: int = 0) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.devices = devices


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _shown(text: str) -> str:
    """An alias or device as typed, quoted and inert on a terminal."""
    return repr(printable(text, max_len=80))


async def find_subjects(audit: AuditStore, alias: str) -> list[SubjectInfo]:
    """The devices that reported `alias` (exactly, any case) in personal data
    still held, oldest first. Not recorded: the caller logs why it looked."""
    async with audit.maintenance(write=False) as work:
        return [await _info(work, p) for p in await _alias_matches(work, alias)]


async def export_subject(
    audit: AuditStore,
    alias: str,
    device: str | None = None,
    *,
    now: dt.datetime | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Everything held about one device, decrypted, as a JSON-ready dict.

    Raises AuditError when no device has the alias, or several do and
    `device` does not say which (the message lists them). The export is
    recorded as `subject_exported` (pseudonym and event count only) in the
    same transaction that read the data: an export that could not be
    recorded is not returned.
    """
    when = _utcnow() if now is None else now
    try:
        async with audit.maintenance() as work:
            pseudonym = await _resolve(work, alias, device)
            info = await _info(work, pseudonym)
            events = await _subject_events(work, pseudonym)
            seq = await work.append("subject_exported", now=when, actor=actor,
                                    pseudonym=pseudonym, body={"events": len(events)})
    except _LookupFailed as exc:
        await _record_lookup(audit, "export", exc, when, actor)
        raise
    notes = [
        "Events keep only the device's pseudonym; its personal data (alias, IP address, "
        "hostname, OS user, signed consent receipts) is stored encrypted under a key of "
        "its own and is shown here decrypted.",
    ]
    if info.erased:
        notes.append(f"The device's key was destroyed at {info.shredded_at}: none of its "
                     "earlier personal data can be read by anyone any more.")
    if any(e["shredded"] for e in events):
        notes.append("'shredded' lists, per event, personal fields that were recorded "
                     "but no longer exist, and why.")
    return {
        "format": EXPORT_FORMAT,
        "exported_at": format_time(when),
        "export_seq": seq,
        "subject": {
            "pseudonym": info.pseudonym, "first_seen": info.first_seen,
            "last_seen": info.last_seen, "erased": info.erased,
            "shredded_at": info.shredded_at, "aliases": list(info.aliases),
        },
        "notes": notes,
        "events": events,
    }


async def erase_subject(
    audit: AuditStore,
    alias: str,
    device: str | None = None,
    *,
    now: dt.datetime,
    actor: str | None = None,
) -> EraseReport:
    """Crypto-shred one device (see the module doc) and record `subject_erased`.

    Same device selection and errors as `export_subject`. The events stay, so
    the chain still verifies; if the device connects again it gets a new key,
    and what was erased stays erased.
    """
    time = format_time(now)
    try:
        async with audit.maintenance() as work:
            await work.require_secure_delete()
            pseudonym = await _resolve(work, alias, device)
            wrapped, _ = await _subject_row(work, pseudonym)
            already = wrapped is None
            ((held,),) = await work.select(
                "SELECT COUNT(*) FROM personal WHERE pseudonym = ?", pseudonym)
            rows = int(held)
            # The record first, then the shredding: on PostgreSQL the function
            # that shreds refuses unless its record comes right before it.
            seq = await work.append("subject_erased", now=now, actor=actor,
                                    pseudonym=pseudonym, body={"personal_rows": rows})
            await work.shred_subject(pseudonym, time)
    except _LookupFailed as exc:
        await _record_lookup(audit, "erase", exc, now, actor)
        raise
    truncated = await audit.truncate_wal()
    return EraseReport(pseudonym, rows, already, seq, truncated)


# -- finding the device -------------------------------------------------------


async def _alias_matches(work: AdminTransaction, alias: str) -> list[str]:
    """Pseudonyms with `alias` in personal data still readable, oldest first."""
    rows = await work.select(
        "SELECT p.pseudonym, MIN(p.seq) AS first FROM personal AS p "
        "JOIN subjects AS s ON s.pseudonym = p.pseudonym "
        "WHERE p.alias_tag = ? AND s.wrapped_key IS NOT NULL "
        "GROUP BY p.pseudonym ORDER BY first",
        work.keys.alias_tag(alias))
    return [str(row[0]) for row in rows]


async def _known(work: AdminTransaction, pseudonym: str) -> bool:
    ((known,),) = await work.select(
        "SELECT EXISTS (SELECT 1 FROM subjects WHERE pseudonym = ?) "
        "OR EXISTS (SELECT 1 FROM events WHERE subject = ?)", pseudonym, pseudonym)
    return bool(known)


async def _resolve(work: AdminTransaction, alias: str, device: str | None) -> str:
    """The one pseudonym the request is about, or _LookupFailed saying why not."""
    matches = await _alias_matches(work, alias)
    if device is None:
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise _LookupFailed(
                "not_found",
                f"no device with alias {_shown(alias)} in the personal data held (aliases "
                "older than the personal-data retention period are no longer kept); if the "
                "person can give their device id, pass --device with it",
            )
        choices = "; ".join(
            f"{info.pseudonym} (first seen {info.first_seen}, last seen {info.last_seen})"
            for info in [await _info(work, p) for p in matches]
        )
        raise _LookupFailed(
            "ambiguous",
            f"{len(matches)} devices are called {_shown(alias)}: pass --device with one of: "
            f"{choices}",
            devices=len(matches),
        )
    pseudonym = device if _PSEUDONYM_RE.fullmatch(device) else work.keys.pseudonym(device)
    if not await _known(work, pseudonym):
        pseudonym = work.keys.pseudonym(device)  # a device id that looks like a pseudonym
    if not await _known(work, pseudonym):
        raise _LookupFailed("not_found", f"no device {_shown(device)} in the audit log: "
                            "give a pseudonym as listed, or the agent's device id")
    if pseudonym not in matches and await _has_alias(work, pseudonym):
        raise _LookupFailed(
            "mismatch",
            f"device {pseudonym} is not called {_shown(alias)} in the personal data held; "
            "check the alias and the device",
        )
    # Not among the matches and no alias held: its aliases were shredded, so
    # the device (named exactly) is the only way left to find it.
    return pseudonym


async def _has_alias(work: AdminTransaction, pseudonym: str) -> bool:
    ((held,),) = await work.select(
        "SELECT EXISTS (SELECT 1 FROM personal AS p JOIN subjects AS s "
        "ON s.pseudonym = p.pseudonym WHERE p.pseudonym = ? AND p.alias_tag IS NOT NULL "
        "AND s.wrapped_key IS NOT NULL)", pseudonym)
    return bool(held)


async def _record_lookup(audit: AuditStore, request: str, exc: _LookupFailed,
                         now: dt.datetime, actor: str | None) -> None:
    body: dict[str, object] = {"request": request, "outcome": exc.outcome}
    if exc.devices:
        body["devices"] = exc.devices
    await audit.append("subject_lookup", now=now, actor=actor, body=body)


# -- reading what is held -------------------------------------------------------


async def _subject_row(work: AdminTransaction,
                       pseudonym: str) -> tuple[bytes | None, str | None]:
    """The subject's wrapped key and when it was last erased (None, None if
    the log holds no such subject)."""
    rows = await work.select("SELECT wrapped_key, erased FROM subjects WHERE pseudonym = ?",
                             pseudonym)
    if not rows:
        return None, None
    wrapped, erased = rows[0]
    return (None if wrapped is None else bytes(wrapped)), erased


async def _subject_key(work: AdminTransaction,
                       pseudonym: str) -> tuple[bytes | None, str | None]:
    wrapped, erased = await _subject_row(work, pseudonym)
    return (None if wrapped is None else work.keys.unwrap(wrapped)), erased


async def _info(work: AdminTransaction, pseudonym: str) -> SubjectInfo:
    # Seen: the device's own events, not the admin actions about it.
    ((first, last),) = await work.select(
        "SELECT MIN(time), MAX(time) FROM events WHERE subject = ? "
        "AND type NOT IN ('subject_exported', 'subject_erased')", pseudonym)
    key, erased = await _subject_key(work, pseudonym)
    aliases: list[str] = []
    if key is not None:
        rows = await work.select(
            "SELECT seq, ciphertext FROM personal WHERE pseudonym = ? "
            "AND alias_tag IS NOT NULL ORDER BY seq", pseudonym)
        for seq, ciphertext in rows:
            alias = (work.keys.open_personal(key, seq, ciphertext) or {}).get("alias")
            if alias is not None and alias not in aliases:
                aliases.append(alias)
    # Never keyed (no personal data ever recorded) is not erased.
    return SubjectInfo(pseudonym, first, last, key is None and erased is not None, erased,
                       tuple(aliases))


async def _subject_events(work: AdminTransaction, pseudonym: str) -> list[dict[str, Any]]:
    key, _ = await _subject_key(work, pseudonym)
    rows = await work.select(
        "SELECT e.seq, e.time, e.type, e.session, e.actor, e.body, p.ciphertext "
        "FROM events AS e LEFT JOIN personal AS p ON p.seq = e.seq "
        "WHERE e.subject = ? ORDER BY e.seq", pseudonym)
    erasures = [str(r[1]) for r in rows if r[2] == "subject_erased"]
    events = []
    for seq, time, type_, session, actor, body_text, ciphertext in rows:
        body = json.loads(body_text)
        personal = None
        if ciphertext is not None and key is not None:
            personal = work.keys.open_personal(key, seq, ciphertext)
        shredded: dict[str, str] = {}
        if personal is None:
            why = next((f"erased at {t} on the data subject's request" for t in erasures
                        if t >= time), _RETENTION_NOTE)
            expected = list(_PERSONAL_FIELDS.get(type_, ()))
            if type_ == "agent_connected" and isinstance(body.get("shared"), list):
                expected += [str(f) for f in body["shared"]]
            if ciphertext is not None and not expected:
                expected = ["personal data"]  # held, but no key opens it any more
            shredded = dict.fromkeys(expected, why)
        events.append({
            "seq": seq, "time": time, "type": type_, "session": session, "actor": actor,
            "body": body, "personal": None if personal is None else _readable(personal),
            "shredded": shredded,
        })
    return events


def _readable(personal: dict[str, str]) -> dict[str, Any]:
    """Personal fields as a person reads them: the consent receipt decoded
    (its exact signed bytes kept alongside, for checking the signature)."""
    out: dict[str, Any] = dict(personal)
    if "receipt" in personal:
        try:
            receipt = json.loads(b64decode(personal["receipt"]))
        except (ProtocolError, ValueError):
            receipt = None  # verified when recorded; never fail an export over it
        if isinstance(receipt, dict):
            out["receipt"] = receipt
            out["receipt_base64"] = personal["receipt"]
    return out
