"""The registry: who may log in to the broker, with which key; and which
key each customer device first came with.

Only public keys are stored (one OpenSSH line, comment stripped), so the file
holds nothing that lets anyone log in. Engineers prove possession of the
private key at login (`broker.auth`); this module only answers "is there an
engineer called X, with which key and role".

Devices are bound to their key on first sight (trust on first use, as SSH's
known_hosts): a later `hello` with the same device id and another key is an
impostor who would otherwise have its consents recorded under the real
device's pseudonym, in that customer's export and erasure. Stored: the
device's pseudonym (never its id) and the SHA-256 of its public key.

The registry is small and changes rarely, so it is plain synchronous sqlite3
with a connection per call: no connection to keep alive or close, and the
admin CLI and a running broker can share the file safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from broker.errors import RegistryError
from broker.wire.text import printable, validate_label

__all__ = ["REGISTRY_FILE", "ROLES", "Engineer", "Registry", "ThreadedRegistry", "device_digest",
           "new_engineer", "parse_ed25519_public_key"]

ROLES = frozenset({"engineer", "admin"})
# Names appear in audit events, consent prompts and file paths: keep them to a
# boring, unambiguous alphabet so no two names look alike on a customer screen.
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
# 1: engineers. 2: devices (a version-1 file gains the table on first use).
_SCHEMA_VERSION = 2
# Plain SQL that SQLite and PostgreSQL both take: the cluster's registry
# (broker.pg_registry) makes the same tables.
# The registry's file in a broker's data directory.
REGISTRY_FILE = "registry.db"

REGISTRY_TABLES = """
CREATE TABLE IF NOT EXISTS engineers (
    name       TEXT PRIMARY KEY,
    display    TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('engineer', 'admin')),
    public_key TEXT NOT NULL UNIQUE,
    added      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    pseudonym  TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL,
    first_seen TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Engineer:
    name: str
    display: str
    role: str
    public_key: str  # "ssh-ed25519 AAAA...", no comment
    added: str  # UTC ISO 8601, e.g. 2025-01-31T09:00:00Z

    @property
    def fingerprint(self) -> str:
        """The OpenSSH SHA-256 fingerprint, e.g. ``SHA256:hs51ix7z...``."""
        return asyncssh.import_public_key(self.public_key).get_fingerprint("sha256")


def parse_ed25519_public_key(text: str) -> str:
    """Return the canonical ``ssh-ed25519 <base64>`` line for an OpenSSH public key.

    `text` may be a whole ``.pub`` file; the first non-empty line is used and
    its comment dropped (comments often carry e-mail addresses and hostnames,
    which the registry has no need to keep).
    """
    if "PRIVATE KEY" in text:
        raise RegistryError(
            "this is a private key; give the public key (the .pub file) instead — "
            "private keys never leave the engineer's machine"
        )
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line:
        raise RegistryError("the public key is empty")
    try:
        key = asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise RegistryError(f"not an OpenSSH public key: {exc}") from exc
    if key.get_algorithm() != "ssh-ed25519":
        raise RegistryError(
            f"only Ed25519 keys are accepted, got {printable(key.get_algorithm())} "
            "(make one with: ssh-keygen -t ed25519)"
        )
    algorithm, blob = key.export_public_key("openssh").decode("ascii").split()[:2]
    return f"{algorithm} {blob}"


def _validate_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise RegistryError(
            f"invalid engineer name {printable(name)!r}: use 1-32 characters a-z, 0-9, "
            "'.', '_' or '-', starting with a letter or digit"
        )


def new_engineer(name: str, public_key_text: str, *, role: str = "engineer",
                 display: str | None = None, now: dt.datetime) -> Engineer:
    """The engineer to register, every field checked (RegistryError if unfit);
    the one set of rules for every registry backend."""
    _validate_name(name)
    if role not in ROLES:
        raise RegistryError(
            f"invalid role {printable(role)!r}: choose one of {', '.join(sorted(ROLES))}"
        )
    display = name if display is None else display
    problem = validate_label(display)
    if problem is not None:
        raise RegistryError(f"display name {problem}")
    return Engineer(name=name, display=display, role=role,
                    public_key=parse_ed25519_public_key(public_key_text), added=_utc_text(now))


def device_digest(device_key: bytes) -> str:
    """What a registry keeps of a device's key: its SHA-256, in hex."""
    return hashlib.sha256(device_key).hexdigest()


def _utc_text(now: dt.datetime) -> str:
    if now.tzinfo is None:
        raise RegistryError("registry times must be timezone-aware")
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Registry:
    """Engineers and admins allowed to log in, stored in one sqlite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self._create_file()
        try:
            conn = sqlite3.connect(self.path, timeout=10.0)
        except sqlite3.Error as exc:
            raise RegistryError(f"cannot open the registry {self.path}: {exc}") from exc
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise RegistryError(
                    f"{self.path} was made by a newer consentry; upgrade to use it"
                )
            if version < _SCHEMA_VERSION:
                # Only on a new file: a read must not write (the broker reads
                # on every login while the admin CLI may be writing).
                conn.executescript(
                    f"BEGIN IMMEDIATE;{REGISTRY_TABLES}"
                    f"PRAGMA user_version = {_SCHEMA_VERSION};COMMIT;"
                )
            with conn:  # one transaction per call: commit, or roll back on error
                yield conn
        except sqlite3.Error as exc:
            raise RegistryError(f"registry {self.path}: {exc}") from exc
        finally:
            conn.close()

    def _create_file(self) -> None:
        """Create the directory (0700) and the file (0600) before sqlite does.

        sqlite would create the file with the umask's permissions; its journal
        files copy the database file's mode, so setting it here covers them.
        """
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        except OSError as exc:
            raise RegistryError(
                f"cannot create the registry {self.path}: {exc.strerror or exc}"
            ) from exc

    def add(
        self,
        name: str,
        public_key_text: str,
        *,
        role: str = "engineer",
        display: str | None = None,
        now: dt.datetime,
    ) -> Engineer:
        """Register `name` with an Ed25519 public key; raise RegistryError if unfit."""
        engineer = new_engineer(name, public_key_text, role=role, display=display, now=now)
        with self._connect() as conn:
            if self._get(conn, name) is not None:
                raise RegistryError(f"an engineer named {name!r} is already registered")
            row = conn.execute(
                "SELECT name FROM engineers WHERE public_key = ?", (engineer.public_key,)
            ).fetchone()
            if row is not None:
                raise RegistryError(
                    f"this key is already registered to {row[0]!r}; "
                    "each person needs their own key"
                )
            conn.execute(
                "INSERT INTO engineers (name, display, role, public_key, added) "
                "VALUES (?, ?, ?, ?, ?)",
                (engineer.name, engineer.display, engineer.role, engineer.public_key,
                 engineer.added),
            )
        return engineer

    @staticmethod
    def _get(conn: sqlite3.Connection, name: str) -> Engineer | None:
        row = conn.execute(
            "SELECT name, display, role, public_key, added FROM engineers WHERE name = ?",
            (name,),
        ).fetchone()
        return None if row is None else Engineer(*row)

    def get(self, name: str) -> Engineer | None:
        with self._connect() as conn:
            return self._get(conn, name)

    def list(self) -> list[Engineer]:
        """All registered engineers and admins, sorted by name."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT name, display, role, public_key, added FROM engineers ORDER BY name"
            ).fetchall()
        return [Engineer(*row) for row in rows]

    def remove(self, name: str) -> bool:
        """Remove `name`; False if there was no such engineer."""
        with self._connect() as conn:
            cursor = conn.execute("DELETE FROM engineers WHERE name = ?", (name,))
            return cursor.rowcount > 0

    def bind_device(self, pseudonym: str, device_key: bytes, *, now: dt.datetime) -> bool:
        """True if `device_key` is the key this device came with (binding it
        now if the device is new); False if the device is bound to another."""
        digest = device_digest(device_key)
        with self._connect() as conn:
            # One statement binds a new device; an existing one keeps its key.
            conn.execute(
                "INSERT INTO devices (pseudonym, key_sha256, first_seen) VALUES (?, ?, ?) "
                "ON CONFLICT(pseudonym) DO NOTHING",
                (pseudonym, digest, _utc_text(now)),
            )
            row = conn.execute("SELECT key_sha256 FROM devices WHERE pseudonym = ?",
                               (pseudonym,)).fetchone()
        return row is not None and hmac.compare_digest(str(row[0]), digest)


class ThreadedRegistry:
    """The SQLite registry as the broker's event loop calls it: each call in
    a thread (a file per call), the same two calls as `broker.pg_registry`."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def get(self, name: str) -> Engineer | None:
        return await asyncio.to_thread(self.registry.get, name)

    async def bind_device(self, pseudonym: str, device_key: bytes, *,
                          now: dt.datetime) -> bool:
        return await asyncio.to_thread(self.registry.bind_device, pseudonym, device_key,
                                       now=now)
