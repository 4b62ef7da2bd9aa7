"""`make run` support: everything a developer needs to try consentry locally.

Makes (or keeps) the dev PKI, a dev admin SSH identity and its registry entry.
Every step is idempotent, so `make run` can call it on every start without
replacing a CA that agents already pin or a key an admin already uses.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from broker.certs import DEFAULT_NAMES, PkiPaths, cert_names, init_dev_pki, write_atomic
from broker.errors import ConfigError, RegistryError
from broker.registry import Engineer, Registry, parse_ed25519_public_key

__all__ = [
    "DEV_ADMIN_DISPLAY",
    "DEV_ADMIN_NAME",
    "DevSetup",
    "broker_url",
    "dev_setup",
    "ensure_identity",
]

DEV_ADMIN_NAME = "admin"
DEV_ADMIN_DISPLAY = "Dev Admin"


@dataclass(frozen=True)
class DevSetup:
    pki: PkiPaths
    names: list[str]  # names the broker certificate is valid for
    pki_status: str  # "created" or "kept"
    identity: Path  # the dev admin's private key file
    identity_status: str
    fingerprint: str
    registered: Engineer | None  # set only if registered by this run
    registry_status: str


def ensure_identity(path: Path) -> tuple[asyncssh.SSHKey, bool]:
    """Load the unencrypted Ed25519 key at `path`, or make it (0600, dir 0700).

    Returns the key and whether it was created now. The `.pub` next to it is
    rewritten if missing, so a deleted public half is not a dead end.
    """
    created = False
    if path.exists():
        try:
            key = asyncssh.read_private_key(path)
        except (OSError, asyncssh.KeyImportError, ValueError) as exc:
            raise ConfigError(f"cannot read the dev admin key {path}: {exc}") from exc
    else:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {path.parent}: {exc.strerror or exc}") from exc
        key = asyncssh.generate_private_key("ssh-ed25519", comment="consentry dev admin")
        # A dev convenience key: unencrypted so `make run` needs no prompt.
        write_atomic(path, key.export_private_key("openssh"), mode=0o600)
        created = True
    pub = path.with_name(path.name + ".pub")
    if created or not pub.exists():
        write_atomic(pub, key.export_public_key("openssh"), mode=0o644)
    return key, created


def _is_wildcard(host: str) -> bool:
    try:
        return not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def broker_url(host: str, port: int) -> str:
    """The wss:// URL clients use for a broker listening on `host`:`port`.

    A wildcard listen address (0.0.0.0, ::) is not something to connect to;
    on the same machine 127.0.0.1 reaches it (a "::" socket is dual-stack on
    Linux), and it is a name the dev certificate carries.
    """
    if _is_wildcard(host):
        host = "127.0.0.1"
    return f"wss://[{host}]:{port}" if ":" in host else f"wss://{host}:{port}"


def _cert_names(host: str) -> list[str]:
    names = list(DEFAULT_NAMES)
    if not _is_wildcard(host) and host not in names:
        # Listening on a specific address: the certificate must name it too.
        try:
            names.append(str(ipaddress.ip_address(host)))
        except ValueError:
            names.append(host)
    return names


def dev_setup(certs_dir: Path, data_dir: Path, host: str, *, now: dt.datetime) -> DevSetup:
    """Create what is missing; keep everything that exists."""
    pki = PkiPaths.in_directory(certs_dir)
    had_pki = all(p.exists() for p in (pki.ca_cert, pki.ca_key, pki.cert, pki.key))
    init_dev_pki(certs_dir, _cert_names(host))
    names = cert_names(pki.cert)

    try:
        # Made first and 0700: it will hold the registry, the audit log and keys
        # (mkdir(parents=True) would give intermediate directories the umask's mode).
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {data_dir}: {exc.strerror or exc}") from exc
    identity = data_dir / "dev-admin" / "id_ed25519"
    key, created = ensure_identity(identity)
    public_line = parse_ed25519_public_key(key.export_public_key("openssh").decode("ascii"))
    fingerprint = key.get_fingerprint("sha256")

    registry = Registry(data_dir / "registry.db")
    existing = registry.get(DEV_ADMIN_NAME)
    registered = None
    if existing is None:
        registered = registry.add(DEV_ADMIN_NAME, public_line, role="admin",
                                  display=DEV_ADMIN_DISPLAY, now=now)
        registry_status = "registered"
    elif existing.public_key == public_line:
        registry_status = "already registered"
    else:
        raise RegistryError(
            f"{DEV_ADMIN_NAME!r} is registered with another key than {identity}; "
            f"remove it with `consentry-broker engineer remove {DEV_ADMIN_NAME}` "
            "and run dev-setup again"
        )
    return DevSetup(
        pki=pki,
        names=names,
        pki_status="kept" if had_pki else "created",
        identity=identity,
        identity_status="created" if created else "kept",
        fingerprint=fingerprint,
        registered=registered,
        registry_status=registry_status,
    )
