"""The audit browser's actions, with Pilot and the fake backend: `v` has the
broker verify the log, `e` saves the selected session's timeline to a file."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static, TabbedContent

from console.screens.audit import PAGE_SIZE, AuditPane, save_session, session_timeline
from tests.console.test_app import Harness, connect, text_of, until


async def open_audit(pilot, harness: Harness) -> DataTable:  # type: ignore[no-untyped-def]
    await connect(pilot, harness.app)
    harness.app.screen.query_one("#tabs", TabbedContent).active = "audit"
    table = harness.app.screen.query_one("#events", DataTable)
    await until(pilot, lambda: table.row_count == 50)
    table.focus()
    # Focus lands a message later; a test that switches tabs before it lands
    # would be switched back to the audit tab by it (TabbedContent follows focus).
    await until(pilot, lambda: table.has_focus)
    return table


def notices(harness: Harness) -> list[str]:
    return [str(n.message) for n in harness.app._notifications]


async def test_v_verifies_and_shows_an_intact_log() -> None:
    harness = Harness(role="admin")
    async with harness.app.run_test(size=(120, 34)) as pilot:
        await open_audit(pilot, harness)
        await pilot.press("v")
        detail = harness.app.screen.query_one("#audit-detail", Static)
        await until(pilot, lambda: "intact" in text_of(detail))
        assert harness.backend.verifies == 1
        assert "120 events (seq 1-120)" in text_of(detail)
        await until(pilot, lambda: any("verified: intact" in n for n in notices(harness)))


async def test_v_shows_a_failed_verification_with_the_first_bad_seq() -> None:
    harness = Harness(role="admin")
    async with harness.app.run_test(size=(80, 24)) as pilot:
        await open_audit(pilot, harness)
        harness.backend.verify_result = {
            "ok": False, "first_bad_seq": 42,
            "summary": "audit log NOT intact: 1 problem, first bad seq 42; first problem: "
                       "seq 42: [red]hash[/] does not match\x1b[2J"}
        await pilot.press("v")
        detail = harness.app.screen.query_one("#audit-detail", Static)
        await until(pilot, lambda: "FAILED" in text_of(detail))
        shown = text_of(detail)
        assert "first bad seq 42" in shown
        # The summary is shown literally: no markup, no escape sequence acting.
        assert "[red]hash[/]" in shown and "\\x1b[2J" in shown
        await until(pilot, lambda: any("FAILED" in n for n in notices(harness)))


async def test_e_saves_the_selected_sessions_timeline(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    harness = Harness(role="admin")
    async with harness.app.run_test(size=(120, 34)) as pilot:
        table = await open_audit(pilot, harness)
        # Row 0 is seq 120, a `session_ended` of sess20 (see fakes.make_events).
        table.move_cursor(row=0)
        await pilot.press("e")
        await until(pilot, lambda: list(tmp_path.glob("consentry-session-*.json")))
        (path,) = tmp_path.glob("consentry-session-*.json")
        assert path.name.startswith("consentry-session-sess20-")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        saved = json.loads(path.read_text())
        assert saved["session"] == "sess20"
        assert [e["seq"] for e in saved["events"]] == [
            e["seq"] for e in harness.backend.events if e["session"] == "sess20"]
        await until(pilot, lambda: any(str(path) in n for n in notices(harness)))


async def test_e_on_an_event_without_a_session_says_so(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    harness = Harness(role="admin")
    async with harness.app.run_test(size=(120, 34)) as pilot:
        table = await open_audit(pilot, harness)
        row = next(i for i in range(table.row_count)
                   if "engineer_login" in str(table.get_row_at(i)[2]))
        table.move_cursor(row=row)
        await pilot.press("e")
        await until(pilot, lambda: any("belongs to no session" in n
                                       for n in notices(harness)))
        assert not list(tmp_path.iterdir())


def test_save_session_never_overwrites_and_sanitises_the_name(tmp_path: Path) -> None:
    now = dt.datetime(2026, 11, 18, 10, 0, tzinfo=dt.UTC)
    first = save_session(tmp_path, "../../etc/passwd", [], now)
    second = save_session(tmp_path, "../../etc/passwd", [{"seq": 1}], now)
    assert first.parent == second.parent == tmp_path
    assert first != second
    assert first.name == "consentry-session-______etc_passwd-20261118T100000Z.json"
    assert json.loads(second.read_text())["events"] == [{"seq": 1}]


# -- following the log live, and naming the device ----------------------------------


def add_events(harness: Harness, count: int) -> None:
    events = harness.backend.events
    for _ in range(count):
        seq = events[-1]["seq"] + 1
        events.append({"seq": seq, "time": "2026-11-30T10:00:00.000000Z", "type": "audit_read",
                       "session": None, "actor": "root", "subject": None, "alias": None,
                       "ip": None, "body": {}})


async def test_the_newest_page_follows_new_events_and_keeps_the_selection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("console.screens.audit.REFRESH_SECONDS", 0.3)
    harness = Harness(role="admin")
    async with harness.app.run_test(size=(120, 34)) as pilot:
        table = await open_audit(pilot, harness)
        table.move_cursor(row=3)  # seq 117
        await pilot.pause()
        add_events(harness, 5)
        await until(pilot, lambda: str(table.get_row_at(0)[0]) == "125")
        selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        assert selected == "117" and table.cursor_row == 8
        info = harness.app.screen.query_one("#audit-info", Static)
        assert "live" in text_of(info)
        # It asked only for what is newer than its newest row (the broker
        # logs such a poll only when it finds something), and the page stays
        # one page long, older rows falling off its end.
        follows = [q for q in harness.backend.queries if "after_seq" in q]
        assert follows and follows[0]["after_seq"] == 120
        assert table.row_count == PAGE_SIZE
        assert str(table.get_row_at(PAGE_SIZE - 1)[0]) == str(125 - PAGE_SIZE + 1)


async def test_more_new_events_than_a_page_start_from_the_head_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("console.screens.audit.REFRESH_SECONDS", 0.3)
    harness = Harness(role="admin")
    async with harness.app.run_test(size=(120, 34)) as pilot:
        table = await open_audit(pilot, harness)
        add_events(harness, PAGE_SIZE + 5)
        newest = str(harness.backend.events[-1]["seq"])
        await until(pilot, lambda: str(table.get_row_at(0)[0]) == newest)
        assert table.row_count == PAGE_SIZE
        assert "after_seq" not in harness.backend.queries[-1]


async def test_an_older_page_says_how_old_it_is_and_is_left_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("console.screens.audit.REFRESH_SECONDS", 0.3)
    harness = Harness(role="admin")
    async with harness.app.run_test(size=(120, 34)) as pilot:
        table = await open_audit(pilot, harness)
        await pilot.press("n")
        await until(pilot, lambda: str(table.get_row_at(0)[0]) == "70")
        queries = len(harness.backend.queries)
        info = harness.app.screen.query_one("#audit-info", Static)
        await until(pilot, lambda: "s ago" in text_of(info), timeout=5)
        assert "as of" in text_of(info) and "r: reload" in text_of(info)
        assert len(harness.backend.queries) == queries  # not re-read behind your back


async def test_the_audit_log_is_not_polled_while_it_is_not_shown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("console.screens.audit.REFRESH_SECONDS", 0.2)
    monkeypatch.setattr("console.screens.audit._TICK_SECONDS", 0.1)
    ticks: list[bool] = []
    tick = AuditPane._tick

    def counted(pane: AuditPane) -> None:
        ticks.append(pane._visible())
        tick(pane)

    monkeypatch.setattr(AuditPane, "_tick", counted)
    harness = Harness(role="admin")
    async with harness.app.run_test(size=(120, 34)) as pilot:
        await open_audit(pilot, harness)
        pane = harness.app.screen.query_one(AuditPane)
        await until(pilot, lambda: len(harness.backend.queries) >= 2)  # it follows
        harness.app.screen.show_tab("home")  # type: ignore[attr-defined]
        await until(pilot, lambda: not pane._visible() and not pane._busy())
        queries, hidden_ticks = len(harness.backend.queries), len(ticks)
        # Ten ticks while hidden, each long past REFRESH_SECONDS.
        await until(pilot, lambda: len(ticks) >= hidden_ticks + 10)
        assert not any(ticks[hidden_ticks:])
        # Every read is an audit event on the broker: none for a hidden page.
        assert len(harness.backend.queries) == queries
        assert harness.app.screen.query_one("#tabs", TabbedContent).active == "home"


def test_a_sessions_story_shows_each_file_and_chat_counts_without_names() -> None:
    story = session_timeline("sessA1", [
        {"seq": 5, "time": "2026-11-18T10:00:05Z", "type": "file_transferred",
         "actor": "alice", "body": {"direction": "upload", "bytes": 2048,
                                    "outcome": "complete"}},
        {"seq": 6, "time": "2026-11-18T10:01:00Z", "type": "session_ended",
         "actor": "alice", "body": {"reason": "customer_ended",
                                    "chat_lines": {"engineer": 2, "customer": 1}}},
    ]).plain
    assert "direction: upload" in story and "bytes: 2048" in story
    assert "outcome: complete" in story
    assert "chat_lines: {'engineer': 2, 'customer': 1}" in story
