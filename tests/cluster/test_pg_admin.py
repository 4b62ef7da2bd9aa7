"""The admin's audit commands on a cluster's PostgreSQL log (`--database-url`,
or `database_url` from the layered config): list, show and export give what
they give on SQLite for the same log (moved there by `audit migrate`), each
read is recorded in the cluster's log, a data subject's export and erasure
work there (the erasure under the broker role, through its function), and
the local audit.db is never opened."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import asyncpg
import pytest

from tests.cluster.harness import Postgres
from tests.cluster.test_pg_migrate import ALIAS, cli, pg_rows, seed_single_node

SESSION = "s-0123456789abcdef"
# Only the seeded events (2025): what each command adds itself is dated now.
UNTIL = ("--until", "2025-06-01T00:00Z")


@pytest.fixture
async def logs(tmp_path: Path, database_url: str,
               capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """The same log twice: in a single node's data directory (SQLite), and
    migrated into PostgreSQL from a copy whose audit.db is then moved away,
    so that any command opening it would make a new, empty one."""
    single, cluster = tmp_path / "single", tmp_path / "cluster"
    await seed_single_node(single)
    shutil.copytree(single, cluster)
    code, _, err = cli(capsys, "audit", "migrate", "--to", database_url,
                       "--data-dir", str(cluster))
    assert code == 0, err
    for name in ("audit.db", "audit.db-wal", "audit.db-shm"):
        if (cluster / name).exists():
            (cluster / name).rename(tmp_path / name)
    return single, cluster


def both(capsys: pytest.CaptureFixture[str], logs: tuple[Path, Path], url: str,
         *args: str) -> tuple[str, str]:
    """`args` on the SQLite log and on the PostgreSQL one: the two outputs."""
    single, cluster = logs
    code, on_sqlite, err = cli(capsys, *args, "--data-dir", str(single))
    assert code == 0, err
    code, on_pg, err = cli(capsys, *args, "--data-dir", str(cluster), "--database-url", url)
    assert code == 0, err
    assert not (cluster / "audit.db").exists()  # the local file was never opened
    return on_sqlite, on_pg


async def test_list_show_and_export_say_the_same_on_both_backends(
        logs: tuple[Path, Path], database_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    for args in (("audit", "list", *UNTIL), ("audit", "list", "--json", *UNTIL),
                 ("audit", "list", "--subject", ALIAS.upper(), *UNTIL),
                 ("audit", "show", SESSION), ("audit", "show", SESSION[:6], "--json"),
                 ("audit", "export", *UNTIL),
                 ("audit", "export", "--format", "csv", *UNTIL)):
        on_sqlite, on_pg = both(capsys, logs, database_url, *args)
        assert on_pg == on_sqlite, args
        assert on_pg.strip(), args
    listing = both(capsys, logs, database_url, "audit", "list", "--json", *UNTIL)[1]
    personal = [json.loads(line)["personal"] for line in listing.splitlines()]
    assert {"alias": ALIAS, "ip": "192.0.2.7", "hostname": "pc1"} in personal


async def test_every_read_of_the_cluster_log_is_recorded_there(
        logs: tuple[Path, Path], database_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    _, cluster = logs
    for args, type_, body_part in (
            (("audit", "list", "--type", "session_started"), "audit_read",
             {"command": "list", "filters": {"type": "session_started"}}),
            (("audit", "show", SESSION), "audit_read", {"command": "show", "returned": 3}),
            (("audit", "export", "--format", "csv"), "audit_exported",
             {"kind": "events", "format": "csv", "complete": True})):
        code, _, err = cli(capsys, *args, "--data-dir", str(cluster),
                           "--database-url", database_url)
        assert code == 0, err
        (newest,) = await pg_rows(database_url, "SELECT type, actor, body FROM events "
                                                "ORDER BY seq DESC LIMIT 1")
        assert newest[0] == type_, args
        assert str(newest[1]).startswith("cli:")
        body = json.loads(str(newest[2]))
        assert body_part.items() <= body.items(), body
        # Sealed before the command said it was done, as on SQLite: in the
        # cluster's table (chained on what was there), a copy in this
        # directory's PostgreSQL checkpoint file.
        assert await pg_rows(database_url, "SELECT MAX(seq) FROM events") == await pg_rows(
            database_url, "SELECT seq FROM checkpoints ORDER BY id DESC LIMIT 1")
    assert len((cluster / "checkpoints-postgresql.jsonl").read_text().splitlines()) == 3
    code, out, err = cli(capsys, "audit", "verify", "--data-dir", str(cluster),
                         "--database-url", database_url, "--json")
    assert code == 0, out + err
    assert json.loads(out)["unsealed"] == 0


async def test_a_data_subject_is_exported_and_erased_in_the_cluster_log(
        logs: tuple[Path, Path], database_url: str, broker_role_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    _, cluster = logs
    code, out, err = cli(capsys, "audit", "export", "--subject", ALIAS.lower(),
                         "--data-dir", str(cluster), "--database-url", database_url)
    assert code == 0, err
    export = json.loads(out)
    pseudonym = export["subject"]["pseudonym"]
    assert export["subject"]["aliases"] == [ALIAS]
    assert export["events"][0]["personal"]["ip"] == "192.0.2.7"

    # The broker role may not delete personal rows itself, nor call the
    # erasure function without its record right before it.
    conn = await asyncpg.connect(broker_role_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM personal")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="subject_erased"):
            await conn.fetchval("SELECT consentry_erase_subject($1, 'now')", pseudonym)
    finally:
        await conn.close()

    code, out, err = cli(capsys, "audit", "erase", "--subject", ALIAS, "--yes",
                         "--data-dir", str(cluster), "--database-url", broker_role_url)
    assert code == 0, err
    assert f"erased device {pseudonym}" in out and "1 personal record(s)" in out
    assert "old row versions" in err
    assert await pg_rows(database_url, "SELECT COUNT(*) FROM personal") == [(0,)]
    ((wrapped, erased),) = await pg_rows(
        database_url, f"SELECT wrapped_key, erased FROM subjects WHERE pseudonym = '{pseudonym}'")
    assert wrapped is None and erased is not None
    types = [row[0] for row in await pg_rows(database_url,
                                             "SELECT type FROM events ORDER BY seq")]
    assert types[-2:] == ["subject_exported", "subject_erased"]

    code, out, err = cli(capsys, "audit", "export", "--subject", ALIAS, "--device", pseudonym,
                         "--data-dir", str(cluster), "--database-url", database_url)
    assert code == 0, err
    assert json.loads(out)["subject"]["erased"] is True
    code, out, err = cli(capsys, "audit", "verify", "--data-dir", str(cluster),
                         "--database-url", database_url)
    assert code == 0, out + err
    assert not (cluster / "audit.db").exists()


async def test_purge_on_the_cluster_log_is_signed_with_the_shared_key(
        logs: tuple[Path, Path], database_url: str,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _, cluster = logs
    keyless = tmp_path / "keyless"
    keyless.mkdir()
    shutil.copy2(cluster / "master.key", keyless / "master.key")
    code, _, err = cli(capsys, "audit", "purge", "--data-dir", str(keyless),
                       "--database-url", database_url)
    assert code != 0 and "copy audit.key from a node" in err
    assert not (keyless / "audit.key").exists()

    code, out, err = cli(capsys, "audit", "purge", "--pii-retention-days", "1",
                         "--data-dir", str(cluster), "--database-url", database_url)
    assert code == 0, err
    assert "1 record(s) deleted" in out
    code, out, err = cli(capsys, "audit", "verify", "--data-dir", str(cluster),
                         "--database-url", database_url)
    assert code == 0, out + err


async def test_the_database_url_comes_from_the_environment_and_is_never_shown(
        logs: tuple[Path, Path], database_url: str, postgres: Postgres,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _, cluster = logs
    monkeypatch.setenv("CONSENTRY_DATABASE_URL", database_url)
    code, out, err = cli(capsys, "audit", "list", "--json", "--data-dir", str(cluster))
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["type"] == "audit_migrated"
    assert not (cluster / "audit.db").exists()
    code, out, err = cli(capsys, "audit", "list", "--print-config", "--data-dir", str(cluster))
    assert code == 0 and "database_url = (set, not shown)" in out
    assert postgres.password not in out + err
