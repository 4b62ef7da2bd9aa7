"""The audit browser, for admins: filter, page, and open one session."""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, DataTable, Input, Static

from console.errors import ConsoleError
from console.format import literal

PAGE_SIZE = 50
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
        Binding("escape", "close_detail", "Close detail", show=False),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._pages: list[int | None] = [None]  # before_seq of each page seen
        self._more = False
        self._filters: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        with Horizontal(id="audit-filters"):
            for name, placeholder in FILTERS:
                field = Input(id=f"f-{name}", placeholder=placeholder, classes="audit-filter")
                field.tooltip = {"since": "UTC date or time, e.g. 2026-11-01 or 2026-11-01T09:00",
                                 "until": "UTC date or time (exclusive)",
                                 "alias": "the device alias, exact (case does not matter)",
                                 }.get(name, placeholder)
                yield field
            yield Button("Apply", id="apply", variant="primary")
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
    async def _load(self, filters: dict[str, str], before: int | None) -> None:
        info = self.query_one("#audit-info", Static)
        info.update("Loading ...")
        query: dict[str, Any] = {**filters, "limit": PAGE_SIZE}
        if before is not None:
            query["before_seq"] = before
        try:
            events, more = await self.app.backend.audit_query(**query)  # type: ignore[attr-defined]
        except ConsoleError as exc:
            info.update(literal(f"Could not read the audit log: {exc}", 300, "bold red"))
            return
        self._more = more
        table = self.query_one("#events", DataTable)
        table.clear()
        for event in events:
            table.add_row(
                literal(event.get("seq")), literal(_short_time(event.get("time"))),
                literal(event.get("type"), 30), literal(event.get("session") or "-", 16),
                literal(event.get("actor") or "-", 32), literal(event.get("alias") or "-", 32),
                _body_text(event),
                key=str(event.get("seq")),
            )
        page = len(self._pages)
        shown = ", ".join(f"{k}={v}" for k, v in filters.items()) or "none"
        info.update(literal(
            f"Page {page} (newest first) · {len(events)} events · filters: {shown} · "
            f"{'n: older' if more else 'no older events'}{' · p: newer' if page > 1 else ''}",
            300,
        ))

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
            events = await self.app.backend.audit_session(session)  # type: ignore[attr-defined]
        except ConsoleError as exc:
            detail.update(literal(f"Could not read the session: {exc}", 300, "bold red"))
            return
        detail.update(session_timeline(session, events))


def session_timeline(session: str, events: list[dict[str, Any]]) -> Text:
    """One session's story: who, what was allowed (with the receipt), how it ended."""
    out = Text()
    out.append("Session ", style="bold")
    out.append_text(literal(session, 40, "bold"))
    for event in events:
        out.append("\n")
        out.append_text(literal(str(event.get("time", ""))[:19], 30, "dim"))
        out.append("  ")
        out.append_text(literal(event.get("type"), 40, "bold"))
        body = event.get("body") or {}
        for key in ("reason", "granted", "asked", "decision", "duration_s",
                    "bytes_to_agent", "bytes_to_console", "wants"):
            if key in body:
                out.append("\n    ")
                out.append_text(literal(f"{key}: {body[key]}", 200))
        if event.get("alias"):
            out.append("\n    device: ")
            out.append_text(literal(event["alias"], 60))
        receipt = event.get("receipt")
        if receipt:
            out.append("\n    signed consent receipt:\n")
            out.append_text(literal(json.dumps(receipt, sort_keys=True, indent=None), 600,
                                    "italic"))
    if not events:
        out.append("\n(no events)")
    return out
