"""Encrypted backup and restore (broker.backup): a restored log verifies
with its keys; the backup holds no key; a cut, altered or misaddressed file
is refused; a restore never overwrites a log."""

from __future__ import annotations

import asyncio
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from broker.audit.ratchet import RATCHET_NAME
from broker.backup import (
    BACKED_UP,
    KEPT_OUT,
    BackupError,
    make_backup,
    make_recipient_key,
    restore_backup,
)
from broker.cli import main
from tests.broker.test_audit_review import await_cli, seed
from tests.e2e.conftest import BIN, write_key


@pytest.fixture
async def live(tmp_path: Path) -> Path:
    """A broker's data directory with a session's events, checkpoints and an engineer."""
    data = tmp_path / "live"
    data.mkdir()
    await seed(data)
    key = write_key(tmp_path / "alice_ed25519")
    # The CLI runs its own event loop: in a thread, beside this one.
    assert await asyncio.to_thread(main, ["engineer", "add", "alice", "--key", f"{key}.pub",
                                          "--data-dir", str(data)]) == 0
    assert all((data / name).exists() for name in (*BACKED_UP, *KEPT_OUT))
    return data


def test_a_restored_log_verifies_and_the_backup_holds_no_key(
        live: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    public = make_recipient_key(tmp_path / "backup.key")
    assert stat.S_IMODE((tmp_path / "backup.key").stat().st_mode) == 0o600
    output = tmp_path / "broker.backup"
    assert sorted(make_backup(live, public, output)) == sorted(BACKED_UP)
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    blob = output.read_bytes()
    for name in KEPT_OUT:  # neither key is in it, in any form
        assert (live / name).read_bytes() not in blob
    assert b"alice" not in blob and b"SQLite format" not in blob  # encrypted

    restored = tmp_path / "restored"
    assert sorted(restore_backup(output, tmp_path / "backup.key", restored)) == sorted(BACKED_UP)
    for name in KEPT_OUT:  # kept elsewhere by the operator, brought back beside it
        shutil.copy2(live / name, restored / name)
    code, out, err = await_cli(capsys, "audit", "verify", "--data-dir", str(restored))
    assert code == 0, out + err
    code, out, _ = await_cli(capsys, "engineer", "list", "--data-dir", str(restored))
    assert code == 0 and "alice" in out


def test_an_altered_cut_or_misaddressed_backup_is_refused(live: Path, tmp_path: Path) -> None:
    public = make_recipient_key(tmp_path / "backup.key")
    make_recipient_key(tmp_path / "other.key")
    output = tmp_path / "broker.backup"
    make_backup(live, public, output)
    good = output.read_bytes()

    with pytest.raises(BackupError, match="not made for the key"):
        restore_backup(output, tmp_path / "other.key", tmp_path / "r1")
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 1
    output.write_bytes(bytes(damaged))
    with pytest.raises(BackupError, match="altered or damaged"):
        restore_backup(output, tmp_path / "backup.key", tmp_path / "r2")
    output.write_bytes(good[:-100])
    with pytest.raises(BackupError, match="cut short"):
        restore_backup(output, tmp_path / "backup.key", tmp_path / "r3")
    output.write_bytes(b"hello")
    with pytest.raises(BackupError, match="not a consentry backup"):
        restore_backup(output, tmp_path / "backup.key", tmp_path / "r4")
    for name in ("r2", "r3"):  # nothing half-restored is left behind
        assert not any((tmp_path / name / n).exists() for n in BACKED_UP)


def test_a_restore_never_overwrites_a_log(live: Path, tmp_path: Path) -> None:
    public = make_recipient_key(tmp_path / "backup.key")
    make_backup(live, public, tmp_path / "broker.backup")
    before = (live / "audit.db").read_bytes()
    with pytest.raises(BackupError, match=r"already holds .*audit\.db"):
        restore_backup(tmp_path / "broker.backup", tmp_path / "backup.key", live)
    assert (live / "audit.db").read_bytes() == before


def test_a_directory_that_is_not_a_brokers_is_said_so(tmp_path: Path) -> None:
    public = make_recipient_key(tmp_path / "backup.key")
    with pytest.raises(BackupError, match=r"is .* a broker.s data directory"):
        make_backup(tmp_path, public, tmp_path / "x.backup")
    assert not (tmp_path / "x.backup").exists()


def test_the_commands_back_up_restore_and_verify(live: Path, tmp_path: Path) -> None:
    """As an operator runs them: real processes, and the messages they print."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "consentry-broker"), *args], capture_output=True,
                              text=True, timeout=60)

    made = run("backup-key", "--output", str(tmp_path / "bk"))
    assert made.returncode == 0 and "keep it off this machine" in made.stdout, made.stderr
    again = run("backup-key", "--output", str(tmp_path / "bk"))
    assert again.returncode != 0 and "never overwritten" in again.stderr
    assert "Traceback" not in again.stderr
    done = run("backup", "--data-dir", str(live), "--output", str(tmp_path / "b"),
               "--to", str(tmp_path / "bk.pub"))
    assert done.returncode == 0 and "master.key and audit.key are not in it" in done.stdout
    restored = tmp_path / "restored"
    back = run("restore", "--data-dir", str(restored), "--input", str(tmp_path / "b"),
               "--identity", str(tmp_path / "bk"))
    assert back.returncode == 0 and "audit verify" in back.stdout, back.stderr
    for name in KEPT_OUT:
        shutil.copy2(live / name, restored / name)
    verified = run("audit", "verify", "--data-dir", str(restored))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    refused = run("restore", "--data-dir", str(restored), "--input", str(tmp_path / "b"),
                  "--identity", str(tmp_path / "bk"))
    assert refused.returncode != 0 and "nothing is overwritten" in refused.stderr


def test_a_cluster_nodes_directory_is_told_where_its_log_is(tmp_path: Path) -> None:
    """A node on PostgreSQL keeps its log and registry in the database; its
    data directory holds keys only, which a backup must not hold."""
    node = tmp_path / "node"
    node.mkdir(mode=0o700)
    for name in ("master.key", "audit.key", RATCHET_NAME):
        (node / name).write_bytes(b"k" * 32)
    recipient = tmp_path / "backup.key"
    make_recipient_key(recipient)
    with pytest.raises(BackupError, match=r"PostgreSQL.*pg_dump.*audit-ratchet.key"):
        make_backup(node, recipient.with_name("backup.key.pub"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
