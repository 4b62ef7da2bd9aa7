"""`audit export`: JSON Lines and CSV for SIEM tools (no personal data, values
made safe), filters, files written whole or not at all, every export logged;
and `--subject`, the data-subject access export."""

from __future__ import annotations

import concurrent.futures
import csv
import datetime as dt
import io
import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from broker.audit.chain import event_hash
from broker.audit.export import csv_cell
from broker.audit.store import AuditLog
from broker.cli import main

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
DEVICE = "dev-5b1f0c3e"
ALIAS = "Grandma's PC"
IP = "192.0.2.77"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    # The CLI runs its own event loop: a thread, since the test has one too.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        code = pool.submit(main, list(args)).result()
    out, err = capsys.readouterr()
    return code, out, err


async def seed(data_dir: Path) -> None:
    audit = await AuditLog.open(data_dir)
    try:
        await audit.append("agent_connected", now=T0, subject=DEVICE, body={"shared": []},
                           personal={"alias": ALIAS, "ip": IP})
        await audit.append("engineer_login", now=T0 + dt.timedelta(hours=1), actor="alice",
                           body={"role": "engineer"})
        await audit.append("join_requested", now=T0 + dt.timedelta(hours=2), session="s1",
                           actor="alice", subject=DEVICE, body={"wants": ["view"]})
        # Hostile values, as a peer or a tampering hand might leave them.
        await audit.append("session_ended", now=T0 + dt.timedelta(hours=3), session="s1",
                           actor="=HYPERLINK(\"http://x\")", subject=DEVICE, body={
                               "reason": "-2+3\n\x1b[31m\u202eé", "bytes_to_agent": 5})
    finally:
        await audit.close()


async def events_of(data_dir: Path, type: str) -> list[Any]:
    audit = await AuditLog.open(data_dir)
    try:
        return await audit.events(type=type)
    finally:
        await audit.close()


async def test_jsonl_is_ascii_one_event_per_line_and_has_no_personal_data(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await seed(tmp_path)
    code, out, _ = cli(capsys, "audit", "export", "--data-dir", str(tmp_path))
    assert code == 0 and out.isascii()
    lines = out.splitlines()
    assert len(lines) == 4
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]  # oldest first
    assert set(events[0]) == {"seq", "time", "type", "session", "actor", "subject", "body",
                              "prev_hash", "hash"}
    assert events[3]["body"]["reason"] == "-2+3\n\x1b[31m\u202eé"  # exact, escaped
    assert ALIAS not in out and IP not in out and "Grandma" not in out
    assert events[0]["subject"] != DEVICE and len(events[0]["subject"]) == 32  # pseudonym
    # Enough to re-check the chain offline.
    for event in events:
        assert event["hash"] == event_hash(
            event["prev_hash"], event["seq"], event["time"], event["type"], event["session"],
            event["actor"], event["subject"], event["body"])
    (exported,) = await events_of(tmp_path, "audit_exported")
    assert exported.body == {"kind": "events", "format": "jsonl", "filters": {},
                             "output": "stdout", "events": 4, "through_seq": 4,
                             "complete": True}
    assert exported.actor.startswith("cli:")


async def test_csv_quotes_and_defuses_formulas(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    await seed(tmp_path)
    code, out, _ = cli(capsys, "audit", "export", "--format", "csv",
                       "--data-dir", str(tmp_path))
    assert code == 0
    rows = list(csv.reader(io.StringIO(out, newline="")))
    assert rows[0] == ["seq", "time", "type", "session", "actor", "subject", "body_json"]
    assert len(rows) == 5
    ended = rows[4]
    assert ended[4] == "'=HYPERLINK(\"http://x\")"  # shown as text, never evaluated
    body = json.loads(ended[6])
    assert body["reason"] == "-2+3\n\x1b[31m\u202eé"
    assert ended[6].isascii() and "\n" not in ended[6]
    assert rows[1][3] == "" and rows[1][4] == ""  # None is an empty cell
    assert ALIAS not in out and IP not in out


@pytest.mark.parametrize(("value", "cell"), [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\tx", "'\tx"), ("\rx", "'\rx"), ("alice", "alice"), ("", ""), (None, ""),
    ("a=b", "a=b"), (12, "12"),
])
def test_csv_cells(value: object, cell: str) -> None:
    assert csv_cell(value) == cell


async def test_filters_as_in_audit_list(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    await seed(tmp_path)

    def seqs(*flags: str) -> list[int]:
        code, out, err = cli(capsys, "audit", "export", *flags, "--data-dir", str(tmp_path))
        assert code == 0, err
        return [json.loads(line)["seq"] for line in out.splitlines()]

    assert seqs("--session", "s1") == [3, 4]
    assert seqs("--type", "engineer_login") == [2]
    assert seqs("--engineer", "alice") == [2, 3]
    assert seqs("--since", "2025-03-01T13:00Z", "--until", "2025-03-01T15:00Z") == [2, 3]
    # Offsets are honoured (13:00 UTC), and the exports' own records are newer.
    assert seqs("--since", "2025-03-01T14:00:00+01:00", "--until", "2025-03-02") == [2, 3, 4]
    (first, *_rest) = [e for e in await events_of(tmp_path, "audit_exported")]
    assert first.body["filters"] == {"session": "s1"}


async def test_the_export_covers_the_log_as_it_was_when_it_started(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await seed(tmp_path)
    cli(capsys, "audit", "export", "--data-dir", str(tmp_path))
    # The second export sees the first one's record, never its own.
    code, out, _ = cli(capsys, "audit", "export", "--data-dir", str(tmp_path))
    assert code == 0
    types = [json.loads(line)["type"] for line in out.splitlines()]
    assert types[-1] == "audit_exported" and types.count("audit_exported") == 1


async def test_output_file_is_private_and_whole(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    await seed(tmp_path / "var")
    target = tmp_path / "out.csv"
    target.write_text("old contents\n")
    code, out, err = cli(capsys, "audit", "export", "--format", "csv", "--output", str(target),
                         "--data-dir", str(tmp_path / "var"))
    assert code == 0 and out == ""
    assert f"exported 4 events (through seq 4) to {target}" in err
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text().startswith("seq,time,type")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "var"]  # no leftovers
    (exported,) = await events_of(tmp_path / "var", "audit_exported")
    assert exported.body["output"] == str(target) and exported.body["format"] == "csv"


async def test_a_failed_export_leaves_no_file_and_is_logged_as_incomplete(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(tmp_path / "var")
    from broker.audit_cli import export as export_cli

    calls = 0

    def failing(event: Any) -> str:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(28, "No space left on device")
        return "x\n"

    monkeypatch.setattr(export_cli, "jsonl_line", failing)
    target = tmp_path / "out.jsonl"
    with pytest.raises(OSError, match="No space left"):
        cli(capsys, "audit", "export", "--output", str(target),
            "--data-dir", str(tmp_path / "var"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["var"]
    (exported,) = await events_of(tmp_path / "var", "audit_exported")
    assert exported.body["complete"] is False and exported.body["events"] == 2


@pytest.mark.parametrize(("flags", "message"), [
    (["--format", "json"], "--format json is for --subject"),
    (["--device", "ab" * 16], "--device picks one of the devices"),
    (["--subject", "x", "--format", "csv"], "--subject exports one JSON document"),
    (["--subject", "x", "--type", "consent_granted"], "does not combine with --subject"),
])
async def test_flag_mistakes_are_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           flags: list[str], message: str) -> None:
    await seed(tmp_path)
    code, _, err = cli(capsys, "audit", "export", *flags, "--data-dir", str(tmp_path))
    assert code == 2 and message in err


async def test_subject_export_is_everything_about_one_device(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await seed(tmp_path)
    code, out, _ = cli(capsys, "audit", "export", "--subject", "grandma's pc",
                       "--data-dir", str(tmp_path))
    assert code == 0 and out.isascii()
    data = json.loads(out)
    held = json.dumps(data)
    assert "Grandma's PC" in held and IP in held  # decrypted: it is the subject's own data
    assert "engineer_login" not in held  # and only theirs
    recorded = await events_of(tmp_path, "subject_exported")
    assert len(recorded) == 1 and recorded[0].actor.startswith("cli:")
    assert ALIAS not in json.dumps(recorded[0].body)


async def test_subject_export_for_an_unknown_alias_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await seed(tmp_path)
    code, out, err = cli(capsys, "audit", "export", "--subject", "nobody's laptop",
                         "--data-dir", str(tmp_path))
    assert code == 4 and out == "" and err


async def test_subject_export_says_when_this_build_lacks_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(tmp_path)
    monkeypatch.setitem(sys.modules, "broker.audit.subjects", None)  # import fails
    code, _, err = cli(capsys, "audit", "export", "--subject", "x", "--data-dir", str(tmp_path))
    assert code == 2 and "not available" in err


def test_help_says_personal_data_is_left_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "export", "--help"]) == 0
    text = capsys.readouterr().out
    assert "Personal fields" in text and "NOT included" in text
    assert "apostrophe" in text
