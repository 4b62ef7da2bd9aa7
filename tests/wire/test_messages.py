"""The control-frame codec: every schema type round-trips, and every kind of
malformed frame is a `ProtocolError` with a stable code, never a traceback."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from broker.wire.errors import ProtocolError
from broker.wire.limits import (
    MAX_ADMIN_FRAME,
    MAX_AUDIT_PAGE,
    MAX_CHAT_LINES,
    MAX_CONTROL_FRAME,
    MAX_LABEL,
    PROTOCOL_VERSION,
)
from broker.wire.messages import (
    AUDIT_FILTERS,
    CONTROL_DECISIONS,
    RIGHTS,
    SCHEMA,
    Message,
    b64decode,
    b64encode,
    decode,
    encode,
    parse_time,
    validate,
)

B32 = b64encode(bytes(range(32)))
SIG64 = b64encode(b"\x01" * 64)

# One valid set of fields per message type, optional fields included.
B64_32 = base64.b64encode(bytes(32)).decode()
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
    "consent_sealed": {"seq": 7, "checkpoint": '{"payload":{},"signature":""}'},
    "rights": {"granted": ["view"]},
    "confirm_live": {"id": 3},
    "live": {"id": 3},
    "input_dropped": {"bytes": 17},
    "file_transferred": {"direction": "upload", "bytes": 17, "outcome": "complete"},
    "chat_lines": {"engineer": 3, "customer": 2},
    "invite": {},
    "invitation": {"nameplate": "48213", "expires_in": 600},
    "resume": {"session": "s1", "token": "t" * 32, "attempt": 1, "nonce": B64_32,
               "received": 4096},
    "resume_challenge": {"nonce": B64_32, "received": 0, "proof": B64_32},
    "resume_proof": {"proof": B64_32},
    "resume_accepted": {},
    "resume_refused": {},
    "interrupted": {"window": 120},
    "resumed": {"gap_ms": 3200},
    "ack": {"offset": 2**53 - 1},
    "remove": {},
    "roster": {"seats": [{"seat": "console", "login": "alice", "display": "Alice",
                          "rights": ["view", "control"]},
                         {"seat": "console-2", "login": "bob", "display": "Bob",
                          "rights": ["view"]}],
               "you": "console-2"},
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
    "moved": {"url": "wss://node2.example:8443"},
    "request_control": {},
    "control_request": {},
    "control_result": {"decision": "unchanged", "granted": ["view"]},
    "audit_query": {
        "since": "2025-03-01T00:00:00Z",
        "until": "2025-03-02",
        "engineer": "alice",
        "alias": "Kim's laptop",
        "event_type": "consent_granted",
        "session": "s-1",
        "before_seq": 1200,
        "limit": 50,
    },
    "audit_page": {
        "events": [
            {
                "seq": 7, "time": "2025-03-01T12:00:00.000000Z", "type": "agent_connected",
                "session": None, "actor": None, "subject": "ab" * 16, "alias": "Kim ✓",
                "ip": "192.0.2.7", "body": {"shared": []},
            },
        ],
        "more": True,
    },
    "audit_session_query": {"session": "s-1"},
    "audit_session": {
        "events": [
            {
                "seq": 9, "time": "2025-03-01T12:00:01.000000Z", "type": "consent_granted",
                "session": "s-1", "actor": "alice", "subject": "ab" * 16, "alias": None,
                "ip": None, "body": {"upgrade": True},
                "receipt": {"decision": "granted", "asked": ["view", "control"]},
                "receipt_verified": True,
            },
        ],
        "more": False,
    },
    "audit_verify": {},
    "audit_verify_result": {"ok": False, "summary": "audit log NOT intact", "first_bad_seq": 7},
}

EVENT = SAMPLES["audit_page"]["events"][0]


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
    for wants in (["view"], ["control"], ["view", "control"], ["control", "view"],
                  ["view", "files"], ["view", "control", "files"], ["files"]):
        assert decode(encode("join", nameplate="482", wants=wants))["wants"] == wants
    assert set(RIGHTS) == {"view", "control", "files"}


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


# -- control requests -----------------------------------------------------


def test_control_result_decisions() -> None:
    for decision in CONTROL_DECISIONS:
        msg = decode(encode("control_result", decision=decision, granted=["view"]))
        assert msg["decision"] == decision
    assert set(CONTROL_DECISIONS) == {"granted", "denied", "timeout", "unchanged"}
    for value in ("maybe", "GRANTED", "", 1, None):
        field_refused("control_result", decision=value)


# -- the admin audit API --------------------------------------------------


def test_audit_filters_are_the_optional_query_fields() -> None:
    schema = SCHEMA["audit_query"]
    assert set(AUDIT_FILTERS) == {name for name, spec in schema.items() if not spec.required}
    assert set(schema) - set(AUDIT_FILTERS) == {"limit"}


@pytest.mark.parametrize("value", [0, MAX_AUDIT_PAGE + 1, -1, True, "50", 1.0])
def test_audit_limit_bounds(value: Any) -> None:
    field_refused("audit_query", limit=value)


def test_audit_limit_and_filters_accepted() -> None:
    for limit in (1, MAX_AUDIT_PAGE):
        assert decode(encode("audit_query", limit=limit))["limit"] == limit
    field_refused("audit_query", before_seq=0)


@pytest.mark.parametrize(
    "value", ["yesterday", "2025-13-01", "", "1" * 41, 5, None, "0001-01-01T00:00:00+01:00"]
)
def test_bad_times(value: Any) -> None:
    field_refused("audit_query", since=value)


def test_parse_time_defaults_to_utc() -> None:
    import datetime as dt

    assert parse_time("2025-03-01") == dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    assert parse_time("2025-03-01T12:00:00Z") == dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC)
    paris = parse_time("2025-03-01T13:00:00+01:00")
    assert paris == dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "value",
    [
        "events",
        {"seq": 1},
        [1],
        [None],
        [[EVENT]],
        [EVENT] * (MAX_AUDIT_PAGE + 1),
        [{**EVENT, "seq": "7"}],
        [{**EVENT, "seq": True}],
        [{**EVENT, "body": "text"}],
        [{**EVENT, "alias": 5}],
        [{**EVENT, "ip": "x" * 257}],
        [{**EVENT, "receipt": "not an object"}],
    ],
)
def test_bad_event_lists(value: Any) -> None:
    fields = {**SAMPLES["audit_page"], "events": value}
    with pytest.raises(ProtocolError):
        decode(frame("audit_page", **fields), limit=MAX_ADMIN_FRAME)
    with pytest.raises(ProtocolError):
        encode("audit_page", **fields)


def test_event_objects_have_exactly_the_documented_keys() -> None:
    extra = {**EVENT, "personal": {"alias": "x"}}
    refused(frame("audit_page", events=[extra], more=False), "unknown_field")
    lacking = {k: v for k, v in EVENT.items() if k != "subject"}
    refused(frame("audit_page", events=[lacking], more=False), "missing_field")


@pytest.mark.parametrize("value", ["true", 1, 0, None])
def test_bad_bool(value: Any) -> None:
    field_refused("audit_page", more=value)


def _big_page(count: int) -> str:
    event = {**EVENT, "body": {"pad": "p" * 4000}}
    return frame("audit_page", events=[event] * count, more=False)


def test_admin_replies_may_exceed_the_control_limit_when_the_reader_allows() -> None:
    raw = _big_page(20)
    assert MAX_CONTROL_FRAME < len(raw) < MAX_ADMIN_FRAME
    refused(raw, "too_big")  # the default reader keeps the small limit
    assert len(decode(raw, limit=MAX_ADMIN_FRAME)["events"]) == 20
    assert encode("audit_page", events=[{**EVENT, "body": {"pad": "p" * 4000}}] * 20,
                  more=False)


def test_the_larger_limit_is_only_for_the_admin_replies() -> None:
    raw = frame("login", user="a" * (2 * MAX_CONTROL_FRAME))
    refused(raw, "too_big")
    with pytest.raises(ProtocolError) as info:
        decode(raw, limit=MAX_ADMIN_FRAME)
    assert info.value.code == "too_big"


def test_admin_replies_have_a_ceiling_too() -> None:
    raw = _big_page(MAX_AUDIT_PAGE).replace("p" * 4000, "p" * 6000)
    assert len(raw) > MAX_ADMIN_FRAME
    with pytest.raises(ProtocolError) as info:
        decode(raw, limit=4 * MAX_ADMIN_FRAME)
    assert info.value.code == "too_big"
    event = {**EVENT, "body": {"pad": "p" * 6000}}
    with pytest.raises(ProtocolError) as info:
        encode("audit_page", events=[event] * MAX_AUDIT_PAGE, more=False)
    assert info.value.code == "too_big"


@pytest.mark.parametrize("reason", ["wrong code", "", "key mismatch", "KEY_MISMATCH"])
def test_pairing_failed_names_one_of_the_known_failures(reason: str) -> None:
    with pytest.raises(ProtocolError):
        validate("pairing_failed", {"reason": reason})


@pytest.mark.parametrize(("msg_type", "field"), [("input_dropped", "bytes"),
                                                 ("confirm_live", "id"), ("live", "id")])
@pytest.mark.parametrize("value", [-1, 2**60, 1.5, True, "3"])
def test_agent_claims_are_bounded_integers(msg_type: str, field: str, value: Any) -> None:
    with pytest.raises(ProtocolError):
        validate(msg_type, {field: value})


@pytest.mark.parametrize("field", ["engineer", "customer"])
@pytest.mark.parametrize("value", [-1, MAX_CHAT_LINES + 1, 1.5, True, "3", None])
def test_chat_lines_are_bounded_counts(field: str, value: Any) -> None:
    body: dict[str, Any] = {"engineer": 1, "customer": 1, field: value}
    with pytest.raises(ProtocolError):
        validate("chat_lines", body)


def test_chat_lines_carry_no_text() -> None:
    with pytest.raises(ProtocolError):
        validate("chat_lines", {"engineer": 1, "customer": 1, "text": "hello"})


@pytest.mark.parametrize("override", [
    {"direction": "sideways"}, {"direction": ""}, {"outcome": "withdrawn"}, {"outcome": 1},
    {"bytes": -1}, {"bytes": 2**60}, {"bytes": 1.5}, {"bytes": True}, {"name": "x.txt"},
])
def test_file_transferred_is_bounded_and_carries_no_name(override: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        validate("file_transferred", {**SAMPLES["file_transferred"], **override})


ROSTER_SEAT = {"seat": "console", "login": "alice", "display": "Alice", "rights": ["view"]}


@pytest.mark.parametrize("seat", [
    {**ROSTER_SEAT, "ip": "10.0.0.1"},  # no more than who, display and rights
    {k: v for k, v in ROSTER_SEAT.items() if k != "rights"},
    {**ROSTER_SEAT, "display": "Alice\x1b[2J"},  # a name with a terminal escape
    {**ROSTER_SEAT, "login": ""},
    {**ROSTER_SEAT, "rights": ["control"]},  # never without view
    {**ROSTER_SEAT, "rights": ["view", "root"]},
    {**ROSTER_SEAT, "seat": 7},
])
def test_a_roster_seat_is_who_display_and_rights_only(seat: dict[str, Any]) -> None:
    field_refused("roster", seats=[seat])


def test_a_roster_holds_at_most_the_engineers_a_session_may_have() -> None:
    from broker.wire.limits import MAX_ENGINEERS_PER_SESSION

    seats = [{**ROSTER_SEAT, "seat": f"console-{n}"} for n in range(MAX_ENGINEERS_PER_SESSION)]
    assert len(decode(encode("roster", seats=seats, you="console"))["seats"]) == len(seats)
    field_refused("roster", seats=[*seats, ROSTER_SEAT])
