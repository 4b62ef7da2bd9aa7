"""The key that wraps subject keys on a PostgreSQL log several nodes share:
a hash ratchet, one generation at a time, in a file beside ``master.key``.

Why not `broker.audit.keyring`'s random generations: every node must wrap
and unwrap under the current generation, so a rotation on the leader would
have to hand the new random key to every other node, and the only place
they all reach is the database — where an old copy (a base backup, a WAL
archive, old row versions) would then hold the old generations next to the
keys they wrap. A ratchet needs no hand-over:

    K_1     = 32 random bytes, made by the first node of the cluster
    K_(n+1) = HKDF-SHA256(K_n, info=b"consentry audit wrap ratchet v1")
    check_n = HMAC-SHA256(K_n, b"consentry audit wrap check v1" || n)

Each node holds only (n, K_n) in ``audit-ratchet.key`` (mode 0600, replaced
atomically). The database holds the current generation number, its check
value (proof that a node's key is the right one, from which the key cannot
be computed) and when it became current. A rotation (the leader,
`broker.audit.rotation`) re-wraps every live subject key under K_(n+1) and
moves the database to n+1 in one transaction; every other node, on seeing
that, steps its own file forward and so forgets K_n. The step is one-way:
from K_(n+1) nobody computes K_n, so once every node has stepped, a subject
key erased before the rotation cannot be opened from any copy of the
database, whoever holds today's files. K_1 is random, not derived from the
master key, else the master key would recover every generation.

A node steps only once the database says the next generation is current:
until the rotation commits, the subject keys it reads are still wrapped
under K_n.

The file also keeps the check values of the generations it stepped past
(they reveal no key): a database at an older generation whose check is
among them is this cluster's, restored from a copy older than a rotation
(`DatabaseRestored`); its subject keys can no longer be opened, and the
node may start on it treating them as erased (`PgAuditLog.open`). One
whose check is not among them belongs to another cluster and is refused.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import stat
from pathlib import Path

import nacl.secret
import nacl.utils
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.atomic_file import create_exclusively, replace_atomically
from broker.audit.keyring import Generation
from broker.errors import AuditError

__all__ = ["MAX_STEPS", "RATCHET_NAME", "DatabaseRestored", "Ratchet", "check_value",
           "next_generation"]

RATCHET_NAME = "audit-ratchet.key"
_FORMAT = 1
_STEP_PURPOSE = b"consentry audit wrap ratchet v1"
_CHECK_PURPOSE = b"consentry audit wrap check v1"
# Rotations come once per retention period (days): this many steps is
# centuries. A database claiming more was tampered with; stepping that far
# would only burn CPU.
MAX_STEPS = 100_000
# Check values of past generations kept in the file: decades of rotations.
_MAX_HISTORY = 2_000


class DatabaseRestored(AuditError):
    """The database is at an older generation of this very ratchet: it was
    restored from a copy older than a rotation."""

    def __init__(self, message: str, generation: int) -> None:
        super().__init__(message)
        self.generation = generation


def next_generation(generation: Generation, since: dt.datetime) -> Generation:
    """The generation after `generation`, current from `since`."""
    key = HKDF(algorithm=hashes.SHA256(), length=nacl.secret.SecretBox.KEY_SIZE, salt=None,
               info=_STEP_PURPOSE).derive(generation.key)
    return Generation(generation.number + 1, key, since.astimezone(dt.UTC))


def check_value(generation: Generation) -> str:
    """What the database keeps to recognise `generation`'s key (hex)."""
    message = _CHECK_PURPOSE + generation.number.to_bytes(8, "big")
    return hmac.new(generation.key, message, hashlib.sha256).hexdigest()


class Ratchet:
    """This node's current wrapping generation, as stored in `path`.

    Offers what `broker.audit.keys.AuditKeys` needs of a key ring: the
    current generation and `get`, which knows no other generation."""

    def __init__(self, path: Path, current: Generation,
                 history: dict[int, str] | None = None) -> None:
        self.path = path
        self._current = current
        # generation -> check value, for the generations stepped past
        self._history = dict(history or {})

    @classmethod
    def load(cls, path: Path) -> Ratchet:
        """Read the ratchet file; AuditError if it is missing, readable by
        others, or damaged (the text says what to do)."""
        try:
            mode = path.stat().st_mode
            text = path.read_text()
        except FileNotFoundError as exc:
            raise AuditError(
                f"the audit wrapping key {path} is missing, and the audit database "
                "already has one: copy audit-ratchet.key from a running node (or your "
                "backup of it) into this node's data directory, mode 0600") from exc
        except OSError as exc:
            raise AuditError(f"cannot read the audit wrapping key {path}: {exc}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuditError(f"the audit wrapping key {path} is accessible to other users "
                             f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}")
        try:
            data = json.loads(text)
            if data["format"] != _FORMAT:
                raise ValueError(f"format {data['format']!r}")
            generation = Generation(int(data["generation"]),
                                    base64.b64decode(data["key"], validate=True),
                                    dt.datetime.fromisoformat(data["since"]))
            history = {int(number): str(check)
                       for number, check in data.get("past_checks", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            raise AuditError(f"the audit wrapping key {path} is damaged ({exc}); copy "
                             "audit-ratchet.key from a running node") from exc
        if generation.number < 1 or len(generation.key) != nacl.secret.SecretBox.KEY_SIZE:
            raise AuditError(f"the audit wrapping key {path} is damaged (no usable key); "
                             "copy audit-ratchet.key from a running node")
        return cls(path, generation, history)

    @classmethod
    def load_or_create(cls, path: Path, *, now: dt.datetime) -> Ratchet:
        """The ratchet file, created with a random first generation if there
        is none (only for a database that has no wrapping key yet). Of
        several processes creating it at once, one wins and all read it."""
        first = Generation(1, nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE),
                           now.astimezone(dt.UTC))
        try:
            create_exclusively(path, _encoded(first, {}))
        except OSError as exc:
            raise AuditError(f"cannot create the audit wrapping key {path}: {exc}") from exc
        return cls.load(path)

    @property
    def current(self) -> Generation:
        return self._current

    def get(self, number: int) -> Generation | None:
        return self._current if number == self._current.number else None

    @property
    def keeps_master_generation(self) -> bool:
        """Whether subject keys still wrapped under the master-derived key
        (generation 0, from before the ratchet) open: only until the first
        rotation, which re-wraps them."""
        return self._current.number == 1

    @property
    def check(self) -> str:
        return check_value(self._current)

    def following(self, since: dt.datetime) -> Generation:
        """The next generation, not yet written (the rotation's)."""
        return next_generation(self._current, since)

    def advance(self, number: int, check: str, since: dt.datetime) -> bool:
        """Step forward to generation `number`, which the database says is
        current with `check`, and write the file (forgetting the older key).
        Whether it stepped. `DatabaseRestored` if the database is at one
        of the generations this file stepped past; AuditError if the key
        does not lead there (another cluster's file or database)."""
        current = self._current
        if number < current.number:
            past = self._history.get(number)
            if past is not None and _same(past, check):
                raise DatabaseRestored(
                    f"the audit database is at wrapping-key generation {number}, but "
                    f"{self.path} is at {current.number}: the database was restored from a "
                    "copy older than a key rotation, and its subject keys cannot be opened "
                    "any more", number)
            raise AuditError(
                f"the audit database is at wrapping-key generation {number}, but "
                f"{self.path} is at {current.number} and never was at the database's: "
                "this file belongs to another cluster; copy audit-ratchet.key from a "
                "running node")
        if number - current.number > MAX_STEPS:
            raise AuditError(f"the audit database claims wrapping-key generation {number}, "
                             f"{number - current.number} rotations past {self.path}: refused")
        candidate, passed = current, {}
        while candidate.number < number:
            passed[candidate.number] = check_value(candidate)
            candidate = next_generation(candidate, since)
        if not _same(check_value(candidate), check):
            raise AuditError(
                f"the audit wrapping key {self.path} is not the one the audit database is "
                "written with: copy audit-ratchet.key from a running node")
        if candidate.number == current.number:
            return False
        history = {**self._history, **passed}
        history = {n: history[n] for n in sorted(history)[-_MAX_HISTORY:]}
        try:
            replace_atomically(self.path, _encoded(candidate, history), mode=0o600)
        except OSError as exc:
            raise AuditError(f"cannot write the audit wrapping key {self.path}: {exc}") from exc
        self._current, self._history = candidate, history
        return True


def _same(ours: str, theirs: str) -> bool:
    # As bytes: compare_digest refuses non-ASCII text, and the database's
    # text is not ours to trust.
    return hmac.compare_digest(ours.encode(), theirs.encode())


def _encoded(generation: Generation, history: dict[int, str]) -> bytes:
    return json.dumps({"format": _FORMAT, "generation": generation.number,
                       "key": base64.b64encode(generation.key).decode(),
                       "since": generation.created.isoformat(),
                       "past_checks": {str(n): check for n, check in sorted(history.items())}},
                      indent=1).encode() + b"\n"
