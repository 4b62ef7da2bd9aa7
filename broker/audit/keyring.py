"""The generations of the key that wraps subject keys, kept outside the database.

Crypto-shredding destroys a subject's key by deleting its wrapped copy from
the database. But a copy of the database taken before (a backup, PostgreSQL's
old row versions and WAL, a replica) still holds the wrapped key, and the
wrapping key is derived from the master key, which stays: from such a copy
the "erased" personal data could be read again.

So the wrapping key has generations, each a random key in this file (next to
`master.key`, mode 0600, replaced atomically). New subject keys are wrapped
under the current generation; a rotation (`broker.audit.rotation`, at least
as often as the personal-data retention) adds a generation, re-wraps every
live subject key under it, and then forgets the older generations. From then
on no copy of the database older than the rotation can open a subject key
that was erased since: its wrapping key no longer exists anywhere, unless a
copy of this file was kept (back up only its current version, and overwrite
that backup at each rotation).

Subject keys wrapped before this file existed are generation 0, the key
derived from the master key; the first rotation re-wraps them too.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.secret
import nacl.utils

from broker.atomic_file import replace_atomically
from broker.errors import AuditError

__all__ = ["KEYRING_NAME", "Generation", "WrapRing"]

KEYRING_NAME = "audit-wrap.keys"
_FORMAT = 1


@dataclass(frozen=True)
class Generation:
    number: int
    key: bytes
    created: dt.datetime


class WrapRing:
    """The wrapping-key generations in `path`; the last one is current."""

    def __init__(self, path: Path, generations: list[Generation]) -> None:
        self.path = path
        self._generations = sorted(generations, key=lambda g: g.number)

    @classmethod
    def load_or_create(cls, path: Path, *, now: dt.datetime | None = None) -> WrapRing:
        """Read the ring, or create it with a first generation."""
        if not path.exists():
            ring = cls(path, [_fresh(1, now or dt.datetime.now(dt.UTC))])
            ring._write()
            return ring
        try:
            mode = path.stat().st_mode
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise AuditError(f"cannot read the audit key ring {path}: {exc}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuditError(f"the audit key ring {path} is accessible to other users "
                             f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}")
        try:
            if data["format"] != _FORMAT:
                raise ValueError(f"format {data['format']!r}")
            generations = [
                Generation(int(g["number"]), base64.b64decode(g["key"], validate=True),
                           dt.datetime.fromisoformat(g["created"]))
                for g in data["generations"]]
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise AuditError(f"the audit key ring {path} is damaged ({exc})") from exc
        if not generations or any(len(g.key) != nacl.secret.SecretBox.KEY_SIZE
                                  or g.number < 1 for g in generations):
            raise AuditError(f"the audit key ring {path} is damaged (no usable generation)")
        return cls(path, generations)

    @property
    def current(self) -> Generation:
        return self._generations[-1]

    def get(self, number: int) -> Generation | None:
        for generation in self._generations:
            if generation.number == number:
                return generation
        return None

    @property
    def keeps_master_generation(self) -> bool:
        """Generation 0 (master-derived, from before this file) opens until
        the first rotation, which re-wraps its keys and forgets generation 1."""
        return self.get(1) is not None

    @property
    def numbers(self) -> list[int]:
        return [g.number for g in self._generations]

    def add(self, now: dt.datetime) -> Generation:
        """A new current generation, written before anything is wrapped with it."""
        generation = _fresh(self.current.number + 1, now)
        self._generations.append(generation)
        self._write()
        return generation

    def forget_before(self, number: int) -> list[int]:
        """Destroy every generation older than `number` (nothing in the live
        database uses them any more); returns the numbers destroyed."""
        gone = [g.number for g in self._generations if g.number < number]
        if gone:
            self._generations = [g for g in self._generations if g.number >= number]
            self._write()
        return gone

    def _write(self) -> None:
        data = {"format": _FORMAT, "generations": [
            {"number": g.number, "key": base64.b64encode(g.key).decode(),
             "created": g.created.isoformat()} for g in self._generations]}
        try:
            replace_atomically(self.path, json.dumps(data, indent=1).encode() + b"\n",
                               mode=0o600)
        except OSError as exc:
            raise AuditError(f"cannot write the audit key ring {self.path}: {exc}") from exc


def _fresh(number: int, now: dt.datetime) -> Generation:
    return Generation(number, nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE),
                      now.astimezone(dt.UTC))
