"""Encrypted backup and restore of a broker's data directory.

What goes in: a consistent snapshot of the audit database and the registry
(SQLite's online backup, so a running broker's WAL is included and nothing
half-written is copied) and the checkpoint file, copied *before* the audit
database, so every checkpoint in the backup covers events that are in it.

What stays out, on purpose: `master.key` (it unlocks the personal data and
the pseudonyms), `audit-wrap.keys` (the generations of the key that wraps
subject keys, `broker.audit.keyring`) and `audit.key` (it signs
checkpoints). A stolen backup then reveals no personal data and cannot forge
a checkpoint, and erasing a subject's key in the live log is not undone by
an old backup that also held the keys; once the key ring has rotated, an old
backup cannot open any subject key at all. The operator keeps the key files
elsewhere (README), the key ring's current version only.

The file: `MAGIC`, then a fresh stream key sealed to the recipient's X25519
public key (NaCl SealedBox), then libsodium's secretstream (XChaCha20-
Poly1305) over a tar of the snapshot, in length-prefixed chunks; the last
chunk is tagged final, so a cut, reordered or altered file is refused.
"""

from __future__ import annotations

import contextlib
import sqlite3
import struct
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

import nacl.bindings as sodium
import nacl.exceptions
import nacl.public

from broker.atomic_file import replace_atomically, replace_atomically_from
from broker.audit.ratchet import RATCHET_NAME
from broker.errors import BrokerError

__all__ = ["BACKED_UP", "KEPT_OUT", "BackupError", "make_backup", "make_recipient_key",
           "restore_backup"]

MAGIC = b"consentry-backup v1\n"
# What a backup holds, and what it never holds (see above).
DATABASES = ("audit.db", "registry.db")
BACKED_UP = ("checkpoints.jsonl", *DATABASES)
KEPT_OUT = ("master.key", "audit-wrap.keys", "audit.key")
CHUNK = 64 * 1024
# A chunk on disk: its plaintext length at most CHUNK, plus the stream's tag.
_MAX_SEALED_CHUNK = CHUNK + sodium.crypto_secretstream_xchacha20poly1305_ABYTES
# The stream key as sealed: the key, the sender's ephemeral public key, a MAC.
_SEALED_KEY = sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES + sodium.crypto_box_SEALBYTES


class BackupError(BrokerError):
    """A backup that could not be made or restored; the text says why."""


def make_recipient_key(path: Path) -> Path:
    """A new X25519 key pair for backups: the private key at `path` (0600,
    kept off the broker's machine), the public key beside it as `.pub`."""
    key = nacl.public.PrivateKey.generate()
    replace_atomically(path, bytes(key).hex().encode() + b"\n")
    public = path.with_name(path.name + ".pub")
    replace_atomically(public, bytes(key.public_key).hex().encode() + b"\n", mode=0o644)
    return public


def _read_key(path: Path, size: int = 32) -> bytes:
    try:
        raw = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise BackupError(f"cannot read the key {path}: {exc}") from exc
    if len(raw) != size:
        raise BackupError(f"{path} is not a backup key (expected {size} bytes in hex)")
    return raw


def _snapshot(data_dir: Path, into: Path) -> list[Path]:
    """The files to back up, consistent, in `into`."""
    if not (data_dir / "audit.db").exists() and (data_dir / RATCHET_NAME).exists():
        raise BackupError(
            f"{data_dir} is a cluster node's: its audit log and registry are in PostgreSQL, "
            "so back up that database with PostgreSQL's own tools (pg_dump, or base "
            "backups with WAL archiving), and keep master.key, audit.key and "
            f"{RATCHET_NAME} apart from it (README, \"The audit log in PostgreSQL\")")
    for name in BACKED_UP:
        if not (data_dir / name).exists():
            raise BackupError(f"{data_dir / name} does not exist: is {data_dir} a broker's "
                              "data directory?")
    files = []
    checkpoints = into / "checkpoints.jsonl"
    checkpoints.write_bytes((data_dir / "checkpoints.jsonl").read_bytes())
    files.append(checkpoints)
    for name in DATABASES:
        target = into / name
        try:
            with contextlib.closing(sqlite3.connect(f"file:{data_dir / name}?mode=ro",
                                                    uri=True)) as src, \
                    contextlib.closing(sqlite3.connect(target)) as dst:
                src.backup(dst)
        except sqlite3.Error as exc:
            raise BackupError(f"cannot read {data_dir / name}: {exc}") from exc
        files.append(target)
    return files


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


def _sealed(source: IO[bytes], public: nacl.public.PublicKey,
            stream_key: bytes) -> Iterator[bytes]:
    """The backup file's bytes, made as they are written: the stream key
    sealed to `public`, then `source` in secretstream chunks, the last final."""
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    header = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, stream_key)
    yield MAGIC + nacl.public.SealedBox(public).encrypt(stream_key) + header
    pending = source.read(CHUNK)
    while True:
        following = source.read(CHUNK)
        tag = (sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE if following
               else sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL)
        sealed = sodium.crypto_secretstream_xchacha20poly1305_push(state, pending, tag=tag)
        yield struct.pack(">I", len(sealed)) + sealed
        if not following:
            return
        pending = following


def make_backup(data_dir: Path, recipient: Path, output: Path) -> list[str]:
    """Write the encrypted backup of `data_dir` to `output` (0600, atomically:
    a failed backup leaves no file). Returns the names it holds."""
    public = nacl.public.PublicKey(_read_key(recipient))
    stream_key = sodium.crypto_secretstream_xchacha20poly1305_keygen()
    with tempfile.TemporaryDirectory(prefix=".consentry-backup-") as tmp:
        files = _snapshot(data_dir, Path(tmp))
        plain = Path(tmp) / "backup.tar"
        with tarfile.open(plain, "w") as tar:
            for path in files:
                tar.add(path, arcname=path.name, recursive=False)
        with plain.open("rb") as source:
            replace_atomically_from(output, _sealed(source, public, stream_key))
    return [path.name for path in files]


def _decrypt(backup: Path, identity: Path, into: BinaryIO) -> None:
    """Decrypt `backup` chunk by chunk into `into`: memory stays one chunk."""
    private = nacl.public.PrivateKey(_read_key(identity))
    try:
        source = backup.open("rb")
    except OSError as exc:
        raise BackupError(f"cannot read {backup}: {exc}") from exc
    header_size = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
    with source:
        if source.read(len(MAGIC)) != MAGIC:
            raise BackupError(f"{backup} is not a consentry backup")
        try:
            stream_key = nacl.public.SealedBox(private).decrypt(source.read(_SEALED_KEY))
        except nacl.exceptions.CryptoError as exc:
            raise BackupError(f"{backup} was not made for the key {identity}") from exc
        state = sodium.crypto_secretstream_xchacha20poly1305_state()
        try:
            sodium.crypto_secretstream_xchacha20poly1305_init_pull(
                state, source.read(header_size), stream_key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise BackupError(f"{backup} is cut short or damaged") from exc
        final = False
        while prefix := source.read(4):
            if final or len(prefix) < 4:
                raise BackupError(f"{backup} has data after its end, or a cut chunk")
            (size,) = struct.unpack(">I", prefix)
            sealed = source.read(size) if size <= _MAX_SEALED_CHUNK else b""
            if len(sealed) != size or not sealed:
                raise BackupError(f"{backup} is cut short or damaged")
            try:
                chunk, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(state, sealed)
            except nacl.exceptions.CryptoError as exc:
                raise BackupError(f"{backup} has been altered or damaged") from exc
            into.write(chunk)
            final = tag == sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
        if not final:
            raise BackupError(f"{backup} is cut short: its last part is missing")


def restore_backup(backup: Path, identity: Path, data_dir: Path) -> list[str]:
    """Bring a backup back into `data_dir`, which must not hold a broker's data
    yet (restoring never overwrites a log). Returns the names restored."""
    existing = [name for name in BACKED_UP if (data_dir / name).exists()]
    if existing:
        raise BackupError(f"{data_dir} already holds {', '.join(existing)}: restore into an "
                          "empty data directory (nothing is overwritten)")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryFile(dir=data_dir) as plain:
        _decrypt(backup, identity, plain)
        plain.seek(0)
        try:
            tar = tarfile.open(fileobj=plain, mode="r:")
            members = tar.getmembers()
        except tarfile.TarError as exc:
            raise BackupError(f"{backup} holds no readable archive: {exc}") from exc
        names = sorted(m.name for m in members)
        # Exactly the expected regular files: no path, link or device to follow.
        if names != sorted(BACKED_UP) or not all(m.isfile() for m in members):
            raise BackupError(f"{backup} does not hold exactly {', '.join(BACKED_UP)}")
        for member in members:
            handle = tar.extractfile(member)
            assert handle is not None  # a regular file, checked above
            replace_atomically_from(data_dir / member.name, _chunks(handle))
    return names
