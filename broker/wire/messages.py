"""Control messages: the schema of every JSON text frame, and its codec.

A control frame is a JSON object ``{"v": 1, "type": T, ...fields}``. Each
type has a fixed set of fields; an unknown type, an unknown or missing
field, a value of the wrong kind or size, or a frame over the limit is a
`ProtocolError` — never silently accepted, never a traceback for the peer.

Binary frames are not described here: they are opaque relay bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.wire.errors import ProtocolError
from broker.wire.limits import MAX_CONTROL_FRAME, MAX_LABEL, PROTOCOL_VERSION

__all__ = [
    "RIGHTS",
    "Field",
    "Message",
    "b64decode",
    "b64encode",
    "decode",
    "encode",
]

# What an engineer may ask for and a customer may grant. `view` is implied
# by any session; `control` lets the engineer type.
RIGHTS = ("view", "control")


@dataclass(frozen=True)
class Field:
    """One field of a message: its kind and the bound on its size."""

    kind: str  # "str" | "int" | "b64" | "rights" | "digits" | "token"
    max: int = MAX_LABEL
    required: bool = True


_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_ID = Field("token")
_LABEL = Field("str", MAX_LABEL)
_REASON = Field("str", 200)

# type -> fields. Which side may send which type, and when, is the business
# of the state tables (`broker.wire.states`), not of the codec.
SCHEMA: dict[str, dict[str, Field]] = {
    # -- agent control connection (/v1/agent)
    "hello": {
        "device_id": _ID,
        "device_key": Field("b64", 32),
        "alias": _LABEL,
        "hostname": Field("str", 255, required=False),
        "os_user": Field("str", MAX_LABEL, required=False),
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
    },
    # -- agent session connection (/v1/agent/session)
    "attach": {"session": _ID, "token": _ID},
    "pairing_failed": {"reason": _REASON},
    "consent": {"receipt": Field("b64", 4096), "signature": Field("b64", 64)},
    "relay_open": {},
    "rights": {"granted": Field("rights")},
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
    # -- forwarded end to end, opaque to the broker
    "pake": {"body": Field("b64", 256)},
    "sealed": {"body": Field("b64", 4096)},
    # -- either connection
    "end": {"reason": _REASON},
    "ended": {"reason": _LABEL, "message": _REASON},
    "error": {"code": _LABEL, "message": _REASON},
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
        if type(value) is not int or not 0 <= value <= spec.max:
            raise ProtocolError(f"{where} must be an integer from 0 to {spec.max}")
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
    elif len(value) > spec.max:
        raise ProtocolError(f"{where} is longer than {spec.max} characters")


def validate(msg_type: str, fields: Mapping[str, Any]) -> Message:
    schema = SCHEMA.get(msg_type)
    if schema is None:
        raise ProtocolError(f"unknown message type {msg_type[:40]!r}", "unknown_type")
    unknown = set(fields) - set(schema)
    if unknown:
        names = ", ".join(sorted(n[:40] for n in unknown)[:5])
        raise ProtocolError(f"{msg_type} has unknown field(s): {names}", "unknown_field")
    for name, spec in schema.items():
        if name not in fields:
            if spec.required:
                raise ProtocolError(f"{msg_type} lacks field {name!r}", "missing_field")
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
    if len(frame.encode()) > MAX_CONTROL_FRAME:
        raise ProtocolError(f"{msg_type} frame would exceed {MAX_CONTROL_FRAME} bytes")
    return frame


def decode(frame: str | bytes) -> Message:
    """Parse and validate one control frame; raise `ProtocolError` if unfit."""
    if isinstance(frame, bytes):
        raise ProtocolError("expected a text (JSON) control frame, got binary data")
    try:
        size = len(frame) if len(frame) > MAX_CONTROL_FRAME else len(frame.encode())
    except UnicodeEncodeError as exc:
        raise ProtocolError("control frame is not valid Unicode text", "bad_json") from exc
    if size > MAX_CONTROL_FRAME:
        raise ProtocolError(f"control frame larger than {MAX_CONTROL_FRAME} bytes", "too_big")
    try:
        obj = json.loads(frame)
    # ValueError also covers integers longer than Python's int-string limit.
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("control frame is not valid JSON", "bad_json") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("control frame must be a JSON object", "bad_json")
    version = obj.pop("v", None)
    # `type(...) is int`: true and 1.0 compare equal to 1 but are not versions.
    if type(version) is not int or version != PROTOCOL_VERSION:
        shown = str(version)[:10] if isinstance(version, int | str) else type(version).__name__
        raise ProtocolError(
            f"unsupported protocol version {shown!r}, expected {PROTOCOL_VERSION}",
            "bad_version",
        )
    msg_type = obj.pop("type", None)
    if not isinstance(msg_type, str):
        raise ProtocolError("control frame lacks a string 'type'", "bad_json")
    return validate(msg_type, obj)
