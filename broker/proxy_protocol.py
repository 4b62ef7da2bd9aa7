"""The PROXY protocol, version 2: the header a TCP load balancer puts in
front of a connection it forwards, saying who the client really is.

Behind HAProxy in TCP mode every connection reaches the broker from the
balancer's address; with `send-proxy-v2` HAProxy first sends this binary
header, before the client's TLS, naming the client's address. The broker
reads it only from the balancers it is told to trust
(`serve --proxy-protocol-from`): from anyone else such a header would be a
client lying about its address.

Pure and I/O-free: `body_length` reads the fixed 16-byte start, `parse` the
whole header once the caller has read that many more bytes. Only version 2
is taken; version 1 (text) and anything else is refused with a message that
says how to configure the balancer. The specification:
https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["MAX_BODY", "PREFIX_LENGTH", "SIGNATURE", "Command", "Networks", "ProxyHeader",
           "ProxyProtocolError", "body_length", "build", "is_within", "parse", "parse_networks"]

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PREFIX_LENGTH = 16  # signature, version and command, family and transport, length

# The addresses take at most 216 bytes (two Unix paths); TLVs a balancer adds
# (an id, the SNI name) fit well within the rest. A longer header is refused
# rather than read: the broker holds no more than this per connection for it.
MAX_BODY = 1024

_VERSION = 0x2
_STREAM = 0x1
_INET, _INET6, _UNIX = 0x1, 0x2, 0x3
_ADDRESS_LENGTH = {_INET: 12, _INET6: 36, _UNIX: 216}


# The balancers whose PROXY headers are believed (`serve --proxy-protocol-from`).
Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


class ProxyProtocolError(ValueError):
    """The bytes are not a PROXY v2 header the broker can use; says why."""


class Command(enum.Enum):
    LOCAL = 0x0  # the balancer's own connection (a health check): no client
    PROXY = 0x1  # a client's connection, relayed


@dataclass(frozen=True)
class ProxyHeader:
    command: Command
    # The client's (address, port), or None when the header names none: a
    # LOCAL connection, or an unspecified or Unix-socket family. The caller
    # then uses the connection's own address, as the specification says.
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int  # of the whole header, in bytes


def body_length(prefix: bytes) -> int:
    """How many bytes follow the 16-byte `prefix`; raises ProxyProtocolError
    on anything but the start of a v2 header."""
    if len(prefix) < PREFIX_LENGTH:
        raise ProxyProtocolError(f"the PROXY header was cut short ({len(prefix)} of "
                                 f"{PREFIX_LENGTH} bytes)")
    if not prefix.startswith(SIGNATURE):
        raise ProxyProtocolError(_not_v2(prefix))
    version, command = prefix[12] >> 4, prefix[12] & 0x0F
    if version != _VERSION:
        raise ProxyProtocolError(f"PROXY protocol version {version} is not supported (only 2)")
    if command not in (c.value for c in Command):
        raise ProxyProtocolError(f"unknown PROXY command {command:#x}")
    (length,) = struct.unpack_from("!H", prefix, 14)
    if length > MAX_BODY:
        raise ProxyProtocolError(f"PROXY header of {length} bytes after its start is longer "
                                 f"than the {MAX_BODY} the broker accepts")
    return int(length)


def parse(header: bytes) -> ProxyHeader:
    """The complete header (its 16-byte start and `body_length` more bytes);
    anything after it is ignored (the caller should not have read it)."""
    length = body_length(header)
    if len(header) < PREFIX_LENGTH + length:
        raise ProxyProtocolError(f"the PROXY header was cut short ({len(header)} of "
                                 f"{PREFIX_LENGTH + length} bytes)")
    command = Command(header[12] & 0x0F)
    family, transport = header[13] >> 4, header[13] & 0x0F
    total = PREFIX_LENGTH + length
    if command is Command.LOCAL or family not in (_INET, _INET6):
        # LOCAL: whatever follows is to be ignored. An unspecified or Unix
        # family names no IP address; the connection's own stands.
        if command is Command.PROXY and family not in (0x0, _UNIX):
            raise ProxyProtocolError(f"unknown PROXY address family {family:#x}")
        return ProxyHeader(command, None, None, total)
    if transport != _STREAM:
        raise ProxyProtocolError("the PROXY header is not for a TCP (stream) connection")
    if length < _ADDRESS_LENGTH[family]:
        raise ProxyProtocolError(f"the PROXY header's addresses take {_ADDRESS_LENGTH[family]} "
                                 f"bytes but it has {length}")
    body = header[PREFIX_LENGTH:total]
    size = 4 if family == _INET else 16
    make = ipaddress.IPv4Address if family == _INET else ipaddress.IPv6Address
    source_ip, destination_ip = make(body[:size]), make(body[size:2 * size])
    source_port, destination_port = struct.unpack_from("!HH", body, 2 * size)
    return ProxyHeader(command, (str(source_ip), source_port),
                       (str(destination_ip), destination_port), total)


def build(source: tuple[str, int] | None, destination: tuple[str, int] | None = None) -> bytes:
    """A v2 header: PROXY for `source` (TCP over IPv4 or IPv6), or LOCAL when
    `source` is None. What a balancer sends; used by the tests and tools."""
    if source is None:
        return SIGNATURE + bytes([_VERSION << 4 | Command.LOCAL.value, 0]) + b"\x00\x00"
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0] if destination else
                               ("0.0.0.0" if src.version == 4 else "::"))  # noqa: S104
    if src.version != dst.version:
        raise ValueError("source and destination must both be IPv4 or both IPv6")
    family = _INET if src.version == 4 else _INET6
    body = src.packed + dst.packed + struct.pack(
        "!HH", source[1], destination[1] if destination else 0)
    return (SIGNATURE + bytes([_VERSION << 4 | Command.PROXY.value, family << 4 | _STREAM])
            + struct.pack("!H", len(body)) + body)


def is_within(address: str, networks: Networks) -> bool:
    """Whether `address` (an IP, perhaps IPv4-mapped) lies in one of `networks`."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def parse_networks(texts: Iterable[str]) -> Networks:
    """Addresses or networks (`10.0.0.5`, `10.0.0.0/24`, `::1`); raises
    ValueError naming the one that is neither."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or network") from None
    return tuple(networks)


def _not_v2(prefix: bytes) -> str:
    if prefix.startswith(b"PROXY "):
        return ("a PROXY protocol version 1 (text) header; configure the balancer to send "
                "version 2 (HAProxy: `send-proxy-v2` on the server line)")
    if prefix[:1] == b"\x16":
        return ("no PROXY header: the connection began with TLS; configure the balancer to "
                "send one (HAProxy: `send-proxy-v2`, and `check-send-proxy` for its checks)")
    return "no PROXY v2 header (its signature is missing)"
