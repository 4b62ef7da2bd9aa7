"""broker.proxy_protocol: the PROXY v2 header, parsed from bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from broker.proxy_protocol import (
    MAX_BODY,
    PREFIX_LENGTH,
    SIGNATURE,
    Command,
    ProxyProtocolError,
    body_length,
    build,
    is_within,
    parse,
    parse_networks,
)


def test_tcp4_source_and_destination() -> None:
    header = build(("203.0.113.7", 51234), ("192.0.2.1", 443))
    assert len(header) == PREFIX_LENGTH + 12
    assert body_length(header[:PREFIX_LENGTH]) == 12
    parsed = parse(header)
    assert parsed.command is Command.PROXY
    assert parsed.source == ("203.0.113.7", 51234)
    assert parsed.destination == ("192.0.2.1", 443)
    assert parsed.length == len(header)


def test_tcp6_source() -> None:
    parsed = parse(build(("2001:db8::7", 40000), ("2001:db8::1", 443)))
    assert parsed.source == ("2001:db8::7", 40000)
    assert parsed.length == PREFIX_LENGTH + 36


def test_handmade_bytes_with_a_tlv_after_the_addresses() -> None:
    # As HAProxy writes it: TCP over IPv4, then a TLV (type 0x05, unique id).
    addresses = bytes([203, 0, 113, 7, 127, 0, 0, 1]) + struct.pack("!HH", 1234, 8443)
    tlv = b"\x05" + struct.pack("!H", 3) + b"abc"
    body = addresses + tlv
    header = SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body
    parsed = parse(header + b"\x16\x03\x01 the TLS that follows")
    assert parsed.source == ("203.0.113.7", 1234)
    assert parsed.length == len(header)  # what follows is not the header's


def test_local_command_names_no_client() -> None:
    parsed = parse(build(None))
    assert parsed.command is Command.LOCAL
    assert parsed.source is None


def test_unspecified_family_names_no_client() -> None:
    parsed = parse(SIGNATURE + b"\x21\x00\x00\x00")
    assert parsed.command is Command.PROXY and parsed.source is None


@pytest.mark.parametrize(("data", "says"), [
    (b"PROXY TCP4 203.0.113.7 127.0.0.1 1234 443\r\n", "version 1"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(5), "began with TLS"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "signature is missing"),
    (SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "version 1 is not supported"),
    (SIGNATURE + b"\x2f\x11\x00\x0c" + bytes(12), "unknown PROXY command"),
    (SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_BODY + 1), "longer than"),
    (SIGNATURE + b"\x21\x11\x00\x0c" + bytes(4), "cut short"),
    (SIGNATURE + b"\x21", "cut short"),
    (SIGNATURE + b"\x21\x11\x00\x04" + bytes(4), "addresses take 12"),
    (SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12), "not for a TCP"),
    (SIGNATURE + b"\x21\x41\x00\x00", "unknown PROXY address family"),
])
def test_refused_with_a_reason(data: bytes, says: str) -> None:
    with pytest.raises(ProxyProtocolError, match=says):
        parse(data)


def test_garbage_never_raises_anything_else() -> None:
    import random

    rng = random.Random(14)
    for _ in range(2000):
        tail = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        data = SIGNATURE + tail if rng.random() < 0.7 else tail
        try:
            parse(data)
        except ProxyProtocolError:
            pass


def test_trusted_networks_take_addresses_networks_and_mapped_ipv4() -> None:
    networks = parse_networks(["10.0.0.5", "192.0.2.0/24", "fd00::/64"])
    assert is_within("10.0.0.5", networks) and not is_within("10.0.0.6", networks)
    assert is_within("192.0.2.200", networks) and is_within("fd00::1", networks)
    assert is_within("::ffff:10.0.0.5", networks)
    assert not is_within("", networks) and not is_within("/run/sock", networks)
    with pytest.raises(ValueError, match="'nope' is not an IP address or network"):
        parse_networks(["nope"])


def test_serve_takes_the_trusted_balancers_from_flags_and_the_config_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from broker.cli import main

    file = tmp_path / "broker.toml"
    file.write_text('proxy_protocol_from = ["10.0.0.2", "fd00::/64"]\n')
    assert main(["serve", "--config", str(file), "--print-config"]) == 0
    assert 'proxy_protocol_from = ["10.0.0.2/32", "fd00::/64"]' in capsys.readouterr().out
    assert main(["serve", "--proxy-protocol-from", "10.1.0.0/16", "--print-config"]) == 0
    assert 'proxy_protocol_from = ["10.1.0.0/16"]' in capsys.readouterr().out
