"""Audit keys: the master key file, pseudonyms, and per-subject data keys.

The master key (32 random bytes) lives in a file next to, never inside, the
database: a copy of `audit.db` alone reveals no personal data and cannot link
pseudonyms back to device ids. Each use gets its own key derived from it with
HKDF-SHA256 and a purpose label, so no key is ever used for two things:

    pseudonym key  = HKDF(master, info=b"consentry audit pseudonym v1")
    wrapping key   = HKDF(master, info=b"consentry audit subject-key wrap v1")
    alias index key = HKDF(master, info=b"consentry audit alias index v1")

    pseudonym(device_id) = HMAC-SHA256(pseudonym key, utf8(device_id))[:16].hex()
    alias_tag(alias)     = HMAC-SHA256(alias index key, utf8(casefold(NFC(alias))))

The alias tag is a blind index: it lets an admin find a device by the alias
the customer chose without the alias being stored in clear or the database
being searchable by anyone who lacks the master key.

Each data subject (pseudonym) has a random 32-byte key, stored in the database
only wrapped (SecretBox) by the wrapping key. Personal fields of an event are
encrypted with that subject key; destroying the wrapped key (erasure,
retention) makes them unreadable for good — crypto-shredding — while the
hash-chained event skeleton stays intact and verifiable.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import stat
import tempfile
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import nacl.exceptions
import nacl.secret
import nacl.utils
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.audit.chain import canonical_json
from broker.audit.keyring import Generation
from broker.errors import AuditError

__all__ = [
    "MASTER_KEY_SIZE",
    "MAX_PERSONAL_BYTES",
    "AuditKeys",
    "SubjectKeyDestroyed",
    "WrapGenerations",
    "check_personal",
    "load_or_create_master_key",
]

MASTER_KEY_SIZE = 32
# Personal fields are an alias, an address, a hostname: small by nature.
MAX_PERSONAL_BYTES = 4 * 1024
_PSEUDONYM_PURPOSE = b"consentry audit pseudonym v1"
_WRAP_PURPOSE = b"consentry audit subject-key wrap v1"
_ALIAS_INDEX_PURPOSE = b"consentry audit alias index v1"


def load_or_create_master_key(path: Path) -> bytes:
    """Read the master key at `path`, creating it (mode 0600) if it is missing.

    A key that other users could read is refused rather than used: with it and
    a copy of the database anyone could read every personal field.
    """
    if not path.exists():
        _create_master_key(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read the audit master key {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuditError(
            f"the audit master key {path} is accessible to other users "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    if len(data) != MASTER_KEY_SIZE:
        raise AuditError(
            f"the audit master key {path} is {len(data)} bytes, expected {MASTER_KEY_SIZE}"
        )
    return data


def _create_master_key(path: Path) -> None:
    # Written whole under a temporary name, made durable, then linked into
    # place: link() fails if the name exists, so of two processes opening a
    # fresh data directory at once exactly one key wins and nobody ever reads
    # a half-written one.
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise AuditError(f"cannot create the audit master key {path}: {exc}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(nacl.utils.random(MASTER_KEY_SIZE))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise AuditError(f"cannot create the audit master key {path}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


class SubjectKeyDestroyed(AuditError):
    """A subject key wrapped under a generation the key ring no longer has:
    the row comes from before a rotation (an old backup restored); its
    personal data is as erased."""


# A wrapped subject key: generation 0 (the master-derived wrapping key) is
# the bare SecretBox (72 bytes); later generations are tagged with theirs.
_GENERATION_TAG = b"G"
_TAGGED_LENGTH = 1 + 4 + 72


class WrapGenerations(Protocol):
    """The wrapping-key generations a log knows: SQLite's random ring
    (`broker.audit.keyring.WrapRing`) or a cluster's hash ratchet
    (`broker.audit.ratchet.Ratchet`)."""

    @property
    def current(self) -> Generation: ...

    def get(self, number: int) -> Generation | None: ...

    @property
    def keeps_master_generation(self) -> bool:
        """Whether generation 0 (the master-derived key) still opens."""
        ...


class AuditKeys:
    """Key operations of one audit log; holds the derived keys, not the master.

    With a `ring` (`broker.audit.keyring`, `broker.audit.ratchet`), subject
    keys are wrapped under its current generation and a rotation can make
    older copies unopenable; without one, under the master-derived key
    (generation 0) only."""

    def __init__(self, master: bytes, ring: WrapGenerations | None = None) -> None:
        if len(master) != MASTER_KEY_SIZE:
            raise AuditError(f"the audit master key must be {MASTER_KEY_SIZE} bytes")
        self._pseudonym_key = _derive(master, _PSEUDONYM_PURPOSE)
        self._wrap_box = nacl.secret.SecretBox(_derive(master, _WRAP_PURPOSE))
        self._alias_key = _derive(master, _ALIAS_INDEX_PURPOSE)
        self.ring = ring

    def pseudonym(self, subject_id: str) -> str:
        """Stable 32-hex-digit pseudonym for a device id (or other subject id)."""
        mac = hmac.new(self._pseudonym_key, subject_id.encode("utf-8"), hashlib.sha256)
        return mac.digest()[:16].hex()

    def alias_tag(self, alias: str) -> bytes:
        """The blind-index tag of an alias: equal for aliases that differ only
        in case (or Unicode normal form), so a search is case-insensitive."""
        folded = unicodedata.normalize("NFC", alias).casefold()
        return hmac.new(self._alias_key, folded.encode("utf-8"), hashlib.sha256).digest()

    def new_wrapped_subject_key(self) -> bytes:
        """A fresh random subject key, wrapped for storage in the database."""
        return self.wrap(nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE))

    def wrap(self, subject_key: bytes) -> bytes:
        """`subject_key` wrapped under the current generation."""
        if self.ring is None:
            return bytes(self._wrap_box.encrypt(subject_key))
        return self.wrap_under(subject_key, self.ring.current)

    @staticmethod
    def wrap_under(subject_key: bytes, generation: Generation) -> bytes:
        """`subject_key` wrapped under `generation` (a rotation's next one)."""
        return (_GENERATION_TAG + generation.number.to_bytes(4, "big")
                + bytes(nacl.secret.SecretBox(generation.key).encrypt(subject_key)))

    @staticmethod
    def generation_of(wrapped: bytes) -> int:
        """The generation a stored subject key is wrapped under (0: the master's)."""
        if len(wrapped) == _TAGGED_LENGTH and wrapped[:1] == _GENERATION_TAG:
            return int.from_bytes(wrapped[1:5], "big")
        return 0

    def unwrap(self, wrapped: bytes) -> bytes:
        """The subject key; `SubjectKeyDestroyed` when its generation is gone."""
        number = self.generation_of(wrapped)
        if number == 0 and self.ring is not None and not self.ring.keeps_master_generation:
            # The first rotation re-wrapped every live key of generation 0;
            # one still wrapped so comes from an older copy, and must not
            # open with the master key, which never changes.
            raise SubjectKeyDestroyed(
                "a subject key is wrapped under the master key's generation, which the "
                "first key rotation retired: its personal data is erased")
        if number == 0:
            box, sealed = self._wrap_box, wrapped
        else:
            generation = self.ring.get(number) if self.ring is not None else None
            if generation is None:
                raise SubjectKeyDestroyed(
                    f"a subject key is wrapped under key generation {number}, which was "
                    "destroyed by a rotation: its personal data is erased")
            box, sealed = nacl.secret.SecretBox(generation.key), wrapped[5:]
        try:
            return box.decrypt(sealed)
        except nacl.exceptions.CryptoError as exc:
            raise AuditError(
                "a subject key does not open with this master key and wrapping key "
                "(was master.key, audit-wrap.keys or audit-ratchet.key replaced?)"
            ) from exc

    def opened(self, wrapped: bytes) -> bytes | None:
        """The subject key, or None where a rotation destroyed its generation."""
        try:
            return self.unwrap(wrapped)
        except SubjectKeyDestroyed:
            return None

    @staticmethod
    def seal_personal(subject_key: bytes, seq: int, personal: Mapping[str, str]) -> bytes:
        """Encrypt personal fields for event `seq`.

        The seq is sealed in with the fields so a ciphertext moved onto another
        event's row is detected on reading instead of shown as that event's.
        """
        plaintext = canonical_json({"seq": seq, "fields": dict(personal)})
        return nacl.secret.SecretBox(subject_key).encrypt(plaintext)

    @staticmethod
    def open_personal(subject_key: bytes, seq: int, ciphertext: bytes) -> dict[str, str] | None:
        """Decrypt personal fields of event `seq`; None if they do not open."""
        try:
            data = json.loads(nacl.secret.SecretBox(subject_key).decrypt(ciphertext))
        except (nacl.exceptions.CryptoError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("seq") != seq:
            return None
        fields = data.get("fields")
        if not isinstance(fields, dict):
            return None
        return {str(k): str(v) for k, v in fields.items()}


def check_personal(personal: Mapping[str, str] | None) -> dict[str, str] | None:
    """Validate personal fields: short string keys, string values, small total."""
    if personal is None:
        return None
    if not isinstance(personal, Mapping):
        raise AuditError("personal fields must be a mapping of strings")
    fields = dict(personal)
    for key, value in fields.items():
        if not isinstance(key, str) or not key or len(key) > 32:
            raise AuditError(f"invalid personal field name {key!r}")
        if not isinstance(value, str):
            raise AuditError(f"personal field {key!r} must be a string")
    if len(canonical_json(fields)) > MAX_PERSONAL_BYTES:
        raise AuditError(f"personal fields exceed {MAX_PERSONAL_BYTES} bytes")
    return fields or None
