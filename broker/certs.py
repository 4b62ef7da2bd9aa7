"""Development PKI: a private CA and a broker certificate it signs.

Agents and consoles pin the CA certificate (never the system store), so a
deployment only needs `ca.crt` distributed to them. This module makes that
material for development and tests with EC P-256 keys:

    certs/ca.crt      the CA agents and consoles pin          (0644)
    certs/ca.key      the CA's private key                     (0600)
    certs/broker.crt  the broker's TLS certificate, SAN names  (0644)
    certs/broker.key  the broker's TLS private key             (0600)

Private keys are written 0600 from the moment the file exists (created under a
temporary name with O_EXCL and renamed into place), so there is never a window
in which a key is readable by other users, nor a half-written key file.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.atomic_file import replace_atomically
from broker.errors import PkiError

__all__ = [
    "CA_VALIDITY",
    "SERVER_VALIDITY",
    "PkiPaths",
    "cert_names",
    "init_dev_pki",
    "issue_server_cert",
    "make_ca",
    "write_atomic",
    "write_pem_cert",
    "write_pem_key",
]

CA_VALIDITY = dt.timedelta(days=3650)
# 825 days is the longest leaf lifetime Apple platforms (and so many TLS
# stacks copying their policy) still accept for a server certificate.
SERVER_VALIDITY = dt.timedelta(days=825)
# Back-date certificates a little so a peer whose clock runs slightly behind
# does not reject a certificate made a second ago as "not yet valid".
_CLOCK_SKEW = dt.timedelta(minutes=5)

DEFAULT_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class PkiPaths:
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> PkiPaths:
        return cls(
            ca_cert=directory / "ca.crt",
            ca_key=directory / "ca.key",
            cert=directory / "broker.crt",
            key=directory / "broker.key",
        )


def write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Write `data` to `path` so readers see either the old or the whole new file.

    The temporary file is created 0600 under a random name with O_EXCL (an
    attacker-planted file or symlink is never reused), set to `mode` and
    fsynced before the rename, which replaces any existing file at `path`.
    """
    try:
        replace_atomically(path, data, mode=mode)
    except OSError as exc:
        raise PkiError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_pem_cert(path: Path, cert: x509.Certificate) -> None:
    write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def write_pem_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write an unencrypted PKCS#8 PEM private key, mode 0600 from creation."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, data, mode=0o600)


def _now(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise PkiError("certificate times must be timezone-aware")
    return now.astimezone(dt.UTC)


def make_ca(
    common_name: str = "consentry dev CA", *, now: dt.datetime | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Make a self-signed CA that may sign server certificates only (pathlen 0)."""
    start = _now(now) - _CLOCK_SKEW
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _general_name(name: str) -> x509.GeneralName:
    """An IP address SAN for anything that parses as one, a DNS name otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name or not name.isascii() or any(ch.isspace() for ch in name) or "/" in name:
        raise PkiError(f"{name!r} is neither an IP address nor a DNS name")
    return x509.DNSName(name)


def issue_server_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: Sequence[str] = DEFAULT_NAMES,
    *,
    now: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Issue a TLS server certificate for `names` (DNS names and IP addresses)."""
    if isinstance(names, str):
        # A bare string is a Sequence too; "localhost" must not become 9 names.
        names = (names,)
    if not names:
        raise PkiError("a server certificate needs at least one name")
    general_names = [_general_name(name) for name in dict.fromkeys(names)]
    start = _now(now) - _CLOCK_SKEW
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + SERVER_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # Strict X.509 verification (Python 3.13's default) wants the AKI.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def cert_names(path: Path) -> list[str]:
    """The SAN names (DNS and IP) of the certificate at `path`, for messages."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound) as exc:
        raise PkiError(f"cannot read certificate {path}: {exc}") from exc
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def _load_ca(paths: PkiPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot load the CA from {paths.ca_cert.parent}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{paths.ca_key} is not an EC private key")
    return cert, key


def _ensure_directory(directory: Path) -> None:
    if directory.is_dir():
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PkiError(f"certificate directory {directory} is not writable")
        return
    try:
        # 0700: the directory will hold private keys.
        directory.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise PkiError(
            f"cannot create certificate directory {directory}: {exc.strerror or exc}"
        ) from exc


def init_dev_pki(
    directory: Path, names: Sequence[str] = DEFAULT_NAMES, *, force: bool = False
) -> PkiPaths:
    """Make (or keep) a dev CA and a broker certificate for `names` in `directory`.

    Idempotent: existing files are kept unless `force`. If the CA exists but the
    broker certificate or key is missing, a new broker certificate is issued by
    the existing CA, so agents and consoles that already pin `ca.crt` keep
    working. A lone `ca.crt` or `ca.key` without its partner is an error
    (replacing it silently would break every client pinning the old CA).
    """
    directory = Path(directory)
    paths = PkiPaths.in_directory(directory)
    _ensure_directory(directory)
    have_ca_cert, have_ca_key = paths.ca_cert.exists(), paths.ca_key.exists()
    have_leaf = paths.cert.exists() and paths.key.exists()

    if not force and have_ca_cert and have_ca_key and have_leaf:
        return paths
    if not force and have_ca_cert != have_ca_key:
        present = paths.ca_cert if have_ca_cert else paths.ca_key
        raise PkiError(
            f"{present} exists without its partner; remove it or use --force "
            "to make a new CA (clients pinning the old CA will need the new ca.crt)"
        )

    if force or not have_ca_cert:
        ca_cert, ca_key = make_ca()
        # Key first: a certificate on disk without its key would be useless.
        write_pem_key(paths.ca_key, ca_key)
        write_pem_cert(paths.ca_cert, ca_cert)
    else:
        ca_cert, ca_key = _load_ca(paths)

    cert, key = issue_server_cert(ca_cert, ca_key, names)
    write_pem_key(paths.key, key)
    write_pem_cert(paths.cert, cert)
    return paths
