"""The control-frame codec: every schema type round-trips, and every kind of
malformed frame is a `ProtocolError` with a stable code, never a traceback."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.wire.errors import ProtocolError
from broker.wire.limits import MAX_CONTROL_FRAME, MAX_LABEL, PROTOCOL_VERSION
from broker.wire.messages import (
    RIGHTS,
    SCHEMA,
    Message,
    b64decode,
    b64encode,
    decode,
    encode,
    validate,
)

B32 = b64encode(bytes(range(32)))
SIG64 = b64encode(b"\x01" * 64)

# One valid set of fields per message type, optional fields included.
SAMPLES: dict[str, dict[str, Any]] = {
    "hello": {
        "device_id": "dev_01-A",
        "device_key": B32,
        "alias": "Kim's laptop ✓",
        "hostname": "kim-pc.example",
        "os_user": "kim",
    },
    "nameplate": {"nameplate": "482", "expires_in": 600},
    "join_request": {
        "nameplate": "482",
        "session": "s-1",
        "token": "tok_1",
        "engineer_login": "alice",
        "engineer_display": "Alice Example",
        "engineer_role": "engineer",
        "engineer_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFake",
        "wants": ["view", "control"],
    },
    "attach": {"session": "s-1", "token": "tok_1"},
    "pairing_failed": {"reason": "key_mismatch"},
    "consent": {"receipt": b64encode(b'{"decision":"granted"}'), "signature": SIG64},
    "relay_open": {},
    "rights": {"granted": ["view"]},
    "login": {"user": "alice"},
    "challenge": {"nonce": B32},
    "login_proof": {"signature": b64encode(b"\x02" * 83)},
    "login_ok": {"user": "alice", "display": "Alice", "role": "admin"},
    "join": {"nameplate": "48213", "wants": ["view"]},
    "joined": {"session": "s-1", "alias": "Kim's laptop"},
    "consent_result": {
        "decision": "granted",
        "granted": ["view", "control"],
        "receipt": b64encode(b"{}"),
        "signature": SIG64,
    },
    "pake": {"body": b64encode(b"A" + b"\x00" * 32)},
    "sealed": {"body": b64encode(b"\x00" * 200)},
    "end": {"reason": "engineer_left"},
    "ended": {"reason": "customer_ended", "message": "The customer ended the session."},
    "error": {"code": "unexpected_message", "message": "not now"},
}


def frame(msg_type: Any = "login", *, v: Any = PROTOCOL_VERSION, **fields: Any) -> str:
    """A raw frame built without the codec, so the codec can be handed junk."""
    return json.dumps({"v": v, "type": msg_type, **fields})


def refused(raw: str | bytes, code: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(raw)
    assert info.value.code == code, str(info.value)
    return info.value


def test_samples_cover_every_type() -> None:
    assert set(SAMPLES) == set(SCHEMA)


@pytest.mark.parametrize("msg_type", sorted(SCHEMA))
def test_round_trip(msg_type: str) -> None:
    fields = SAMPLES[msg_type]
    text = encode(msg_type, **fields)
    assert json.loads(text) == {"v": PROTOCOL_VERSION, "type": msg_type, **fields}
    msg = decode(text)
    assert msg == Message(msg_type, fields)
    for name, value in fields.items():
        assert msg[name] == value
        assert msg.get(name) == value


def test_optional_fields_may_be_left_out() -> None:
    fields = {k: v for k, v in SAMPLES["hello"].items() if k not in ("hostname", "os_user")}
    msg = decode(encode("hello", **fields))
    assert msg.get("hostname") is None
    assert msg.get("os_user", "-") == "-"


def test_non_ascii_text_survives() -> None:
    msg = decode(encode("login", user="Zoë 李 😀"))
    assert msg["user"] == "Zoë 李 😀"


# -- frame level ----------------------------------------------------------


def test_binary_frame_is_refused() -> None:
    with pytest.raises(ProtocolError):
        decode(encode("login", user="alice").encode())


@pytest.mark.parametrize("raw", ["", "{", "{'v': 1}", "nul", "[1,]", '{"v":1,"type":"login"'])
def test_invalid_json(raw: str) -> None:
    refused(raw, "bad_json")


@pytest.mark.parametrize("raw", ["[]", "null", "1", '"login"', "true", '[{"v":1}]'])
def test_non_object_json(raw: str) -> None:
    refused(raw, "bad_json")


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 5000 + "]" * 5000,
        '{"v":1,"type":"login","user":' + "[" * 5000 + "]" * 5000 + "}",
        '{"v":1,"type":"login","user":' + '{"a":' * 2500 + "1" + "}" * 2500 + "}",
    ],
)
def test_deeply_nested_json_is_a_protocol_error(raw: str) -> None:
    assert len(raw) <= MAX_CONTROL_FRAME
    refused(raw, "bad_json")


def test_nested_version_is_bad_version_not_recursion() -> None:
    refused('{"v":' + "[" * 500 + "]" * 500 + ',"type":"login","user":"a"}', "bad_version")


def test_huge_integer_is_a_protocol_error() -> None:
    # Python refuses to parse ints over 4300 digits with a plain ValueError.
    refused(
        frame("nameplate", nameplate="482", expires_in=0).replace("0}", "9" * 5000 + "}"),
        "bad_json",
    )
    refused('{"v":' + "9" * 5000 + ',"type":"relay_open"}', "bad_json")


def test_frame_over_the_limit() -> None:
    raw = frame("login", user="a" * MAX_CONTROL_FRAME)
    refused(raw, "too_big")


def test_frame_over_the_limit_in_bytes_not_characters() -> None:
    raw = frame("login", user="é" * (MAX_CONTROL_FRAME // 2))
    raw = raw.replace("\\u00e9", "é")  # json.dumps escaped it; send it raw
    assert len(raw) < MAX_CONTROL_FRAME < len(raw.encode())
    refused(raw, "too_big")


def test_lone_surrogate_in_raw_frame() -> None:
    refused('{"v":1,"type":"login","user":"\ud800"}', "bad_json")


@pytest.mark.parametrize("v", [None, 0, 2, "1", True, 1.0, [1], {"v": 1}])
def test_wrong_version(v: Any) -> None:
    refused(frame("relay_open", v=v), "bad_version")


def test_missing_version() -> None:
    refused(json.dumps({"type": "relay_open"}), "bad_version")


@pytest.mark.parametrize("t", [None, 1, ["login"], {"t": 1}])
def test_type_must_be_a_string(t: Any) -> None:
    refused(frame(t), "bad_json")


def test_missing_type() -> None:
    refused(json.dumps({"v": PROTOCOL_VERSION}), "bad_json")


def test_unknown_type() -> None:
    err = refused(frame("shell_exec", cmd="rm -rf /"), "unknown_type")
    assert len(str(err)) < 200
    refused(frame("x" * 5000), "unknown_type")
    with pytest.raises(ProtocolError) as info:
        encode("shell_exec")
    assert info.value.code == "unknown_type"


def test_unknown_field() -> None:
    refused(frame("login", user="alice", admin=True), "unknown_field")
    refused(frame("relay_open", extra=1), "unknown_field")
    with pytest.raises(ProtocolError) as info:
        encode("login", user="alice", role="admin")
    assert info.value.code == "unknown_field"


def test_missing_field() -> None:
    refused(frame("login"), "missing_field")
    fields = dict(SAMPLES["join_request"])
    del fields["wants"]
    refused(frame("join_request", **fields), "missing_field")
    with pytest.raises(ProtocolError) as info:
        encode("attach", session="s-1")
    assert info.value.code == "missing_field"


# -- field values ---------------------------------------------------------


def field_refused(msg_type: str, **override: Any) -> None:
    fields = {**SAMPLES[msg_type], **override}
    refused(frame(msg_type, **fields), "protocol_error")
    with pytest.raises(ProtocolError):
        encode(msg_type, **fields)


@pytest.mark.parametrize("value", ["600", True, False, -1, 86401, 1.5, None, [600]])
def test_bad_int(value: Any) -> None:
    field_refused("nameplate", expires_in=value)


def test_int_bounds_accepted() -> None:
    for value in (0, 86400):
        assert decode(encode("nameplate", nameplate="1", expires_in=value))["expires_in"] == value


@pytest.mark.parametrize("value", [1, None, True, ["alice"], {"n": "alice"}, "\ud800"])
def test_bad_str(value: Any) -> None:
    field_refused("login", user=value)


def test_str_length_limit() -> None:
    assert decode(encode("login", user="x" * MAX_LABEL))["user"] == "x" * MAX_LABEL
    field_refused("login", user="x" * (MAX_LABEL + 1))
    field_refused("hello", hostname="h" * 256)
    field_refused("end", reason="r" * 201)


@pytest.mark.parametrize(
    "value", ["", "has space", "semi;colon", "t" * 65, "émoji", "a/b", 7, "a\nb"]
)
def test_bad_token(value: Any) -> None:
    field_refused("attach", session=value)


def test_token_at_limit() -> None:
    assert decode(encode("attach", session="t" * 64, token="x"))["session"] == "t" * 64


@pytest.mark.parametrize(
    "value", ["", "12a", "123456789", "١٢٣", "²³", "１２３", " 482", "48-2", "+48", 482]
)
def test_bad_digits(value: Any) -> None:
    field_refused("join", nameplate=value)


def test_digits_at_limit() -> None:
    assert decode(encode("join", nameplate="12345678", wants=["view"]))["nameplate"] == "12345678"


@pytest.mark.parametrize(
    "value",
    [
        [],
        ["view", "view"],
        ["admin"],
        ["view", "root"],
        ["VIEW"],
        "view",
        None,
        [["view"]],
        [{"r": "view"}],
        [None],
        {"view": True},
    ],
)
def test_bad_rights(value: Any) -> None:
    field_refused("join", wants=value)


def test_every_right_subset_accepted() -> None:
    for wants in (["view"], ["control"], ["view", "control"], ["control", "view"]):
        assert decode(encode("join", nameplate="482", wants=wants))["wants"] == wants
    assert set(RIGHTS) == {"view", "control"}


@pytest.mark.parametrize(
    "value",
    [
        "not base64!",
        "AAA",  # missing padding
        "AA AA",
        "AAAA\n",
        "é",
        "\ud800",
        5,
        None,
    ],
)
def test_bad_base64(value: Any) -> None:
    field_refused("challenge", nonce=value)


def test_base64_decoded_length_limit() -> None:
    assert decode(encode("challenge", nonce=b64encode(b"n" * 32)))["nonce"]
    field_refused("challenge", nonce=b64encode(b"n" * 33))
    field_refused("consent", signature=b64encode(b"s" * 65))


def test_base64_text_length_checked_before_decoding() -> None:
    # Far too long to be 32 bytes, valid base64 or not.
    field_refused("challenge", nonce="A" * 10_000)
    field_refused("challenge", nonce="!" * 10_000)


def test_b64_helpers() -> None:
    data = bytes(range(256))
    assert b64decode(b64encode(data)) == data
    with pytest.raises(ProtocolError):
        b64decode("@@@@")


def test_validate_keeps_a_copy() -> None:
    fields = {"user": "alice"}
    msg = validate("login", fields)
    fields["user"] = "mallory"
    assert msg["user"] == "alice"
