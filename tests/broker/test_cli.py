"""`consentry-broker` admin commands, run as real processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import stat
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest

from broker.audit.store import AuditLog
from broker.cli import main


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result
    assert result.stderr.startswith("consentry-broker: error: "), result.stderr
    assert text in result.stderr
    assert "Traceback" not in result.stderr


def pub_file(directory: Path, name: str, algorithm: str = "ssh-ed25519") -> Path:
    key = asyncssh.generate_private_key(algorithm, comment=f"{name}@test")
    path = directory / f"{name}.pub"
    path.write_bytes(key.export_public_key("openssh"))
    return path


def test_certs_init_then_kept(tmp_path: Path) -> None:
    result = run(tmp_path, "certs", "init", "--name", "localhost", "--name", "10.0.0.5")
    assert result.returncode == 0, result.stderr
    assert "wrote  certs/ca.key" in result.stdout
    assert "localhost, 10.0.0.5" in result.stdout
    assert stat.S_IMODE((tmp_path / "certs" / "broker.key").stat().st_mode) == 0o600
    again = run(tmp_path, "certs", "init")
    assert again.returncode == 0
    assert "kept   certs/broker.crt" in again.stdout
    assert "--force" in again.stdout


def test_certs_init_bad_name(tmp_path: Path) -> None:
    assert_clean_error(run(tmp_path, "certs", "init", "--name", "not a host"), 5,
                       "neither an IP address nor a DNS name")


def test_engineer_add_list_remove(tmp_path: Path) -> None:
    key = pub_file(tmp_path, "alice")
    added = run(tmp_path, "engineer", "add", "alice", "--key", str(key),
                "--display", "Alice Example", "--data-dir", "data")
    assert added.returncode == 0, added.stderr
    assert "added engineer 'alice'" in added.stdout
    fingerprint = asyncssh.read_public_key(key).get_fingerprint("sha256")
    assert fingerprint in added.stdout

    listed = run(tmp_path, "engineer", "list", "--data-dir", "data")
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "ROLE", "DISPLAY", "FINGERPRINT"]
    assert row.split() == ["alice", "engineer", "Alice", "Example", fingerprint]

    as_json = run(tmp_path, "engineer", "list", "--json", "--data-dir", "data")
    (entry,) = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert entry["fingerprint"] == fingerprint
    assert entry["public_key"].startswith("ssh-ed25519 ")

    removed = run(tmp_path, "engineer", "remove", "alice", "--data-dir", "data")
    assert removed.returncode == 0
    assert run(tmp_path, "engineer", "list", "--json", "--data-dir", "data").stdout == ""
    assert_clean_error(run(tmp_path, "engineer", "remove", "alice", "--data-dir", "data"),
                       3, "no engineer named 'alice'")

    # Both changes are in the audit log, made by the CLI user.
    audit = run(tmp_path, "audit", "list", "--json", "--data-dir", "data")
    events = [json.loads(line) for line in audit.stdout.splitlines()]
    assert [e["type"] for e in events] == ["engineer_added", "engineer_removed"]
    assert events[0]["actor"].startswith("cli:")
    assert events[0]["body"]["key"] == fingerprint


def test_engineer_add_errors(tmp_path: Path) -> None:
    assert_clean_error(run(tmp_path, "engineer", "add", "alice", "--key", "missing.pub"),
                       2, "no public key file at missing.pub")
    rsa = pub_file(tmp_path, "rsa", "ssh-rsa")
    assert_clean_error(run(tmp_path, "engineer", "add", "alice", "--key", str(rsa)),
                       3, "only Ed25519 keys are accepted")
    key = pub_file(tmp_path, "alice")
    assert_clean_error(run(tmp_path, "engineer", "add", "Alice!", "--key", str(key)),
                       3, "invalid engineer name")
    assert_clean_error(
        run(tmp_path, "engineer", "add", "alice", "--key", str(key), "--display", "a\x1bb"),
        3, "display name must not contain control characters",
    )
    # Nothing was registered by the failed attempts.
    assert run(tmp_path, "engineer", "list", "--json").stdout == ""


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = run(tmp_path, "engineer", "add", "alice")  # --key missing
    assert result.returncode == 2
    assert "--key" in result.stderr
    assert run(tmp_path, "no-such-command").returncode == 2


def test_audit_list_on_a_fresh_data_dir_logs_the_read(tmp_path: Path) -> None:
    first = run(tmp_path, "audit", "list", "--data-dir", "fresh")
    assert first.returncode == 0, first.stderr
    assert first.stdout == ""
    assert "no audit events" in first.stderr
    second = run(tmp_path, "audit", "list", "--data-dir", "fresh")
    (line,) = second.stdout.splitlines()
    assert " audit_read " in line
    assert "actor=cli:" in line
    assert line.endswith(" command=list")
    third = run(tmp_path, "audit", "list", "--json", "--data-dir", "fresh")
    assert [json.loads(x)["seq"] for x in third.stdout.splitlines()] == [1, 2]


def test_audit_list_shows_personal_fields_inert(tmp_path: Path) -> None:
    async def seed() -> str:
        audit = await AuditLog.open(tmp_path / "var")
        try:
            await audit.append(
                "agent_connected", now=dt.datetime.now(dt.UTC), session="0123456789abcdef",
                subject="device-1", body={"note": "\x1b[2J"},
                personal={"alias": "evil\x1b]0;pwned\x07", "ip": "192.0.2.1"},
            )
            return audit.pseudonym("device-1")
        finally:
            await audit.close()

    asyncio.run(seed())
    result = run(tmp_path, "audit", "list")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "session=0123456789abcdef " in line  # whole, as `audit show` takes it
    assert "subject=" not in line  # a session's events name the session
    assert "note=\"\\u001b[2J\"" in line
    assert 'ip="192.0.2.1"' in line
    assert "alias=" in line and "pwned" in line
    as_json = run(tmp_path, "audit", "list", "--json")
    assert "\x1b" not in as_json.stdout
    event = json.loads(as_json.stdout.splitlines()[0])
    assert event["personal"]["alias"] == "evil\x1b]0;pwned\x07"  # exact for programs


def test_serve_without_certificates_is_a_clear_error(tmp_path: Path) -> None:
    assert_clean_error(
        run(tmp_path, "serve"), 2,
        "no TLS certificate at certs/broker.crt — run `consentry-broker certs init` first",
    )
    assert_clean_error(run(tmp_path, "serve", "--listen", "nonsense"), 2,
                       "--listen must look like HOST:PORT")


def test_dev_setup(tmp_path: Path) -> None:
    result = run(tmp_path, "dev-setup", "--certs", "certs", "--data-dir", "var",
                 "--listen", "0.0.0.0:9443")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "--broker wss://127.0.0.1:9443 --ca certs/ca.crt --alias \"my laptop\"" in out
    assert ("join CODE --broker wss://127.0.0.1:9443 --ca certs/ca.crt "
            "--identity var/dev-admin/id_ed25519 --user admin --control") in out
    assert "the code the agent shows" in out

    identity = tmp_path / "var" / "dev-admin" / "id_ed25519"
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600
    assert stat.S_IMODE(identity.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700
    key = asyncssh.read_private_key(identity)  # unencrypted OpenSSH key
    assert key.get_algorithm() == "ssh-ed25519"
    assert asyncssh.read_public_key(identity.with_suffix(".pub")).public_data == key.public_data

    listed = run(tmp_path, "engineer", "list", "--json")
    (admin,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (admin["name"], admin["role"], admin["display"]) == ("admin", "admin", "Dev Admin")
    assert admin["fingerprint"] == key.get_fingerprint("sha256")

    # Idempotent: same CA, same key, still one admin.
    ca = (tmp_path / "certs" / "ca.crt").read_bytes()
    again = run(tmp_path, "dev-setup", "--listen", "127.0.0.1:9443")
    assert again.returncode == 0, again.stderr
    assert "already registered" in again.stdout
    assert (tmp_path / "certs" / "ca.crt").read_bytes() == ca
    assert asyncssh.read_private_key(identity).public_data == key.public_data


def test_main_in_process_maps_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["engineer", "remove", "nobody", "--data-dir", str(tmp_path)])
    assert code == 3
    assert capsys.readouterr().err == (
        "consentry-broker: error: no engineer named 'nobody' is registered\n"
    )
    assert main(["--help"]) == 0


def test_audit_list_filters(tmp_path: Path) -> None:
    t0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)

    async def seed() -> None:
        audit = await AuditLog.open(tmp_path / "var")
        try:
            await audit.append("agent_connected", now=t0, subject="dev-1",
                               personal={"alias": "Front Desk"})
            await audit.append("agent_connected", now=t0, subject="dev-2",
                               personal={"alias": "Back Office"})
            for minute, (actor, device) in enumerate([("alice", "dev-1"), ("bob", "dev-2"),
                                                      ("alice", "dev-2")], start=1):
                await audit.append("join_requested", now=t0 + dt.timedelta(minutes=minute),
                                   session=f"s{minute}", actor=actor, subject=device)
        finally:
            await audit.close()

    asyncio.run(seed())

    def seqs(*flags: str) -> list[int]:
        result = run(tmp_path, "audit", "list", "--json", *flags)
        assert result.returncode == 0, result.stderr
        return [json.loads(line)["seq"] for line in result.stdout.splitlines()]

    assert seqs("--engineer", "alice") == [3, 5]
    assert seqs("--subject", "FRONT DESK") == [1, 3]
    assert seqs("--since", "2025-03-01T09:02Z", "--type", "join_requested") == [4, 5]
    assert seqs("--until", "2025-03-01T09:02:00+00:00", "--type", "join_requested") == [3]
    assert seqs("--session", "s2") == [4]
    assert seqs("--type", "join_requested", "--limit", "2") == [4, 5]
    # Each listing above was logged; the alias searched for was not.
    listing = run(tmp_path, "audit", "list", "--type", "audit_read")
    assert listing.stdout.count(" audit_read ") == 6
    assert '"subject":true' in listing.stdout
    assert "FRONT DESK" not in listing.stdout
    assert_clean_error(run(tmp_path, "audit", "list", "--since", "last week"), 2, "--since")


def test_serve_takes_witnesses_and_a_checkpoint_command() -> None:
    from broker.cli import build_parser

    args = build_parser().parse_args(["serve", "--witness", "a.jsonl", "--witness", "b.jsonl",
                                      "--checkpoint-command", "logger -t consentry"])
    assert args.witness == [Path("a.jsonl"), Path("b.jsonl")]
    assert args.checkpoint_command == "logger -t consentry"
