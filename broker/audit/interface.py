"""The audit store as the rest of the broker sees it: what a backend must do.

`AuditStore` names every call the server, the sessions, the admin API, the
admin commands, exports and the checkpointer make on an open audit log;
`broker.audit.store.AuditLog` (SQLite, the embedded default) is the one
implementation today, and a second backend implements the same protocol.
Whatever the backend, the rules stay the store's: every `append` is durable
before it returns or raises `AuditWriteError` (callers fail closed), events
chain with `broker.audit.chain`, and personal fields are sealed per subject
(`broker.audit.keys`) so they can be erased without touching the chain.

`AuditTransaction` is the part of `AuditStore.maintenance()`'s transaction
that is the same on every backend: appends that commit with the change they
record. `RetentionTransaction` adds the calls retention makes, so
`broker.audit.retention` runs on either backend (`RetentionStore`), and
`AdminTransaction` those of a data subject's export and erasure
(`broker.audit.subjects`). What crash recovery does inside it is still SQL
on SQLite's connection (`Maintenance.db`), so it takes the SQLite
`AuditLog` itself until it gets calls of its own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from broker.audit.keys import AuditKeys

__all__ = ["AdminTransaction", "AuditEvent", "AuditStore", "AuditTransaction",
           "RetentionStore", "RetentionTransaction"]


@dataclass(frozen=True)
class AuditEvent:
    """One event as a store gives it back."""

    seq: int
    time: str
    type: str
    session: str | None
    actor: str | None
    subject: str | None  # pseudonym, never the raw device id
    body: dict[str, Any]
    personal: dict[str, str] | None  # None if there were none or they were erased
    prev_hash: str
    hash: str


class AuditTransaction(Protocol):
    """One transaction on the audit log (`AuditStore.maintenance`)."""

    @property
    def keys(self) -> AuditKeys:
        """Opens (and pseudonymises for) the personal data of this log."""
        ...

    @property
    def appended(self) -> list[tuple[int, str]]:
        """(seq, hash) of each event appended in this transaction so far."""
        ...

    async def append(
        self,
        type: str,
        *,
        now: dt.datetime,
        session: str | None = None,
        actor: str | None = None,
        pseudonym: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> int:
        """Chain an event (no personal data; `pseudonym` stored as is) into
        this transaction; its seq."""
        ...


class AuditStore(Protocol):
    """An open audit log (see the module docstring and `AuditLog`)."""

    @property
    def path(self) -> Path:
        """Where the log lives: SQLite's file, which the checkpointer and
        `audit verify` open themselves; for a log in PostgreSQL, the data
        directory (its keys) instead."""
        ...

    def pseudonym(self, device_id: str) -> str:
        """The stable pseudonym under which `device_id` appears in the log."""
        ...

    async def append(
        self,
        type: str,
        *,
        now: dt.datetime,
        session: str | None = None,
        actor: str | None = None,
        subject: str | None = None,
        body: Mapping[str, Any] | None = None,
        personal: Mapping[str, str] | None = None,
    ) -> int:
        """Record one event durably; its seq. AuditWriteError if not durable."""
        ...

    async def events(
        self, *, session: str | None = None, type: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEvent]:
        """Matching events, oldest first (the newest `limit` of them)."""
        ...

    async def query(
        self,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        actor: str | None = None,
        alias: str | None = None,
        type: str | None = None,
        session: str | None = None,
        before_seq: int | None = None,
        after_seq: int | None = None,
        not_read_by: str | None = None,
        limit: int = 50,
        subject: str | None = None,
    ) -> tuple[list[AuditEvent], bool]:
        """One keyset-paged page, newest first, and whether more remain."""
        ...

    async def session_events(self, session: str, *,
                             limit: int | None = None) -> list[AuditEvent]:
        """Every event of one session, oldest first."""
        ...

    async def sessions_starting(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Up to `limit` distinct session ids starting with `prefix`, sorted."""
        ...

    async def scan(
        self,
        *,
        after_seq: int = 0,
        through_seq: int | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        actor: str | None = None,
        type: str | None = None,
        session: str | None = None,
        limit: int = 1000,
    ) -> list[AuditEvent]:
        """A page of events after `after_seq`, oldest first, no personal data."""
        ...

    async def verify_chain(self) -> int | None:
        """The first seq whose hash chain fails (`chain.ChainWalk`), or None."""
        ...

    def maintenance(self, *, write: bool = True,
                    ) -> AbstractAsyncContextManager[AdminTransaction]:
        """Hold the log for one transaction, committed when the block ends."""
        ...

    async def truncate_wal(self) -> bool:
        """Drop older copies of deleted data kept by the engine's journal;
        False if it must be tried again later."""
        ...

    def add_append_listener(self, listener: Callable[[int, str], None]) -> None:
        """Call `listener(seq, hash)` after each committed append."""
        ...

    def remove_append_listener(self, listener: Callable[[int, str], None]) -> None:
        ...

    async def close(self) -> None:
        ...


class RetentionTransaction(AuditTransaction, Protocol):
    """What `broker.audit.retention.purge` does inside one write transaction.
    Times are `chain.format_time` texts."""

    async def require_secure_delete(self) -> None:
        """AuditError if what is deleted would stay readable where the backend
        could prevent it."""
        ...

    async def delete_personal_before(self, cutoff: str) -> int:
        """Remove personal rows created before `cutoff`; how many."""
        ...

    async def event_span(self, kept_from: str) -> tuple[int | None, int | None, int | None]:
        """The first and last seq held, and the first dated at or after `kept_from`."""
        ...

    async def purge_point(self, through: int) -> tuple[str, int] | None:
        """The hash of event `through` and how many events are at or before it."""
        ...

    async def purge_events(self, through: int) -> tuple[int, int]:
        """Remove events through `through` and their personal rows, once the
        signed purge record is appended in this transaction; how many
        personal rows and events went."""
        ...

    async def shred_subjects_without_personal(self, time: str) -> int:
        """Destroy the key of every subject with no personal row left; how many."""
        ...

    async def remove_forgotten_subjects(self) -> int:
        """Remove shredded subjects no event or personal row names; how many."""
        ...


class RetentionStore(Protocol):
    """A store retention can run on (both backends)."""

    def maintenance(self, *, write: bool = True,
                    ) -> AbstractAsyncContextManager[RetentionTransaction]:
        ...

    async def truncate_wal(self) -> bool:
        ...


class AdminTransaction(RetentionTransaction, Protocol):
    """What a data subject's export and erasure (`broker.audit.subjects`) do
    inside one transaction, on either backend."""

    async def select(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """The rows of one read-only query on the tables both backends hold
        alike (events, subjects, personal), written with ``?`` placeholders;
        blobs come back as bytes."""
        ...

    async def shred_subject(self, pseudonym: str, time: str) -> int:
        """Delete the subject's personal rows and destroy its key (marked
        erased at `time`), right after its ``subject_erased`` record appended
        in this transaction; how many personal rows went."""
        ...
