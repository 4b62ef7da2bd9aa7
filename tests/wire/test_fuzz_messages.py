"""Fuzzing the control-frame codec and the state table (hypothesis): whatever
arrives, the only failure is a ProtocolError (a WireError), never another
exception. Strategies come from the schema: every real type, with fields
of the right and the wrong kinds, missing and extra, oversize, and frames
that are not JSON, not UTF-8 or binary."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.wire.errors import ProtocolError, WireError
from broker.wire.limits import MAX_CONTROL_FRAME
from broker.wire.machine.protocol import Conn, Phase, check_binary, check_inbound
from broker.wire.messages import SCHEMA, decode, encode

FUZZ = settings(max_examples=120, deadline=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=20)


@st.composite
def schema_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A frame of a real type: each field kept, dropped or given any value,
    sometimes with a field the type does not have."""
    msg_type = draw(st.sampled_from(sorted(SCHEMA)))
    obj: dict[str, Any] = {"v": draw(st.sampled_from([1, 1, 1, 2, True, "1", None])),
                           "type": msg_type}
    for name in SCHEMA[msg_type]:
        choice = draw(st.integers(0, 3))
        if choice == 0:
            continue
        obj[name] = draw(json_values if choice == 1 else st.text(max_size=300)
                         if choice == 2 else st.lists(st.sampled_from(["view", "control", 1])))
    if draw(st.booleans()):
        obj[draw(st.text(max_size=8))] = draw(json_values)
    return obj


def frames() -> st.SearchStrategy[str | bytes]:
    as_json = schema_objects().map(lambda o: json.dumps(o, ensure_ascii=draw_ascii(o)))
    return st.one_of(
        as_json,
        st.text(max_size=200),
        st.binary(max_size=200),
        st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),
        st.integers(1, 4).map(lambda n: "[" * (MAX_CONTROL_FRAME // n)),
        st.just('{"v":1,"type":"hello","alias":"' + "x" * MAX_CONTROL_FRAME + '"}'),
    )


def draw_ascii(obj: dict[str, Any]) -> bool:
    return len(obj) % 2 == 0  # both spellings of non-ASCII text, deterministically


@FUZZ
@given(frames())
def test_decode_fails_only_with_a_protocol_error(frame: str | bytes) -> None:
    try:
        msg = decode(frame)
    except ProtocolError:
        return
    # What decodes re-encodes to a frame that decodes the same.
    again = decode(encode(msg.type, **msg.fields))
    assert again == msg


@FUZZ
@given(st.sampled_from(sorted(SCHEMA)),
       st.dictionaries(st.text(max_size=12).filter(lambda k: k != "msg_type"), json_values,
                       max_size=6))
def test_encode_fails_only_with_a_wire_error(msg_type: str, fields: dict[str, Any]) -> None:
    try:
        encode(msg_type, **fields)
    except WireError:
        pass


@FUZZ
@given(st.sampled_from(list(Conn)), st.sampled_from(list(Phase)), st.text(max_size=30))
def test_the_state_table_fails_only_with_a_protocol_error(conn: Conn, phase: Phase,
                                                         msg_type: str) -> None:
    checks: tuple[Callable[[], object], ...] = (
        lambda: check_inbound(conn, phase, msg_type), lambda: check_binary(conn, phase))
    for check in checks:
        try:
            check()
        except ProtocolError:
            pass
