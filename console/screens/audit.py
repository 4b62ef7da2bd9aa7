"""The audit browser, for admins: filter, page, open one session, save its
timeline to a file, and have the broker verify the whole log."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, DataTable, Input, Static

from broker.wire.text import printable
from console.audit_roster import session_roster
from console.errors import ConsoleError
from console.format import literal, size
from console.screens.app_access import backend_of

PAGE_SIZE = 50
# How often the newest page asks for newer events while it is on screen. The
# broker logs such a poll (`audit_read`) only when it found something, so an
# idle log stays idle; an older page is never re-read behind the reader's
# back, it says its age.
REFRESH_SECONDS = 10.0
_TICK_SECONDS = 1.0
FILTERS = (  # (query field, placeholder: short enough for 80 columns)
    ("since", "since"),
    ("until", "until"),
    ("engineer", "engineer"),
    ("alias", "device"),
    ("type", "type"),
    ("session", "session"),
)


def _short_time(value: object) -> str:
    """``2026-11-18T10:00:57.123Z`` -> ``11-18 10:00:57``: the year and the
    fraction cost columns an 80-wide terminal does not have."""
    text = str(value or "")
    return f"{text[5:10]} {text[11:19]}" if len(text) >= 19 else text


def _body_text(event: dict[str, Any]) -> Text:
    body = event.get("body") or {}
    return literal(json.dumps(body, sort_keys=True, ensure_ascii=False), 160)


class AuditPane(Vertical):
    """Newest first; keyset paging (`before_seq`) so deep pages stay fast."""

    BINDINGS = [
        Binding("n", "older", "Older"),
        Binding("p", "newer", "Newer"),
        Binding("r", "reload", "Reload"),
        Binding("v", "verify", "Verify"),
        Binding("e", "export_session", "Export"),
        Binding("escape", "close_detail", "Close detail", show=False),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._pages: list[int | None] = [None]  # before_seq of each page seen
        self._more = False
        self._filters: dict[str, str] = {}
        # The events of the page shown, by row key (their seq): the table
        # holds display text, cut to fit, and an export needs the real id.
        self._shown: dict[str, dict[str, Any]] = {}
        # When the page shown was read (monotonic, and UTC for the reader),
        # and what its info line says apart from its age.
        self._loaded_at: float | None = None
        self._loaded_utc = ""
        self._summary = ""

    def compose(self) -> ComposeResult:
        with Horizontal(id="audit-filters"):
            for name, placeholder in FILTERS:
                # Compact (no border): one row, and room at 80 columns for
                # every placeholder and the Apply button.
                field = Input(id=f"f-{name}", placeholder=placeholder, classes="audit-filter",
                              compact=True)
                field.tooltip = {"since": "UTC date or time, e.g. 2026-11-01 or 2026-11-01T09:00",
                                 "until": "UTC date or time (exclusive)",
                                 "alias": "the device alias, exact (case does not matter)",
                                 }.get(name, placeholder)
                yield field
            yield Button("Apply", id="apply", variant="primary", compact=True)
        yield Static("", id="audit-info")
        with Horizontal(id="audit-body"):
            yield DataTable(id="events", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="audit-detail-box"):
                yield Static("Select an event to see its session.", id="audit-detail")

    def on_mount(self) -> None:
        table = self.query_one("#events", DataTable)
        for label in ("Seq", "UTC", "Type", "Session", "Engineer", "Device", "Details"):
            table.add_column(label, key=label.lower())
        self.reload()
        self.set_interval(_TICK_SECONDS, self._tick)

    def _following(self) -> bool:
        """The newest page, unfiltered by paging: the one that follows the log."""
        return len(self._pages) == 1

    def _tick(self) -> None:
        if self._loaded_at is None:
            return
        age = time.monotonic() - self._loaded_at
        if (self._following() and age >= REFRESH_SECONDS and self._visible()
                and not self._busy()):
            self._follow(dict(self._filters))
            return
        self._show_info()

    def _visible(self) -> bool:
        # An inactive tab is hidden by `display` on one of its ancestors.
        return self.screen is self.app.screen and all(
            getattr(node, "display", True) for node in self.ancestors_with_self)

    def _busy(self) -> bool:
        return any(w.group == "audit" and w.is_running for w in self.workers)

    def _show_info(self) -> None:
        if self._loaded_at is None:
            return
        age = int(time.monotonic() - self._loaded_at)
        when = (f"live (every {REFRESH_SECONDS:g} s), checked {self._loaded_utc} UTC"
                if self._following() else
                f"as of {self._loaded_utc} UTC, {age} s ago · r: reload")
        self.query_one("#audit-info", Static).update(
            literal(f"{self._summary} · {when}", 300))

    def _collect(self) -> dict[str, str]:
        values = {}
        for name, _ in FILTERS:
            value = self.query_one(f"#f-{name}", Input).value.strip()
            if value:
                values[name] = value
        return values

    @on(Button.Pressed, "#apply")
    @on(Input.Submitted, ".audit-filter")
    def action_reload(self) -> None:
        self._filters = self._collect()
        self._pages = [None]
        self.reload()

    def action_older(self) -> None:
        if self._more:
            table = self.query_one("#events", DataTable)
            last = table.get_row_at(table.row_count - 1)[0]
            self._pages.append(int(str(last)))
            self.reload()

    def action_newer(self) -> None:
        if len(self._pages) > 1:
            self._pages.pop()
            self.reload()

    def reload(self) -> None:
        self._load(dict(self._filters), self._pages[-1])

    @work(exclusive=True, group="audit")
    async def _follow(self, filters: dict[str, str]) -> None:
        """New events on top of the newest page, the reader's place kept."""
        if not self._visible():
            return  # hidden since the tick asked (a worker starts a moment later)
        newest = max((int(seq) for seq in self._shown), default=0)
        query: dict[str, Any] = {**filters, "limit": PAGE_SIZE, "after_seq": newest}
        try:
            events, more = await backend_of(self).audit_query(**query)
        except ConsoleError as exc:
            self.query_one("#audit-info", Static).update(
                literal(f"Could not read the audit log: {exc}", 300, "bold red"))
            return
        if more:  # more arrived than a page holds: start from the head again
            await self._read_page(filters, None)
            return
        kept = list(self._shown.values())[:PAGE_SIZE - len(events)]
        self._show_events(filters, events + kept,
                          self._more or len(kept) < len(self._shown))

    @work(exclusive=True, group="audit")
    async def _load(self, filters: dict[str, str], before: int | None) -> None:
        await self._read_page(filters, before)

    async def _read_page(self, filters: dict[str, str], before: int | None) -> None:
        info = self.query_one("#audit-info", Static)
        info.update("Loading ...")
        query: dict[str, Any] = {**filters, "limit": PAGE_SIZE}
        if before is not None:
            query["before_seq"] = before
        try:
            events, more = await backend_of(self).audit_query(**query)
        except ConsoleError as exc:
            info.update(literal(f"Could not read the audit log: {exc}", 300, "bold red"))
            return
        self._show_events(filters, events, more)

    def _show_events(self, filters: dict[str, str], events: list[dict[str, Any]],
                     more: bool) -> None:
        self._more = more
        self._shown = {str(event.get("seq")): event for event in events}
        table = self.query_one("#events", DataTable)
        # Keep the reader's place across a refresh: the same event selected,
        # the view moved by as many rows as arrived above it.
        selected: str | None = None
        if table.row_count:
            selected = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        old_row, old_scroll = table.cursor_row, table.scroll_y
        table.clear()
        for event in events:
            table.add_row(
                literal(event.get("seq")), literal(_short_time(event.get("time"))),
                literal(event.get("type"), 30), literal(event.get("session") or "-", 16),
                literal(event.get("actor") or "-", 32), literal(event.get("alias") or "-", 32),
                _body_text(event),
                key=str(event.get("seq")),
            )
        if selected in self._shown:
            row = table.get_row_index(selected)
            table.move_cursor(row=row, animate=False, scroll=False)
            table.scroll_to(y=max(0, old_scroll + row - old_row), animate=False)
        page = len(self._pages)
        shown = ", ".join(f"{k}={v}" for k, v in filters.items()) or "none"
        self._summary = (
            f"Page {page} (newest first) · {len(events)} events · filters: {shown} · "
            f"{'n: older' if more else 'no older events'}{' · p: newer' if page > 1 else ''}")
        self._loaded_at = time.monotonic()
        self._loaded_utc = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
        self._show_info()

    def action_verify(self) -> None:
        self._verify()

    @work(exclusive=True, group="audit-verify")
    async def _verify(self) -> None:
        detail = self.query_one("#audit-detail", Static)
        self.query_one("#audit-detail-box").add_class("-open")
        detail.update("Verifying the whole log on the broker (chain and signed "
                      "checkpoints); on a long log this takes a while ...")
        try:
            result = await backend_of(self).audit_verify()
        except ConsoleError as exc:
            text = f"Could not verify the log: {exc}"
            detail.update(literal(text, 400, "bold red"))
            self.app.notify(text[:200], severity="error", markup=False)
            return
        detail.update(verify_text(result))
        ok = result.get("ok") is True
        self.app.notify(
            "Audit log verified: intact." if ok else
            "Audit log verification FAILED: see the detail pane.",
            severity="information" if ok else "error", timeout=10, markup=False)

    def action_export_session(self) -> None:
        table = self.query_one("#events", DataTable)
        if table.row_count == 0:
            self.app.notify("No event to export.", severity="warning", markup=False)
            return
        row_key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        event = self._shown.get(str(row_key.value), {})
        session = event.get("session")
        if not isinstance(session, str) or not session:
            self.app.notify("The selected event belongs to no session: select one that does.",
                            severity="warning", markup=False)
            return
        self._export(session)

    @work(exclusive=True, group="audit-export")
    async def _export(self, session: str) -> None:
        try:
            events = await backend_of(self).audit_session(session)
            path = await asyncio.to_thread(save_session, Path.cwd(), session, events,
                                           dt.datetime.now(dt.UTC))
        except (ConsoleError, OSError) as exc:
            self.app.notify(printable(f"Could not export the session: {exc}", 300),
                            severity="error",
                            markup=False)
            return
        self.app.notify(f"Saved the timeline of session {printable(session, 64)} "
                        f"({len(events)} events) to {printable(path, 300)}",
                        timeout=10, markup=False)

    def action_close_detail(self) -> None:
        self.query_one("#audit-detail-box").remove_class("-open")

    @on(DataTable.RowSelected, "#events")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.query_one("#audit-detail-box").add_class("-open")
        row = event.data_table.get_row(event.row_key)
        session = str(row[3])
        if session and session != "-":
            self._detail(session)
        else:
            self.query_one("#audit-detail", Static).update(
                Text.assemble(literal(row[2], 40, "bold"), "\n", literal(row[6], 600)))

    @work(exclusive=True, group="audit-detail")
    async def _detail(self, session: str) -> None:
        detail = self.query_one("#audit-detail", Static)
        detail.update(literal(f"Loading session {session} ..."))
        try:
            events = await backend_of(self).audit_session(session)
        except ConsoleError as exc:
            detail.update(literal(f"Could not read the session: {exc}", 300, "bold red"))
            return
        detail.update(session_timeline(session, events))


def session_timeline(session: str, events: list[dict[str, Any]]) -> Text:
    """One session's story: who, what was allowed (with the receipt), how it ended."""
    out = Text()
    out.append("Session ", style="bold")
    out.append_text(literal(session, 40, "bold"))
    out.append_text(roster_text(events))
    for event in events:
        out.append("\n")
        out.append_text(literal(str(event.get("time", ""))[:19], 30, "dim"))
        out.append("  ")
        out.append_text(literal(event.get("type"), 40, "bold"))
        body = event.get("body") or {}
        if "seat" in body:  # a shared session: whose event this is
            out.append("  ")
            out.append_text(literal(f"{event.get('actor') or '?'} [{body['seat']}]", 90))
        for key in ("reason", "granted", "asked", "decision", "direction", "bytes", "outcome",
                    "chat_lines", "duration_s", "bytes_to_agent", "bytes_to_console", "wants"):
            if key in body:
                out.append("\n    ")
                out.append_text(literal(f"{key}: {body[key]}", 200))
        if event.get("alias"):
            out.append("\n    device: ")
            out.append_text(literal(event["alias"], 60))
        receipt = event.get("receipt")
        if receipt:
            verified = event.get("receipt_verified")
            out.append("\n    signed consent receipt ")
            # Keyed by object: `verified` is whatever the export holds (None when absent).
            verdicts: dict[object, tuple[str, str]] = {
                True: ("(signature valid)", "green"), False: ("(DOES NOT VERIFY)", "bold red")}
            out.append(*verdicts.get(verified, ("(signature not checkable)", "dim")))
            out.append(":\n")
            out.append_text(literal(json.dumps(receipt, sort_keys=True, indent=None), 600,
                                    "italic"))
    if not events:
        out.append("\n(no events)")
    return out


_VERDICT = {True: ("receipt valid", "green"), False: ("receipt DOES NOT VERIFY", "bold red"),
            None: ("receipt not checkable", "dim")}


def roster_text(events: list[dict[str, Any]]) -> Text:
    """A shared session's engineers, one block each: joined, receipts,
    rights changes, how they left, time and bytes. Empty for one engineer."""
    out = Text()
    roster = session_roster(events)
    if not roster:
        return out
    out.append(f"\n{len(roster)} engineers in this session", style="bold")
    for one in roster:
        out.append("\n  ")
        out.append_text(literal(one.engineer, 64, "bold"))
        out.append_text(literal(f" [{one.seat}]", 30, "dim"))
        if one.joined:
            out.append_text(literal(f"  joined {one.joined[:19]} with "
                                    f"{', '.join(one.granted) or '-'}", 120))
        for decision, verified in one.consents:
            out.append("\n    consent ")
            out.append_text(literal(decision, 20))
            out.append(" · ")
            out.append(*_VERDICT.get(verified, _VERDICT[None]))
        for when, rights in one.rights_changes:
            out.append("\n    ")
            out.append_text(literal(f"rights now {', '.join(rights)} at {when[:19]}", 120))
        if one.left:
            out.append("\n    ")
            line = f"{one.left} ({one.left_reason})" if one.left_reason else one.left
            share = one.share
            if "duration_s" in share:
                line += f" after {share['duration_s']} s"
            if isinstance(share.get("bytes_to_agent"), int) and isinstance(
                    share.get("bytes_to_console"), int):
                line += (f"; {size(share['bytes_to_agent'])} to the agent, "
                         f"{size(share['bytes_to_console'])} to the console")
            out.append_text(literal(line, 200))
    out.append("\n")
    return out


def verify_text(result: dict[str, Any]) -> Text:
    """The broker's verification result for the detail pane."""
    ok = result.get("ok") is True
    out = Text()
    out.append("Log verification\n", style="bold")
    out.append("intact" if ok else "FAILED", style="bold green" if ok else "bold red")
    first = result.get("first_bad_seq")
    if isinstance(first, int):
        out.append_text(literal(f" · first bad seq {first}", 40, "bold red"))
    out.append("\n")
    out.append_text(literal(result.get("summary", ""), 1000))
    return out


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


def save_session(directory: Path, session: str, events: list[dict[str, Any]],
                 now: dt.datetime) -> Path:
    """Write one session's timeline as JSON in `directory`; return its path.

    A new file every time (never overwriting), mode 0600: it holds the
    device's alias and IP address. The session id comes from the broker, so
    only its safe characters make it into the file name.
    """
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = f"consentry-session-{_UNSAFE_NAME.sub('_', session)[:64]}-{stamp}"
    data = json.dumps({
        "format": "consentry-session-export/1", "session": session,
        "exported_at": now.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "events": events,
    }, ensure_ascii=True, indent=2, sort_keys=True) + "\n"
    for attempt in range(100):
        path = directory / (base + (f"-{attempt}" if attempt else "") + ".json")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(data)
        return path
    raise FileExistsError(f"too many exports of session {session} in {directory} this second")
