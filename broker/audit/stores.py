"""Which audit store a broker opens: SQLite in its data directory (the
embedded default, one machine) or PostgreSQL (`serve --database-url`, the
log several broker nodes share).

asyncpg is imported only when a database URL is given, so a single-node
broker and the admin commands do not load it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from broker.audit.interface import AuditStore
from broker.audit.ratchet import RATCHET_NAME
from broker.audit.signing import AUDIT_KEY_FILE
from broker.errors import ConfigError

__all__ = ["CLUSTER_KEY_FILES", "check_database_url", "open_store"]

# The files in a data directory that every node of one PostgreSQL log must
# share (copied from the first node, mode 0600): the master key (pseudonyms
# and personal fields), the signing key of checkpoints and purge records,
# and the current wrapping key of subject keys.
CLUSTER_KEY_FILES = ("master.key", AUDIT_KEY_FILE, RATCHET_NAME)

_SCHEMES = ("postgresql", "postgres")


def check_database_url(url: str) -> str:
    """`url` if it names a PostgreSQL database; ConfigError (without the URL's
    password) if not."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in _SCHEMES or not (host or parts.path.strip("/")):
        shown = url if parts is None or parts.password is None else url.replace(
            parts.password, "***")
        raise ConfigError(f"--database-url must look like postgresql://USER@HOST:PORT/DATABASE, "
                          f"got {shown!r}")
    return url


async def open_store(data_dir: Path, *, database_url: str | None = None,
                     max_bytes: int | None = None) -> AuditStore:
    """The broker's audit log: PostgreSQL if `database_url` is given, else
    SQLite's ``data_dir/audit.db``. The master key is ``data_dir/master.key``
    either way. `max_bytes` (SQLite's quota) has no PostgreSQL meaning: the
    database's own disk and quotas limit it there."""
    if database_url is None:
        from broker.audit.store import AuditLog

        return await AuditLog.open(data_dir, max_bytes=max_bytes)
    if max_bytes is not None:
        raise ConfigError("--audit-max-mb caps the SQLite audit file; with --database-url "
                          "the database's own disk and quotas limit the log")
    from broker.audit.pg_store import PgAuditLog

    return await PgAuditLog.open(check_database_url(database_url), data_dir)
