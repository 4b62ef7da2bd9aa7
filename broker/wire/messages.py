"""Control messages: the schema of every JSON text frame, and its codec.

A control frame is a JSON object ``{"v": 1, "type": T, ...fields}``. Each
type has a fixed set of fields; an unknown type, an unknown or missing
field, a value of the wrong kind or size, or a frame over the limit is a
`ProtocolError` — never silently accepted, never a traceback for the peer.

Most control frames are small (`MAX_CONTROL_FRAME`); the replies of the
admin audit API may be larger (`FRAME_LIMITS`), and a reader that expects
them says so with `decode(frame, limit=...)`.

Binary frames are not described here: they are opaque relay bytes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from broker.wire.codes import REQUESTABLE, RIGHTS, ErrorCode, Right
from broker.wire.errors import ProtocolError
from broker.wire.limits import (
    MAX_ADMIN_FRAME,
    MAX_AUDIT_PAGE,
    MAX_AUDIT_SEQ,
    MAX_CHAT_LINES,
    MAX_CONTROL_FRAME,
    MAX_DROPPED_BYTES,
    MAX_ENGINEERS_PER_SESSION,
    MAX_LABEL,
    MAX_LIVENESS_ID,
    MAX_SESSION_EVENTS,
    MAX_STREAM_OFFSET,
    MAX_TRANSFER_BYTES,
    PAIRING_FAILURES,
    PROTOCOL_VERSION,
    RESUME_NONCE_BYTES,
    RESUME_PROOF_BYTES,
)
from broker.wire.text import validate_label

__all__ = [
    "AUDIT_FILTERS",
    "CONTROL_DECISIONS",
    "FRAME_LIMITS",
    "RIGHTS",
    "Field",
    "Message",
    "b64decode",
    "b64encode",
    "decode",
    "encode",
    "parse_time",
]

# What an engineer may ask for and a customer may grant (`RIGHTS`, from
# broker/wire/codes.py): `view` is implied by any session; `control` lets the
# engineer type.

# The answers to a `request_control`: the customer's three (as signed in the
# receipt), and "unchanged" — the broker's own answer when there was nothing
# to ask (control is already granted, or a request is already with the
# customer). "unchanged" never comes from the customer and grants nothing.
CONTROL_DECISIONS = ("granted", "denied", "timeout", "unchanged")
_REQUESTABLE = tuple(r.value for r in REQUESTABLE)

# The optional filters of an `audit_query` (its `limit` is required). The
# event type filter is `event_type`: `type` is the frame's own message type.
AUDIT_FILTERS = ("since", "until", "engineer", "alias", "event_type", "session", "before_seq",
                 "after_seq")

# Types allowed past MAX_CONTROL_FRAME, and how far. Everything else is small.
FRAME_LIMITS: dict[str, int] = {"audit_page": MAX_ADMIN_FRAME, "audit_session": MAX_ADMIN_FRAME}

ItemCheck = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Field:
    """One field of a message: its kind and the bounds on its value.

    Kinds: "str", "label" (a name people read: no control characters,
    `broker.wire.text.validate_label`), "int" (`min`..`max`), "bool", "b64"
    (decoded length), "rights", "digits", "token", "choice" (one of `choices`),
    "time" (ISO 8601 text), and
    "objects" (a list of at most `max` JSON objects, each checked by `item`).
    """

    kind: str
    max: int = MAX_LABEL
    required: bool = True
    min: int = 0
    choices: tuple[str, ...] = ()
    item: ItemCheck | None = None


_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_ID = Field("token")
_LABEL = Field("label", MAX_LABEL)
_REASON = Field("str", 200)
_MAX_TIME_CHARS = 40
# Event strings (type, session, actor, pseudonym, alias, ip, time) are short;
# the audit store allows at most 256 characters for each.
_MAX_EVENT_STR = 256

# One event object of an `audit_page` / `audit_session` reply: key -> the
# JSON types allowed for it. `receipt` only appears on consent events, and
# only while the customer's signed receipt is still held (not erased).
_EVENT_KEYS: dict[str, tuple[type, ...]] = {
    "seq": (int,),
    "time": (str,),
    "type": (str,),
    "session": (str, type(None)),
    "actor": (str, type(None)),
    "subject": (str, type(None)),
    "alias": (str, type(None)),
    "ip": (str, type(None)),
    "body": (dict,),
}
# `receipt_verified`: the receipt was checked as it is read (device key
# signature, its hash in the chained body, agreement with the body); absent
# when it cannot be checked (not held, or recorded without the device key).
_OPTIONAL_EVENT_KEYS: dict[str, tuple[type, ...]] = {"receipt": (dict,),
                                                     "receipt_verified": (bool,)}


def check_event(where: str, obj: dict[str, Any]) -> None:
    """Check the shape of one audit event object (see `_EVENT_KEYS`)."""
    unknown = set(obj) - set(_EVENT_KEYS) - set(_OPTIONAL_EVENT_KEYS)
    if unknown:
        names = ", ".join(sorted(str(n)[:40] for n in unknown)[:5])
        raise ProtocolError(f"{where} has unknown key(s): {names}", ErrorCode.UNKNOWN_FIELD)
    for key, kinds in (*_EVENT_KEYS.items(), *_OPTIONAL_EVENT_KEYS.items()):
        if key not in obj:
            if key in _EVENT_KEYS:
                raise ProtocolError(f"{where} lacks {key!r}", ErrorCode.MISSING_FIELD)
            continue
        value = obj[key]
        # `type(...) in`: a JSON true is not an integer sequence number.
        if type(value) not in kinds:
            raise ProtocolError(f"{where}.{key} has the wrong type")
        if isinstance(value, str) and len(value) > _MAX_EVENT_STR:
            raise ProtocolError(f"{where}.{key} is longer than {_MAX_EVENT_STR} characters")


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time as an aware UTC datetime; a time without an offset is UTC.

    Accepts a date alone (``2025-03-01``, meaning its midnight UTC) and ``Z``.
    """
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ProtocolError(
            f"{text[:_MAX_TIME_CHARS]!r} is not an ISO 8601 time such as 2025-03-01T09:30:00Z"
        ) from exc
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+01:00
        raise ProtocolError(f"{text[:_MAX_TIME_CHARS]!r} is out of range") from exc


_ROSTER_KEYS = {"seat", "login", "display", "rights"}


def _check_roster_seat(where: str, obj: dict[str, Any]) -> None:
    """One seat of a `roster`: its id, the engineer's login and display name
    (labels: printable, bounded) and the rights in force."""
    if set(obj) != _ROSTER_KEYS:
        raise ProtocolError(f"{where} must have exactly the keys {sorted(_ROSTER_KEYS)}")
    for key in ("seat", "login", "display"):
        if not isinstance(obj[key], str) or not 0 < len(obj[key]) <= MAX_LABEL:
            raise ProtocolError(f"{where}.{key} must be a short string")
    for key in ("login", "display"):
        problem = validate_label(obj[key])
        if problem is not None:
            raise ProtocolError(f"{where}.{key} {problem}")
    rights = obj["rights"]
    if (not isinstance(rights, list) or Right.VIEW not in rights
            or not all(isinstance(r, str) and r in RIGHTS for r in rights)
            or len(set(rights)) != len(rights)):
        raise ProtocolError(f"{where}.rights must be a list of known rights, with view")


# type -> fields. Which side may send which type, and when, is the business
# of the catalogue (`broker.wire.machine.protocol`), not of the codec.
SCHEMA: dict[str, dict[str, Field]] = {
    # -- agent control connection (/v1/agent)
    "hello": {
        "device_id": _ID,
        "device_key": Field("b64", 32),
        "alias": _LABEL,
        "hostname": Field("label", 255, required=False),
        "os_user": Field("label", MAX_LABEL, required=False),
    },
    "nameplate": {"nameplate": Field("digits", 8), "expires_in": Field("int", 86400)},
    "join_request": {
        "nameplate": Field("digits", 8),
        "session": _ID,
        "token": _ID,
        "engineer_login": _LABEL,
        "engineer_display": _LABEL,
        "engineer_role": _LABEL,
        "engineer_key": Field("str", 200),
        "wants": Field("rights"),
        # A node of a cluster: its own URL, where the agent opens the
        # session connection (a balancer might send it to another node).
        "node": Field("str", 200, required=False),
    },
    # -- agent session connection (/v1/agent/session)
    "attach": {"session": _ID, "token": _ID},
    "pairing_failed": {"reason": Field("choice", choices=PAIRING_FAILURES)},
    "consent": {"receipt": Field("b64", 4096), "signature": Field("b64", 64)},
    "relay_open": {},
    # broker -> agent session, after a consent event is recorded: the signed
    # checkpoint (`broker.audit.checkpoint_record`, canonical JSON) that
    # covers event `seq`, for the customer to keep beside the receipt. Sent
    # in pairing (after a refusal, before `ended`) or active (after
    # `relay_open`, or after an answer to a request for control); optional:
    # an agent that never gets it works the same.
    "consent_sealed": {"seq": Field("int", MAX_AUDIT_SEQ, min=1),
                       "checkpoint": Field("str", 1024)},
    "rights": {"granted": Field("rights")},
    # -- an active session, agent <-> broker: after its event loop stalled
    # (the process was stopped, the machine slept) the agent holds the
    # engineer's input and asks whether the session is still live. The
    # broker answers `live` only while it is; an ended session has already
    # been sent `ended`, which the agent reads first (one connection, in order).
    "confirm_live": {"id": Field("int", MAX_LIVENESS_ID)},
    "live": {"id": Field("int", MAX_LIVENESS_ID)},
    # The agent's running total of engineer input it dropped (view only, or
    # discarded after a stall): a claim the broker bounds by what it relayed
    # and records in `session_ended`. Sent at most once a second and before `end`.
    "input_dropped": {"bytes": Field("int", MAX_DROPPED_BYTES)},
    # One file the engineer of this seat copied, as the agent saw it: which
    # way, how many bytes actually moved, how it ended. Never a name.
    "file_transferred": {
        "direction": Field("choice", choices=("upload", "download")),
        "bytes": Field("int", MAX_TRANSFER_BYTES),
        "outcome": Field("choice", choices=("complete", "cancelled", "refused", "failed")),
    },
    # How many chat lines this seat's engineer sent, and the customer sent
    # while this seat was connected: running totals (never the text), sent
    # at most once a second and before `end`; recorded in `session_ended`.
    "chat_lines": {"engineer": Field("int", MAX_CHAT_LINES),
                   "customer": Field("int", MAX_CHAT_LINES)},
    # -- several engineers: the customer asks for a code for a colleague;
    # the broker answers with a nameplate bound to this session.
    "invite": {},
    "invitation": {"nameplate": Field("digits", 8), "expires_in": Field("int", 86400)},
    # The customer removes this seat's engineer (the others go on).
    "remove": {},
    # Who is in the session (active seats), sent to every active connection
    # of a shared session; `you`: the receiver's own seat.
    "roster": {"seats": Field("objects", MAX_ENGINEERS_PER_SESSION, item=_check_roster_seat),
               "you": _ID},
    # -- console connection (/v1/console)
    "login": {"user": _LABEL},
    "challenge": {"nonce": Field("b64", 32)},
    "login_proof": {"signature": Field("b64", 1024)},
    "login_ok": {"user": _LABEL, "display": _LABEL, "role": _LABEL},
    "join": {"nameplate": Field("digits", 8), "wants": Field("rights")},
    "joined": {"session": _ID, "alias": _LABEL},
    "consent_result": {
        "decision": _LABEL,
        "granted": Field("rights"),
        "receipt": Field("b64", 4096),
        "signature": Field("b64", 64),
    },
    # -- an active view-only session: the engineer asks for control
    # console -> broker; the broker forwards it to the agent session as
    # `control_request`, which asks the customer and proves nothing else.
    # The agent answers with a new signed `consent` (asked = view + control);
    # once that is recorded the broker sends `control_result` to the console
    # and to the agent (whose gate opens only on that confirmation).
    # `right` (control when absent, as older consoles send it): files is
    # asked for the same way, its own line on the customer's prompt.
    "request_control": {"right": Field("choice", choices=_REQUESTABLE, required=False)},
    "control_request": {"right": Field("choice", choices=_REQUESTABLE, required=False)},
    "control_result": {
        "decision": Field("choice", choices=CONTROL_DECISIONS),
        "granted": Field("rights"),  # the rights now in force
    },
    # -- admin audit API (console connection, after login; admins only)
    "audit_query": {
        "since": Field("time", _MAX_TIME_CHARS, required=False),  # inclusive
        "until": Field("time", _MAX_TIME_CHARS, required=False),  # exclusive
        "engineer": Field("str", MAX_LABEL, required=False),
        "alias": Field("str", MAX_LABEL, required=False),
        "event_type": Field("token", required=False),
        "session": Field("token", required=False),
        "before_seq": Field("int", MAX_AUDIT_SEQ, min=1, required=False),
        # Following the log: only events newer than this seq, and not the
        # reader's own earlier reads (see broker.admin_api).
        "after_seq": Field("int", MAX_AUDIT_SEQ, min=0, required=False),
        "limit": Field("int", MAX_AUDIT_PAGE, min=1),
    },
    "audit_page": {  # newest first; page on with before_seq = the last seq
        "events": Field("objects", MAX_AUDIT_PAGE, item=check_event),
        "more": Field("bool"),
    },
    "audit_session_query": {"session": _ID},
    "audit_session": {  # oldest first; `more`: cut short, the session has more
        "events": Field("objects", MAX_SESSION_EVENTS, item=check_event),
        "more": Field("bool"),
    },
    # The whole-log integrity check (broker.audit.verify), run by the broker.
    # `ok` false with no `first_bad_seq`: a problem not tied to one event
    # (the checkpoint file), or the check could not run — `summary` says which.
    "audit_verify": {},
    "audit_verify_result": {
        "ok": Field("bool"),
        "summary": Field("str", 1000),
        "first_bad_seq": Field("int", MAX_AUDIT_SEQ, min=0, required=False),
    },
    # -- surviving a drop (broker.wire.resume): the end whose link broke
    # comes back on a new one (a console after logging in again, an agent
    # side with its seat's token) and says `resume`; the broker hands it to
    # the peer, which challenges; the proofs are keyed from the pairing, so
    # the broker can neither make nor check them, and only the peer says
    # `resume_accepted`. `received`: how much of the peer's stream this end
    # has, so each side replays exactly what the other lacks.
    "resume": {"session": _ID, "token": Field("token", required=False),
               "attempt": Field("int", MAX_STREAM_OFFSET, min=1),
               "nonce": Field("b64", RESUME_NONCE_BYTES),
               "received": Field("int", MAX_STREAM_OFFSET)},
    "resume_challenge": {"nonce": Field("b64", RESUME_NONCE_BYTES),
                         "received": Field("int", MAX_STREAM_OFFSET),
                         "proof": Field("b64", RESUME_PROOF_BYTES)},
    "resume_proof": {"proof": Field("b64", RESUME_PROOF_BYTES)},
    "resume_accepted": {},
    "resume_refused": {},
    # broker -> an end: its peer's link broke (`window`: seconds the broker
    # holds the seat for it), then `resumed` once the two are joined again.
    "interrupted": {"window": Field("int", 86400)},
    "resumed": {"gap_ms": Field("int", 86400 * 1000)},
    # How much of the peer's stream this end has, so the peer forgets it.
    "ack": {"offset": Field("int", MAX_STREAM_OFFSET)},
    # -- forwarded end to end, opaque to the broker
    "pake": {"body": Field("b64", 256)},
    "sealed": {"body": Field("b64", 4096)},
    # -- either connection
    "end": {"reason": _REASON},
    "ended": {"reason": _LABEL, "message": _REASON},
    "error": {"code": _LABEL, "message": _REASON},
    # broker -> console, answering a join whose nameplate another node of
    # the cluster issued: that node's URL (wss://HOST:PORT); the console
    # reconnects there, once.
    "moved": {"url": Field("str", 200)},
}


@dataclass(frozen=True)
class Message:
    """A validated control message."""

    type: str
    fields: Mapping[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Decode standard base64 strictly (no whitespace, correct padding)."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ProtocolError("a base64 field is not valid base64") from exc


def _check_field(msg_type: str, name: str, spec: Field, value: Any) -> None:
    where = f"{msg_type}.{name}"
    if spec.kind == "int":
        if type(value) is not int or not spec.min <= value <= spec.max:
            raise ProtocolError(f"{where} must be an integer from {spec.min} to {spec.max}")
        return
    if spec.kind == "bool":
        if type(value) is not bool:
            raise ProtocolError(f"{where} must be true or false")
        return
    if spec.kind == "objects":
        if not isinstance(value, list) or len(value) > spec.max:
            raise ProtocolError(f"{where} must be a list of at most {spec.max} objects")
        for index, obj in enumerate(value):
            if not isinstance(obj, dict):
                raise ProtocolError(f"{where}[{index}] must be a JSON object")
            if spec.item is not None:
                spec.item(f"{where}[{index}]", obj)
        return
    if spec.kind == "rights":
        # Membership first: it also rules out unhashable items before set().
        if (
            not isinstance(value, list)
            or not value
            or any(r not in RIGHTS for r in value)
            or len(value) != len(set(value))
        ):
            raise ProtocolError(f"{where} must be a non-empty list drawn from {list(RIGHTS)}")
        return
    if not isinstance(value, str):
        raise ProtocolError(f"{where} must be a string")
    try:
        # JSON may spell a lone surrogate ("\\ud800"); it could never be
        # re-encoded as UTF-8 for the next hop.
        value.encode()
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"{where} is not valid Unicode text") from exc
    if spec.kind == "b64":
        if len(value) > 4 * (spec.max // 3 + 1):
            raise ProtocolError(f"{where} is too long")
        if len(b64decode(value)) > spec.max:
            raise ProtocolError(f"{where} is too long")
    elif spec.kind == "digits":
        if not (1 <= len(value) <= spec.max and value.isascii() and value.isdigit()):
            raise ProtocolError(f"{where} must be 1 to {spec.max} digits")
    elif spec.kind == "token":
        if not _TOKEN_RE.match(value):
            raise ProtocolError(f"{where} must be 1-64 letters, digits, '-' or '_'")
    elif spec.kind == "choice":
        if value not in spec.choices:
            raise ProtocolError(f"{where} must be one of {', '.join(spec.choices)}")
    elif spec.kind == "label":
        problem = validate_label(value, spec.max)
        if problem is not None:
            raise ProtocolError(f"{where} {problem}")
    elif spec.kind == "time":
        if len(value) > spec.max:
            raise ProtocolError(f"{where} is longer than {spec.max} characters")
        parse_time(value)
    elif len(value) > spec.max:
        raise ProtocolError(f"{where} is longer than {spec.max} characters")


def validate(msg_type: str, fields: Mapping[str, Any]) -> Message:
    schema = SCHEMA.get(msg_type)
    if schema is None:
        raise ProtocolError(f"unknown message type {msg_type[:40]!r}", ErrorCode.UNKNOWN_TYPE)
    unknown = set(fields) - set(schema)
    if unknown:
        names = ", ".join(sorted(n[:40] for n in unknown)[:5])
        raise ProtocolError(f"{msg_type} has unknown field(s): {names}", ErrorCode.UNKNOWN_FIELD)
    for name, spec in schema.items():
        if name not in fields:
            if spec.required:
                raise ProtocolError(f"{msg_type} lacks field {name!r}", ErrorCode.MISSING_FIELD)
            continue
        _check_field(msg_type, name, spec, fields[name])
    return Message(msg_type, dict(fields))


def encode(msg_type: str, **fields: Any) -> str:
    """Build a control frame, validating it as strictly as `decode` would."""
    validate(msg_type, fields)
    frame = json.dumps(
        {"v": PROTOCOL_VERSION, "type": msg_type, **fields},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    limit = FRAME_LIMITS.get(msg_type, MAX_CONTROL_FRAME)
    if len(frame.encode()) > limit:
        raise ProtocolError(f"{msg_type} frame would exceed {limit} bytes", ErrorCode.TOO_BIG)
    return frame


def decode(frame: str | bytes, *, limit: int = MAX_CONTROL_FRAME) -> Message:
    """Parse and validate one control frame; raise `ProtocolError` if unfit.

    `limit` bounds what is parsed at all: a reader that expects the large
    admin replies passes `MAX_ADMIN_FRAME`. Whatever the limit, each type
    must still fit its own bound (`FRAME_LIMITS`, else MAX_CONTROL_FRAME).
    """
    if isinstance(frame, bytes):
        raise ProtocolError("expected a text (JSON) control frame, got binary data")
    try:
        size = len(frame) if len(frame) > limit else len(frame.encode())
    except UnicodeEncodeError as exc:
        raise ProtocolError("control frame is not valid Unicode text", ErrorCode.BAD_JSON) from exc
    if size > limit:
        raise ProtocolError(f"control frame larger than {limit} bytes", ErrorCode.TOO_BIG)
    try:
        obj = json.loads(frame)
    # ValueError also covers integers longer than Python's int-string limit.
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("control frame is not valid JSON", ErrorCode.BAD_JSON) from exc
    if not isinstance(obj, dict):
        raise ProtocolError("control frame must be a JSON object", ErrorCode.BAD_JSON)
    version = obj.pop("v", None)
    # `type(...) is int`: true and 1.0 compare equal to 1 but are not versions.
    if type(version) is not int or version != PROTOCOL_VERSION:
        shown = str(version)[:10] if isinstance(version, int | str) else type(version).__name__
        raise ProtocolError(
            f"unsupported protocol version {shown!r}, expected {PROTOCOL_VERSION}",
            ErrorCode.BAD_VERSION,
        )
    msg_type = obj.pop("type", None)
    if not isinstance(msg_type, str):
        raise ProtocolError("control frame lacks a string 'type'", ErrorCode.BAD_JSON)
    type_limit = FRAME_LIMITS.get(msg_type, MAX_CONTROL_FRAME)
    if size > type_limit:
        raise ProtocolError(
            f"{msg_type[:40]} frame larger than {type_limit} bytes", ErrorCode.TOO_BIG
        )
    return validate(msg_type, obj)
