"""The audit log's PostgreSQL schema: tables, the chain head, the guards, the
broker's role, and the one migration path that installs them.

The same tables as SQLite's (`broker.audit.schema`), with what several broker
nodes writing one log at once need besides:

* ``chain_head``, one row: the seq and hash of the newest event. A writer
  takes its row lock (`LOCK_HEAD`, through ``consentry_lock_chain_head()``)
  before hashing its events, so writers on every node queue on that one
  row and ``seq`` is contiguous: no sequence, whose numbers a rolled-back
  transaction would leave as gaps. A BEFORE INSERT trigger on ``events``
  refuses any row that does not follow the head and moves the head on, so
  a writer that skipped the lock cannot fork the chain either.
* Triggers that refuse UPDATE, DELETE and TRUNCATE on ``events`` and
  ``checkpoints``. Only ``consentry_purge_events(through)`` (retention, the
  oldest whole days) opens the delete guard, through ``purge_gate`` as on
  SQLite, and only right after the signed purge record
  (`broker.audit.purge_record`) appended in the same transaction.
* ``audit_wrap``, one row: the generation of the key that wraps subject
  keys (`broker.audit.ratchet`), with a check value, never the key. New
  subject keys must be wrapped under it (``consentry_subject_key`` refuses
  others), and ``consentry_rotate_wrap`` moves it on only with every live
  key re-wrapped under the next generation.
* ``consentry_broker``, the role broker nodes log in under (a login role
  granted it): SELECT and INSERT on the tables, EXECUTE on the functions,
  nothing else. The functions that change rows (the head, a subject's key,
  retention's purge and deletions) are SECURITY DEFINER, owned by whoever installed the schema,
  each doing one narrow thing.

`install` is idempotent (IF NOT EXISTS, CREATE OR REPLACE, a version row in
``audit_schema``) and runs under an advisory lock, so several nodes starting
at once install it once. A node whose role cannot create tables opens a
database already at `SCHEMA_VERSION` without running any DDL.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg

from broker.audit.chain import GENESIS_HASH
from broker.cluster.schema import CLUSTER_DDL
from broker.errors import AuditError
from broker.pg_registry import REGISTRY_DDL

# A connection of its own or one lent by a pool.
# (A string: asyncpg's classes are generic in its stubs only.)
Connection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"

__all__ = ["BROKER_ROLE", "LOCK_HEAD", "SCHEMA_VERSION", "Connection", "grant_broker_role",
           "install", "schema_version"]

# 2: ``audit_wrap`` and its functions (the generation that wraps subject
# keys, `broker.audit.ratchet`). Every step is idempotent DDL: an older
# database is brought up by running it all again.
SCHEMA_VERSION = 2
BROKER_ROLE = "consentry_broker"
# Any constant unique to this schema: serialises concurrent installs.
_INSTALL_LOCK = 0x636F6E73  # "cons"

# Returns the head and holds its row lock until the transaction ends.
LOCK_HEAD = "SELECT seq, hash FROM consentry_lock_chain_head()"

_TABLES = """
CREATE TABLE IF NOT EXISTS audit_schema (
    one       boolean PRIMARY KEY DEFAULT true CHECK (one),
    version   integer NOT NULL,
    -- What the first node's master key makes of a fixed text
    -- (`consentry_claim_key`): a node with another key is refused.
    key_check text
);

-- Text compared byte by byte ("C"), as SQLite does: time ranges, the
-- session-prefix search and its ordering do not depend on the locale.
CREATE TABLE IF NOT EXISTS events (
    seq       bigint PRIMARY KEY,
    time      text COLLATE "C" NOT NULL,
    type      text COLLATE "C" NOT NULL,
    session   text COLLATE "C",
    actor     text COLLATE "C",
    subject   text COLLATE "C",
    body      text NOT NULL,
    prev_hash text NOT NULL,
    hash      text NOT NULL
);
CREATE INDEX IF NOT EXISTS events_session ON events (session);
CREATE INDEX IF NOT EXISTS events_type ON events (type);
CREATE INDEX IF NOT EXISTS events_subject ON events (subject);
CREATE INDEX IF NOT EXISTS events_actor ON events (actor);
CREATE INDEX IF NOT EXISTS events_time ON events (time);

CREATE TABLE IF NOT EXISTS chain_head (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq  bigint NOT NULL,
    hash text NOT NULL
);

CREATE TABLE IF NOT EXISTS purge_gate (through_seq bigint NOT NULL);

CREATE TABLE IF NOT EXISTS subjects (
    pseudonym   text PRIMARY KEY,
    wrapped_key bytea,
    created     text NOT NULL,
    erased      text
);

CREATE TABLE IF NOT EXISTS personal (
    seq        bigint PRIMARY KEY REFERENCES events (seq),
    pseudonym  text NOT NULL REFERENCES subjects (pseudonym),
    created    text NOT NULL,
    ciphertext bytea NOT NULL,
    alias_tag  bytea
);
CREATE INDEX IF NOT EXISTS personal_pseudonym ON personal (pseudonym);
CREATE INDEX IF NOT EXISTS personal_created ON personal (created);
CREATE INDEX IF NOT EXISTS personal_alias_tag ON personal (alias_tag);

-- The generation of the key that wraps subject keys (`broker.audit.ratchet`):
-- its number, the check value that recognises its key (never the key, which
-- only the nodes' files hold), and since when it is current.
CREATE TABLE IF NOT EXISTS audit_wrap (
    one         boolean PRIMARY KEY DEFAULT true CHECK (one),
    generation  integer NOT NULL CHECK (generation >= 1),
    check_value text NOT NULL,
    since       text NOT NULL
);

CREATE TABLE IF NOT EXISTS checkpoints (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq    bigint NOT NULL,
    record text NOT NULL
);
"""

# search_path pinned on every SECURITY DEFINER function: otherwise a caller
# could put a table of its own named `events` ahead of ours.
_FUNCTIONS = """
CREATE OR REPLACE FUNCTION consentry_lock_chain_head()
RETURNS TABLE (seq bigint, hash text)
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT h.seq, h.hash FROM chain_head AS h WHERE h.one FOR UPDATE
$$;

CREATE OR REPLACE FUNCTION consentry_events_follow_head() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    head chain_head%ROWTYPE;
BEGIN
    SELECT * INTO head FROM chain_head WHERE one FOR UPDATE;
    IF NEW.seq <> head.seq + 1 OR NEW.prev_hash <> head.hash THEN
        RAISE EXCEPTION
            'audit event % does not follow the chain head % (take the head''s lock first)',
            NEW.seq, head.seq USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    UPDATE chain_head SET seq = NEW.seq, hash = NEW.hash WHERE one;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION consentry_refuse_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'events' AND EXISTS (
            SELECT 1 FROM purge_gate WHERE OLD.seq <= purge_gate.through_seq) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit % are append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- Whether a wrapped subject key carries the current generation's tag
-- ('G', the generation as 4 bytes big-endian, then the 72-byte box:
-- `broker.audit.keys`).
CREATE OR REPLACE FUNCTION consentry_wrapped_under_current(wrapped bytea) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT length(wrapped) = 77 AND get_byte(wrapped, 0) = 71
       AND substring(wrapped FROM 2 FOR 4) = int4send(w.generation)
    FROM audit_wrap AS w FOR SHARE
$$;

-- The first node's wrapping generation unless the log has one; returns the
-- log's (a node whose key does not lead to it refuses to start).
CREATE OR REPLACE FUNCTION consentry_claim_wrap(p_generation integer, p_check text,
                                                p_since text)
RETURNS TABLE (generation integer, check_value text, since text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO audit_wrap (one, generation, check_value, since)
    VALUES (true, p_generation, p_check, p_since) ON CONFLICT (one) DO NOTHING;
    RETURN QUERY SELECT w.generation, w.check_value, w.since FROM audit_wrap AS w;
END
$$;

-- A rotation's first step (after the chain head's lock): the current
-- generation, locked until the transaction ends.
CREATE OR REPLACE FUNCTION consentry_lock_wrap()
RETURNS TABLE (generation integer, check_value text, since text)
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT w.generation, w.check_value, w.since FROM audit_wrap AS w FOR UPDATE
$$;

-- A rotation's commit: the live subject keys re-wrapped under generation
-- p_from + 1 (a NULL key: it would not open, so it is erased), then the
-- generation moved on. Refused unless every live key is then under the new
-- generation, so no key is left that no node can open after the step.
CREATE OR REPLACE FUNCTION consentry_rotate_wrap(p_from integer, p_check text, p_since text,
                                                 p_pseudonyms text[], p_keys bytea[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    rewrapped bigint;
BEGIN
    IF (SELECT w.generation FROM audit_wrap AS w FOR UPDATE) IS DISTINCT FROM p_from THEN
        RAISE EXCEPTION 'the wrapping generation is no longer %: another rotation ran', p_from
            USING ERRCODE = 'serialization_failure';
    END IF;
    UPDATE subjects AS s
    SET wrapped_key = k.wrapped,
        erased = CASE WHEN k.wrapped IS NULL THEN p_since ELSE s.erased END
    FROM unnest(p_pseudonyms, p_keys) AS k (pseudonym, wrapped)
    WHERE s.pseudonym = k.pseudonym AND s.wrapped_key IS NOT NULL;
    GET DIAGNOSTICS rewrapped = ROW_COUNT;
    UPDATE audit_wrap SET generation = p_from + 1, check_value = p_check, since = p_since
    WHERE one;
    IF EXISTS (SELECT 1 FROM subjects WHERE wrapped_key IS NOT NULL
               AND (length(wrapped_key) <> 77 OR get_byte(wrapped_key, 0) <> 71
                    OR substring(wrapped_key FROM 2 FOR 4) <> int4send(p_from + 1))) THEN
        RAISE EXCEPTION 'a rotation left a subject key under an older generation'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN rewrapped;
END
$$;

-- A database restored from a copy older than a rotation, at generation
-- p_from of a ratchet the nodes have stepped on to p_generation: no node can
-- open its live subject keys any more, so they are marked erased and the
-- nodes' generation made current.
CREATE OR REPLACE FUNCTION consentry_rebase_wrap(p_from integer, p_generation integer,
                                                 p_check text, p_since text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    erased_count bigint;
BEGIN
    IF (SELECT w.generation FROM audit_wrap AS w FOR UPDATE) IS DISTINCT FROM p_from
            OR p_generation <= p_from THEN
        RAISE EXCEPTION 'the wrapping generation is no longer %, or % is not newer', p_from,
            p_generation USING ERRCODE = 'serialization_failure';
    END IF;
    UPDATE subjects SET wrapped_key = NULL, erased = p_since WHERE wrapped_key IS NOT NULL;
    GET DIAGNOSTICS erased_count = ROW_COUNT;
    UPDATE audit_wrap SET generation = p_generation, check_value = p_check, since = p_since
    WHERE one;
    RETURN erased_count;
END
$$;

-- The subject's wrapped key, made with `new_wrapped` if it has none (never
-- had one, or it was erased: then its old alias tags are cleared, so the old
-- aliases do not become findable again under the new key).
CREATE OR REPLACE FUNCTION consentry_subject_key(p_pseudonym text, new_wrapped bytea,
                                                 p_created text)
RETURNS bytea
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    current bytea;
    found_row boolean;
BEGIN
    SELECT wrapped_key, true INTO current, found_row FROM subjects
    WHERE pseudonym = p_pseudonym FOR UPDATE;
    IF current IS NOT NULL THEN
        RETURN current;
    END IF;
    -- A new key must be wrapped under the current generation: one from a
    -- node that missed a rotation would open with no node's key.
    IF NOT coalesce(consentry_wrapped_under_current(new_wrapped), false) THEN
        RAISE EXCEPTION 'a subject key wrapped under another generation than the current one'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF found_row THEN
        UPDATE personal SET alias_tag = NULL WHERE pseudonym = p_pseudonym;
        UPDATE subjects SET wrapped_key = new_wrapped WHERE pseudonym = p_pseudonym;
    ELSE
        INSERT INTO subjects (pseudonym, wrapped_key, created)
        VALUES (p_pseudonym, new_wrapped, p_created);
    END IF;
    RETURN new_wrapped;
END
$$;

-- The log's master-key check: set by the first node to open the log, then
-- returned to every node, which refuses to write if its own differs.
CREATE OR REPLACE FUNCTION consentry_claim_key(p_check text) RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE audit_schema SET key_check = coalesce(key_check, p_check) WHERE one
    RETURNING key_check
$$;

-- Retention's removal of the oldest events (through `through`) and their
-- personal rows. Only right after its record: the newest event must be an
-- events_purged naming `through`, appended by this same transaction, so no
-- purge can happen without a record of it in the chain (`audit verify`
-- checks the record's signature).
CREATE OR REPLACE FUNCTION consentry_purge_events(through bigint)
RETURNS TABLE (removed_personal bigint, removed_events bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    newest record;
BEGIN
    SELECT e.type, e.body, e.xmin = pg_current_xact_id()::xid AS ours INTO newest
    FROM events AS e JOIN chain_head AS h ON e.seq = h.seq;
    IF newest IS NULL OR newest.type IS DISTINCT FROM 'events_purged' OR NOT newest.ours
            OR (newest.body::jsonb ->> 'through_seq')::bigint IS DISTINCT FROM through THEN
        RAISE EXCEPTION 'a purge must come right after its events_purged record, in the same '
            'transaction' USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM personal WHERE seq <= through;
    GET DIAGNOSTICS removed_personal = ROW_COUNT;
    INSERT INTO purge_gate (through_seq) VALUES (through);
    DELETE FROM events WHERE seq <= through;
    GET DIAGNOSTICS removed_events = ROW_COUNT;
    DELETE FROM purge_gate;
    RETURN NEXT;
END
$$;

-- The rest of retention: personal rows past their retention, then the keys
-- of subjects with none left, then subjects nothing names any more.
CREATE OR REPLACE FUNCTION consentry_delete_personal_before(cutoff text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    removed bigint;
BEGIN
    DELETE FROM personal WHERE created < cutoff;
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;

CREATE OR REPLACE FUNCTION consentry_shred_subjects_without_personal(erased_at text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    shredded bigint;
BEGIN
    UPDATE subjects SET wrapped_key = NULL, erased = erased_at
    WHERE wrapped_key IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM personal AS p WHERE p.pseudonym = subjects.pseudonym);
    GET DIAGNOSTICS shredded = ROW_COUNT;
    RETURN shredded;
END
$$;

-- A data subject's erasure (`broker.audit.subjects`): its personal rows
-- deleted and its key destroyed, only right after its subject_erased record
-- appended by this same transaction, so no erasure goes unrecorded.
CREATE OR REPLACE FUNCTION consentry_erase_subject(p_pseudonym text, erased_at text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    newest record;
    removed bigint;
BEGIN
    SELECT e.type, e.subject, e.xmin = pg_current_xact_id()::xid AS ours INTO newest
    FROM events AS e JOIN chain_head AS h ON e.seq = h.seq;
    IF newest IS NULL OR newest.type IS DISTINCT FROM 'subject_erased' OR NOT newest.ours
            OR newest.subject IS DISTINCT FROM p_pseudonym THEN
        RAISE EXCEPTION 'an erasure must come right after its subject_erased record, in the '
            'same transaction' USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM personal WHERE pseudonym = p_pseudonym;
    GET DIAGNOSTICS removed = ROW_COUNT;
    UPDATE subjects SET wrapped_key = NULL, erased = erased_at WHERE pseudonym = p_pseudonym;
    RETURN removed;
END
$$;

CREATE OR REPLACE FUNCTION consentry_remove_forgotten_subjects() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    removed bigint;
BEGIN
    DELETE FROM subjects WHERE wrapped_key IS NULL
      AND NOT EXISTS (SELECT 1 FROM personal AS p WHERE p.pseudonym = subjects.pseudonym)
      AND NOT EXISTS (SELECT 1 FROM events AS e WHERE e.subject = subjects.pseudonym);
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;
"""

_TRIGGERS = """
DROP TRIGGER IF EXISTS events_follow_head ON events;
CREATE TRIGGER events_follow_head BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION consentry_events_follow_head();
DROP TRIGGER IF EXISTS events_no_change ON events;
CREATE TRIGGER events_no_change BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION consentry_refuse_change();
DROP TRIGGER IF EXISTS events_no_truncate ON events;
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION consentry_refuse_change();
DROP TRIGGER IF EXISTS checkpoints_no_change ON checkpoints;
CREATE TRIGGER checkpoints_no_change BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION consentry_refuse_change();
DROP TRIGGER IF EXISTS checkpoints_no_truncate ON checkpoints;
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION consentry_refuse_change();
"""

# Roles are the cluster's, not the database's: made once, granted per database.
# (The role's name is `BROKER_ROLE`.)
# What the broker role may call, each a function that does one thing; named
# once, so that what is revoked from PUBLIC is exactly what is granted.
_BROKER_FUNCTIONS = (
    "consentry_lock_chain_head()", "consentry_subject_key(text, bytea, text)",
    "consentry_claim_key(text)", "consentry_purge_events(bigint)",
    "consentry_delete_personal_before(text)", "consentry_shred_subjects_without_personal(text)",
    "consentry_remove_forgotten_subjects()", "consentry_wrapped_under_current(bytea)",
    "consentry_claim_wrap(integer, text, text)", "consentry_lock_wrap()",
    "consentry_rotate_wrap(integer, text, text, text[], bytea[])",
    "consentry_rebase_wrap(integer, integer, text, text)",
    "consentry_erase_subject(text, text)",
)

_GRANTS = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'consentry_broker') THEN
        CREATE ROLE consentry_broker NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object THEN NULL;  -- made by another install just now
END $$;
REVOKE ALL ON audit_schema, events, chain_head, purge_gate, subjects, personal, checkpoints,
    audit_wrap FROM PUBLIC;
GRANT SELECT, INSERT ON events, personal, checkpoints TO consentry_broker;
-- Subjects' keys change only through consentry_subject_key and retention.
GRANT SELECT ON audit_schema, chain_head, subjects, audit_wrap TO consentry_broker;
-- The cluster's bookkeeping (slots, leases, who holds which session): not
-- the audit log, so its rows change.
GRANT SELECT, INSERT, UPDATE, DELETE ON cluster_nodes, cluster_sessions TO consentry_broker;
-- The registry: engineers are the owner's to add and remove (the admin
-- commands, with the owner's URL); a node reads them, binds devices on first
-- sight, and counts failed logins (old ones deleted as new ones come).
REVOKE ALL ON engineers, devices, failed_logins FROM PUBLIC;
GRANT SELECT ON engineers TO consentry_broker;
GRANT SELECT, INSERT ON devices TO consentry_broker;
GRANT SELECT, INSERT, DELETE ON failed_logins TO consentry_broker;
REVOKE ALL ON FUNCTION {functions} FROM PUBLIC;
GRANT EXECUTE ON FUNCTION {functions} TO consentry_broker;
"""


async def schema_version(conn: Connection) -> int:
    """The installed version; 0 for a database without the audit schema."""
    if await conn.fetchval("SELECT to_regclass('audit_schema')") is None:
        return 0
    version = await conn.fetchval("SELECT version FROM audit_schema")
    return 0 if version is None else int(version)


async def install(conn: Connection) -> None:
    """Bring the database to `SCHEMA_VERSION` (creating everything if empty),
    in one transaction; nothing to do, and no DDL run, if it is already there.
    AuditError if the database is from a newer consentry or the role cannot
    create the schema."""
    try:
        version = await schema_version(conn)
        if version > SCHEMA_VERSION:
            raise AuditError("the audit database was made by a newer consentry; "
                             "upgrade to use it")
        if version == SCHEMA_VERSION:
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _INSTALL_LOCK)
            if await schema_version(conn) == SCHEMA_VERSION:
                return  # another node installed it while we waited
            await conn.execute(_TABLES)
            # The cluster's tables too (broker.cluster), so that nodes under
            # the broker role, which cannot create them, find them there.
            await conn.execute(CLUSTER_DDL)
            # And the cluster's engineer registry and failed-login counts
            # (broker.pg_registry): one for every node.
            await conn.execute(REGISTRY_DDL)
            await conn.execute("INSERT INTO chain_head (one, seq, hash) VALUES (true, 0, $1) "
                               "ON CONFLICT (one) DO NOTHING", GENESIS_HASH)
            await conn.execute(_FUNCTIONS)
            await conn.execute(_TRIGGERS)
            await conn.execute(_GRANTS.format(functions=", ".join(_BROKER_FUNCTIONS)))
            await conn.execute(
                "INSERT INTO audit_schema (one, version) VALUES (true, $1) "
                "ON CONFLICT (one) DO UPDATE SET version = excluded.version", SCHEMA_VERSION)
    except asyncpg.InsufficientPrivilegeError as exc:
        raise AuditError(
            "the audit database has no consentry schema yet and this role cannot create it: "
            "start one broker with the database owner's URL first, then its nodes with "
            f"a role granted {BROKER_ROLE} ({exc})") from exc
    except (asyncpg.PostgresError, OSError) as exc:
        raise AuditError(f"cannot initialise the audit database: {exc}") from exc


async def grant_broker_role(conn: Connection, login_role: str) -> None:
    """Make `login_role` (an existing login role) a member of `BROKER_ROLE`."""
    quoted = await conn.fetchval("SELECT quote_ident($1)", login_role)
    await conn.execute(f"GRANT {BROKER_ROLE} TO {quoted}")
