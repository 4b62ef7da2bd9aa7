"""Consent receipts: signed by the device key, checked strictly by the broker."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import nacl.signing
import pytest

from broker.wire.errors import ProtocolError
from broker.wire.messages import b64encode, decode, encode
from broker.wire.receipt import Receipt, sign_receipt, verify_receipt

KEY = nacl.signing.SigningKey(bytes(range(32)))
DEVICE_KEY = bytes(KEY.verify_key)
NOW = dt.datetime(2025, 3, 1, 12, 30, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))


def receipt(**override: Any) -> Receipt:
    fields: dict[str, Any] = dict(
        session="s-1",
        device_id="dev-1",
        engineer="alice",
        key_fingerprint="SHA256:abc",
        asked=("view", "control"),
        granted=("view", "control"),
        decision="granted",
        now=NOW,
    )
    fields.update(override)
    return Receipt.make(**fields)


def signed_raw(fields: dict[str, Any], **dumps: Any) -> tuple[bytes, bytes]:
    """Sign arbitrary bytes with the real device key: the shape checks must
    hold even when the signature is good."""
    data = json.dumps(fields, **dumps).encode()
    return data, KEY.sign(data).signature


def canonical_fields(r: Receipt) -> dict[str, Any]:
    return json.loads(r.canonical())


def refused(data: bytes, signature: bytes, device_key: bytes = DEVICE_KEY) -> None:
    with pytest.raises(ProtocolError) as info:
        verify_receipt(data, signature, device_key)
    assert info.value.code == "bad_receipt"


def test_time_is_utc() -> None:
    assert receipt().time == "2025-03-01T10:30:05Z"


@pytest.mark.parametrize(
    ("asked", "granted", "decision"),
    [
        (("view", "control"), ("view", "control"), "granted"),
        (("view", "control"), ("view",), "granted"),
        (("view",), ("view",), "granted"),
        (("view", "control"), (), "denied"),
        (("view",), (), "timeout"),
    ],
)
def test_round_trip(asked: tuple[str, ...], granted: tuple[str, ...], decision: str) -> None:
    r = receipt(asked=asked, granted=granted, decision=decision)
    data, sig = sign_receipt(r, KEY)
    assert data == r.canonical()
    assert verify_receipt(data, sig, DEVICE_KEY) == r
    # And it fits the `consent` message that carries it.
    msg = decode(encode("consent", receipt=b64encode(data), signature=b64encode(sig)))
    assert msg["receipt"] == b64encode(data)


def test_tampered_bytes() -> None:
    data, sig = sign_receipt(receipt(granted=("view",)), KEY)
    refused(data.replace(b'"granted":["view"]', b'"granted":["view","control"]'), sig)
    flipped = bytearray(data)
    flipped[10] ^= 1
    refused(bytes(flipped), sig)
    bad_sig = bytearray(sig)
    bad_sig[0] ^= 1
    refused(data, bytes(bad_sig))


def test_wrong_key() -> None:
    data, _ = sign_receipt(receipt(), KEY)
    other = nacl.signing.SigningKey(bytes(32))
    refused(data, other.sign(data).signature)
    refused(data, KEY.sign(data).signature, bytes(other.verify_key))


@pytest.mark.parametrize("signature", [b"", b"short", bytes(65)])
def test_malformed_signature(signature: bytes) -> None:
    data, _ = sign_receipt(receipt(), KEY)
    refused(data, signature)


@pytest.mark.parametrize("device_key", [b"", bytes(31), bytes(33)])
def test_malformed_device_key(device_key: bytes) -> None:
    data, sig = sign_receipt(receipt(), KEY)
    refused(data, sig, device_key)


def test_non_canonical_json() -> None:
    fields = canonical_fields(receipt())
    refused(*signed_raw(fields))  # default separators: spaces
    unsorted = dict(reversed(fields.items()))
    refused(*signed_raw(unsorted, separators=(",", ":")))  # key order not sorted
    refused(*signed_raw(fields, sort_keys=True, separators=(",", ":"), indent=1))
    refused(*signed_raw({**fields, "extra": 1}, sort_keys=True, separators=(",", ":")))
    refused(*signed_raw({**fields, "session": 7}, sort_keys=True, separators=(",", ":")))
    # The canonical form of the same fields passes: the checks above are not
    # failing for some other reason.
    verify_receipt(*signed_raw(fields, sort_keys=True, separators=(",", ":")), DEVICE_KEY)


def sign_fields(r: Receipt) -> tuple[bytes, bytes]:
    data = r.canonical()
    return data, KEY.sign(data).signature


def test_granted_not_within_asked() -> None:
    refused(*sign_fields(receipt(asked=("view",), granted=("view", "control"))))


def test_asked_unknown_right() -> None:
    refused(*sign_fields(receipt(asked=("view", "root"), granted=("view",))))
    refused(*sign_fields(receipt(asked=("view", "root"), granted=("view", "root"))))


def test_refusal_with_rights() -> None:
    refused(*sign_fields(receipt(granted=("view",), decision="denied")))
    refused(*sign_fields(receipt(granted=("view",), decision="timeout")))


def test_grant_without_view() -> None:
    refused(*sign_fields(receipt(granted=("control",))))
    refused(*sign_fields(receipt(granted=())))


def test_unknown_decision() -> None:
    refused(*sign_fields(receipt(decision="maybe", granted=())))


def test_rights_that_are_not_strings() -> None:
    r = dataclasses.replace(receipt(), asked=(["view"],), granted=())  # type: ignore[arg-type]
    r = dataclasses.replace(r, decision="denied")
    refused(*sign_fields(r))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"receipt"',
        b'{"session":"s"}',
        b'{"a":"\xff"}',  # not UTF-8
        b"\xff\xfe\x00",
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_malformed_but_signed(data: bytes) -> None:
    refused(data, KEY.sign(data).signature)
