"""`consentry-broker audit verify` and `audit pubkey` as real processes, and
the broker writing signed checkpoints from start to shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from broker.audit.checkpoints import CHECKPOINT_FILE
from broker.audit.signing import load_or_create_signing_key, public_key_text
from broker.audit.store import AuditEvent, AuditLog
from broker.audit_cli.integrity import EXIT_NOT_INTACT
from broker.certs import init_dev_pki

from .test_audit_integrity import build, checkpoint_lines, tamper

LISTEN_RE = re.compile(r"listening on wss://127\.0\.0\.1:(\d+)")


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )


def verified_events(data_dir: Path) -> list[AuditEvent]:
    async def read() -> list[AuditEvent]:
        audit = await AuditLog.open(data_dir)
        try:
            return await audit.events(type="audit_verified")
        finally:
            await audit.close()
    return asyncio.run(read())


def test_intact_log(tmp_path: Path) -> None:
    data = tmp_path / "var"
    asyncio.run(build(data))
    result = run(tmp_path, "audit", "verify", "--data-dir", str(data))
    assert result.returncode == 0, result
    assert result.stdout == ("audit log intact: 30 events (seq 1-30), 4 checkpoints, "
                             "last at 2025-03-01T12:00:30.000000Z (seq 30), "
                             "0 events after the newest checkpoint\n")
    # Without --pubkey the key comes from next to the database: say so.
    assert "note: checked with the public key derived from" in result.stderr
    assert "--pubkey FILE" in result.stderr
    (event,) = verified_events(data)
    assert event.body == {"ok": True, "first_bad_seq": None, "independent_key": False}
    assert event.actor is not None and event.actor.startswith("cli:")
    # The check's own event is chained like any other: the next run passes too.
    again = run(tmp_path, "audit", "verify", "--data-dir", str(data))
    assert again.returncode == 0, again
    assert again.stdout.startswith("audit log intact: 31 events (seq 1-31)")


def test_pubkey_then_verify_with_it(tmp_path: Path) -> None:
    data = tmp_path / "var"
    made = run(tmp_path, "audit", "pubkey", "--data-dir", str(data))
    assert made.returncode == 0, made
    assert "created a new audit signing key" in made.stderr
    line = made.stdout.strip()
    assert line == public_key_text(load_or_create_signing_key(data))
    again = run(tmp_path, "audit", "pubkey", "--data-dir", str(data))
    assert again.stdout.strip() == line
    assert "created" not in again.stderr

    asyncio.run(build(data))
    pub = tmp_path / "auditor.pub"
    pub.write_text(made.stdout)
    result = run(tmp_path, "audit", "verify", "--data-dir", str(data), "--pubkey", str(pub))
    assert result.returncode == 0, result
    assert "note:" not in result.stderr
    assert verified_events(data)[-1].body["independent_key"] is True


def test_tampered_log(tmp_path: Path) -> None:
    data = tmp_path / "var"
    asyncio.run(build(data))
    with tamper(data) as conn:
        conn.execute("UPDATE events SET body = '{\"n\":71,\"note\":\"été\"}' WHERE seq = 17")
    result = run(tmp_path, "audit", "verify", "--data-dir", str(data))
    assert result.returncode == EXIT_NOT_INTACT, result
    lines = result.stdout.splitlines()
    assert lines[0] == "seq 17: contents changed (hash does not match)"
    assert lines[-1].startswith("audit log NOT intact: ")
    assert "first bad seq 17" in lines[-1]
    assert "Traceback" not in result.stderr
    # The attempt is recorded even though the log is broken.
    assert verified_events(data)[-1].body == {
        "ok": False, "first_bad_seq": 17, "independent_key": False}


def test_truncated_log_json(tmp_path: Path) -> None:
    data = tmp_path / "var"
    asyncio.run(build(data))
    with tamper(data) as conn:
        conn.execute("DELETE FROM events WHERE seq > 25")
    result = run(tmp_path, "audit", "verify", "--data-dir", str(data), "--json")
    assert result.returncode == EXIT_NOT_INTACT, result
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["first_bad_seq"] == 26
    assert (report["events"], report["last_seq"], report["checkpoints"]) == (25, 25, 4)
    (problem,) = report["problems"]
    assert problem["seq"] == 26 and problem["line"] == 4
    assert problem["message"].startswith("log ends at seq 25 but checkpoint of")
    assert report["notes"][0].startswith("checked with the public key derived from")


def test_checkpoint_file_elsewhere(tmp_path: Path) -> None:
    data = tmp_path / "var"
    asyncio.run(build(data))
    moved = tmp_path / "offsite.jsonl"
    (data / CHECKPOINT_FILE).rename(moved)
    missing = run(tmp_path, "audit", "verify", "--data-dir", str(data))
    assert missing.returncode == EXIT_NOT_INTACT
    assert "is missing, but the database holds checkpoints" in missing.stdout
    found = run(tmp_path, "audit", "verify", "--data-dir", str(data),
                "--checkpoint-file", str(moved))
    assert found.returncode == 0, found


def test_errors_that_stop_the_check(tmp_path: Path) -> None:
    result = run(tmp_path, "audit", "verify", "--data-dir", str(tmp_path / "nothing"))
    assert result.returncode == 4
    assert result.stderr.startswith("consentry-broker: error: no audit log at ")
    data = tmp_path / "var"
    asyncio.run(build(data))
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-ed25519 AAAA not ours\n")
    result = run(tmp_path, "audit", "verify", "--data-dir", str(data), "--pubkey", str(bad))
    assert result.returncode == 4
    assert "not a consentry audit public key" in result.stderr
    assert "Traceback" not in result.stderr
    # A check that could not run was still a read of the log.
    assert verified_events(data)[-1].body["ok"] is False


def test_help_documents_the_exit_codes(tmp_path: Path) -> None:
    result = run(tmp_path, "audit", "verify", "--help")
    assert result.returncode == 0
    assert f"{EXIT_NOT_INTACT}  the log is NOT intact" in result.stdout
    assert "4  the check could not run" in result.stdout


# -- the broker ---------------------------------------------------------------------


def start_broker(tmp_path: Path, data: Path) -> tuple[subprocess.Popen[bytes], Path]:
    pki = init_dev_pki(tmp_path / "certs", ["localhost", "127.0.0.1"])
    out = tmp_path / "broker.out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", "--listen", "127.0.0.1:0",
         "--data-dir", str(data), "--cert", str(pki.cert), "--key", str(pki.key)],
        stdout=out.open("wb"), stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    return proc, out


def wait_listening(proc: subprocess.Popen[bytes], out: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if LISTEN_RE.search(out.read_text(errors="replace")):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError("broker did not start:\n" + out.read_text())


def test_broker_checkpoints_from_start_to_shutdown(tmp_path: Path) -> None:
    data = tmp_path / "var"
    proc, out = start_broker(tmp_path, data)
    try:
        wait_listening(proc, out)
        assert len(checkpoint_lines(data)) == 1  # at start-up, before serving
        # Verifying while the broker runs (and may be checkpointing) is fine.
        live = run(tmp_path, "audit", "verify", "--data-dir", str(data))
        assert live.returncode == 0, live
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, out.read_text()
    lines = checkpoint_lines(data)
    assert len(lines) >= 2
    # The shutdown checkpoint covers the newest event: the record of the
    # clean stop, after the live check's own.
    conn = sqlite3.connect(data / "audit.db")
    try:
        newest, before = conn.execute(
            "SELECT seq, type FROM events ORDER BY seq DESC LIMIT 2").fetchall()
    finally:
        conn.close()
    assert (newest[1], before[1]) == ("broker_stopped", "audit_verified")
    assert json.loads(lines[-1])["payload"]["seq"] == newest[0]
    result = run(tmp_path, "audit", "verify", "--data-dir", str(data))
    assert result.returncode == 0, result


def test_broker_refuses_to_start_on_a_truncated_log(tmp_path: Path) -> None:
    data = tmp_path / "var"
    asyncio.run(build(data))
    conn = sqlite3.connect(data / "audit.db", isolation_level=None)
    try:
        conn.execute("DROP TRIGGER events_no_delete")
        conn.execute("DELETE FROM events WHERE seq > 25")
    finally:
        conn.close()
    proc, out = start_broker(tmp_path, data)
    proc.wait(timeout=60)
    text = out.read_text()
    assert proc.returncode == 4, text
    assert "consentry-broker: error: the audit log ends at seq 25 but the checkpoint" in text
    assert "Run `consentry-broker audit verify`" in text
    assert "listening" not in text
