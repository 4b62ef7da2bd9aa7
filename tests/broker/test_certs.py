"""The dev PKI: files, modes, certificate contents, a real TLS handshake."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from broker.certs import (
    PkiPaths,
    init_dev_pki,
    issue_server_cert,
    make_ca,
    write_pem_cert,
    write_pem_key,
)
from broker.errors import PkiError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_writes_four_files_with_safe_modes(tmp_path: Path) -> None:
    paths = init_dev_pki(tmp_path / "certs")
    assert paths == PkiPaths.in_directory(tmp_path / "certs")
    assert mode(tmp_path / "certs") == 0o700
    assert mode(paths.ca_key) == 0o600
    assert mode(paths.key) == 0o600
    assert mode(paths.ca_cert) == 0o644
    assert mode(paths.cert) == 0o644
    # No temporary files left behind.
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == [
        "broker.crt", "broker.key", "ca.crt", "ca.key",
    ]


def test_key_files_are_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    _, key = make_ca()
    old = os.umask(0)
    try:
        write_pem_key(tmp_path / "k.pem", key)
    finally:
        os.umask(old)
    assert mode(tmp_path / "k.pem") == 0o600


def test_broker_certificate_names_and_usage(tmp_path: Path) -> None:
    paths = init_dev_pki(tmp_path, ["localhost", "broker.example", "127.0.0.1", "::1"])
    cert = load(paths.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "broker.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    validity = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert validity.days == 825

    ca = load(paths.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == 3650


def test_broker_certificate_is_signed_by_the_ca(tmp_path: Path) -> None:
    paths = init_dev_pki(tmp_path)
    ca, cert = load(paths.ca_cert), load(paths.cert)
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    public_key.verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )
    # And a full path validation, name included, as a TLS client would do it.
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(
        x509.DNSName("localhost")
    )
    chain = verifier.verify(cert, [])
    assert chain[-1] == ca


def test_a_certificate_from_another_ca_does_not_verify(tmp_path: Path) -> None:
    paths = init_dev_pki(tmp_path)
    other_ca, other_key = make_ca("someone else")
    cert, _ = issue_server_cert(other_ca, other_key, ["localhost"])
    verifier = PolicyBuilder().store(Store([load(paths.ca_cert)])).build_server_verifier(
        x509.DNSName("localhost")
    )
    with pytest.raises(x509.verification.VerificationError):
        verifier.verify(cert, [])


@pytest.mark.parametrize("server_name", ["localhost", "127.0.0.1"])
async def test_real_tls_handshake_with_the_pinned_ca(tmp_path: Path, server_name: str) -> None:
    paths = init_dev_pki(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(paths.cert, paths.key)
    client_ctx = ssl.create_default_context(cafile=str(paths.ca_cert))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname=server_name
        )
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        writer.close()
        await writer.wait_closed()


def test_init_is_idempotent_and_force_replaces(tmp_path: Path) -> None:
    paths = init_dev_pki(tmp_path)
    first = {p: p.read_bytes() for p in (paths.ca_cert, paths.ca_key, paths.cert, paths.key)}
    assert init_dev_pki(tmp_path) == paths
    assert {p: p.read_bytes() for p in first} == first

    init_dev_pki(tmp_path, force=True)
    assert all(p.read_bytes() != data for p, data in first.items())
    assert mode(paths.ca_key) == 0o600


def test_missing_broker_cert_is_reissued_by_the_existing_ca(tmp_path: Path) -> None:
    paths = init_dev_pki(tmp_path)
    ca_bytes, old_cert = paths.ca_cert.read_bytes(), paths.cert.read_bytes()
    paths.key.unlink()
    init_dev_pki(tmp_path, ["localhost"])
    assert paths.ca_cert.read_bytes() == ca_bytes
    assert paths.cert.read_bytes() != old_cert
    PolicyBuilder().store(Store([load(paths.ca_cert)])).build_server_verifier(
        x509.DNSName("localhost")
    ).verify(load(paths.cert), [])


def test_a_lone_ca_key_is_not_silently_replaced(tmp_path: Path) -> None:
    paths = init_dev_pki(tmp_path)
    paths.ca_cert.unlink()
    with pytest.raises(PkiError, match="without its partner"):
        init_dev_pki(tmp_path)


def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(PkiError, match="cannot create certificate directory"):
        init_dev_pki(tmp_path / "a-file" / "certs")


@pytest.mark.parametrize("name", ["", "bad name", "a/b", "exämple.com"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(PkiError, match="neither an IP address nor a DNS name"):
        init_dev_pki(tmp_path, ["localhost", name])


def test_helpers_round_trip(tmp_path: Path) -> None:
    ca, ca_key = make_ca("test CA")
    cert, key = issue_server_cert(ca, ca_key, "localhost")  # a bare string is one name
    write_pem_cert(tmp_path / "c.pem", cert)
    write_pem_key(tmp_path / "k.pem", key)
    assert load(tmp_path / "c.pem") == cert
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
