"""The TLS policy of the broker and its clients: AEAD suites only, the
broker's name in a subjectAltName, and certificate errors that say which.
Real handshakes on 127.0.0.1 with certificates made here."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.certs import issue_server_cert, make_ca, write_pem_cert, write_pem_key
from broker.client.link import LinkError, client_tls, open_link
from broker.errors import ConfigError
from broker.server import server_tls


@pytest.fixture
def ca(tmp_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    cert, key = make_ca()
    path = tmp_path / "ca.crt"
    write_pem_cert(path, cert)
    return cert, key, path


def _files(tmp_path: Path, name: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    write_pem_cert(cert_path, cert)
    write_pem_key(key_path, key)
    return cert_path, key_path


def _without_san(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                 ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


@asynccontextmanager
async def tls_server(ctx: ssl.SSLContext) -> AsyncIterator[int]:
    """A TLS listener on loopback that completes handshakes and says nothing."""
    async def handle(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _plain_server_ctx(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def test_every_tls12_suite_offered_is_aead(ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key = issue_server_cert(ca[0], ca[1], ["127.0.0.1"])
    server = server_tls(*_files(tmp_path, "broker", cert, key))
    client = client_tls(ca[2])
    for ctx in (server, client):
        tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12
        assert all(c["aead"] for c in tls12), [c["name"] for c in tls12 if not c["aead"]]


async def test_a_cbc_only_client_cannot_handshake_with_the_broker(  # type: ignore[no-untyped-def]
    ca, tmp_path: Path,
) -> None:
    cert, key = issue_server_cert(ca[0], ca[1], ["127.0.0.1"])
    async with tls_server(server_tls(*_files(tmp_path, "broker", cert, key))) as port:
        cbc = ssl.create_default_context(cafile=str(ca[2]))
        cbc.maximum_version = ssl.TLSVersion.TLSv1_2
        cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384")
        with pytest.raises((ssl.SSLError, ConnectionError)):  # refused, or cut off
            _r, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cbc)
            writer.close()
        good = ssl.create_default_context(cafile=str(ca[2]))
        good.maximum_version = ssl.TLSVersion.TLSv1_2
        _r, writer = await asyncio.open_connection("127.0.0.1", port, ssl=good)
        writer.close()


def test_the_broker_will_not_serve_a_certificate_without_a_san(  # type: ignore[no-untyped-def]
    ca, tmp_path: Path,
) -> None:
    cert, key = _without_san(ca[0], ca[1])
    with pytest.raises(ConfigError, match="subjectAltName"):
        server_tls(*_files(tmp_path, "nosan", cert, key))


async def _refusal(ca_path: Path, server: ssl.SSLContext) -> LinkError:
    async with tls_server(server) as port:
        with pytest.raises(LinkError) as info:
            await open_link(f"wss://127.0.0.1:{port}", "/v1/agent", ca_path)
    assert info.value.code == "bad_certificate"
    return info.value


async def test_a_certificate_naming_the_host_only_in_its_common_name_is_refused(  # type: ignore[no-untyped-def]
    ca, tmp_path: Path,
) -> None:
    cert, key = _without_san(ca[0], ca[1])
    error = await _refusal(ca[2], _plain_server_ctx(*_files(tmp_path, "nosan", cert, key)))
    assert "does not name 127.0.0.1 in its subjectAltName" in str(error)


async def test_certificate_errors_say_which(ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other, other_key = issue_server_cert(ca[0], ca[1], ["broker.example"])
    error = await _refusal(ca[2], _plain_server_ctx(*_files(tmp_path, "o", other, other_key)))
    assert "does not name 127.0.0.1" in str(error)
    assert "not signed" not in str(error)

    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3 * 365)
    old_ca, old_ca_key = make_ca(now=past)
    old_ca_path = tmp_path / "old-ca.crt"
    write_pem_cert(old_ca_path, old_ca)
    expired, expired_key = issue_server_cert(old_ca, old_ca_key, ["127.0.0.1"], now=past)
    error = await _refusal(old_ca_path,
                           _plain_server_ctx(*_files(tmp_path, "e", expired, expired_key)))
    assert "expired" in str(error)

    stranger, stranger_key = make_ca("someone else")
    foreign, foreign_key = issue_server_cert(stranger, stranger_key, ["127.0.0.1"])
    error = await _refusal(ca[2], _plain_server_ctx(*_files(tmp_path, "f", foreign, foreign_key)))
    assert "not signed by the CA" in str(error)


@pytest.mark.parametrize(("url", "says"), [
    ("ws://127.0.0.1:8443", "ws:// is a connection without TLS: use wss://127.0.0.1:8443"),
    ("http://127.0.0.1:8443", "http:// is a connection without TLS: use wss://127.0.0.1:8443"),
    ("127.0.0.1:8443", "the broker URL must start with wss://, like wss://127.0.0.1:8443"),
    ("ftp://broker.example", "the broker URL must start with wss://, like wss://broker.example"),
    ("wss://", "the broker URL wss:// names no host"),
])
async def test_a_broker_url_that_is_not_wss_says_what_to_type(
        tmp_path: Path, url: str, says: str) -> None:
    with pytest.raises(LinkError) as caught:
        await open_link(url, "/v1/agent", tmp_path / "ca.crt")
    assert says in str(caught.value)


async def test_an_https_broker_url_is_the_same_tls_connection(ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A URL copied from a browser: https:// is TLS too, so it is taken as
    # wss:// - shown by reaching the certificate check.
    other, other_key = issue_server_cert(ca[0], ca[1], ["broker.example"])
    async with tls_server(_plain_server_ctx(*_files(tmp_path, "o", other, other_key))) as port:
        with pytest.raises(LinkError) as caught:
            await open_link(f"https://127.0.0.1:{port}", "/v1/agent", ca[2])
    assert "does not name 127.0.0.1" in str(caught.value)
