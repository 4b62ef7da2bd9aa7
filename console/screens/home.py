"""Home: join with a code, and the list of your own sessions."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, DataTable, Input, Label, Static, Switch

from broker.wire.code import parse_code
from broker.wire.errors import CodeError
from console.format import clock, literal, rights
from console.sessions import SessionRecord

STATE_STYLE = {
    "active": "bold green", "waiting": "yellow", "pairing": "yellow", "joining": "yellow",
    "ended": "dim", "wrong code": "bold red", "declined": "red", "timed out": "red",
    "key mismatch": "bold red", "refused": "red", "session full": "red", "failed": "red",
}


def control_label(wanted: bool) -> str:
    """The switch's state in words: its colours alone can look the same in
    a terminal with few colours."""
    return f"control: {'yes' if wanted else 'no'}"


def files_label(wanted: bool) -> str:
    return f"files: {'yes' if wanted else 'no'}"


class HomePane(Vertical):
    class JoinRequested(Message):
        def __init__(self, code: str, wants_control: bool, wants_files: bool = False) -> None:
            super().__init__()
            self.code = code
            self.wants_control = wants_control
            self.wants_files = wants_files

    class SessionChosen(Message):
        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    def compose(self) -> ComposeResult:
        yield Static("Join a customer's computer", classes="section-title")
        with Horizontal(id="join-row"):
            # Short enough to show whole at 80 columns beside the switch and button.
            yield Input(id="code", placeholder="code, e.g. 4821-193-775")
            # What to ask the customer for besides watching: each its own
            # switch, as each is its own line on the customer's prompt.
            yield Label(control_label(False), id="control-label")
            yield Switch(id="control", value=False, tooltip="Ask to type in the shell")
            yield Label(files_label(False), id="files-label")
            yield Switch(id="files", value=False, tooltip="Ask to copy files (F4)")
            yield Button("Join", id="join", variant="primary")
        yield Static("", id="join-status")
        yield Static("Your sessions", classes="section-title")
        yield DataTable(id="sessions", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one("#sessions", DataTable)
        for label, key in (("Device", "device"), ("State", "state"), ("Rights", "rights"),
                           ("Elapsed", "elapsed"), ("Code", "code"), ("Details", "detail")):
            table.add_column(label, key=key)

    @on(Switch.Changed, "#control")
    def _control_changed(self, event: Switch.Changed) -> None:
        self.query_one("#control-label", Label).update(control_label(event.value))

    @on(Switch.Changed, "#files")
    def _files_changed(self, event: Switch.Changed) -> None:
        self.query_one("#files-label", Label).update(files_label(event.value))

    @on(Button.Pressed, "#join")
    @on(Input.Submitted, "#code")
    def _join(self) -> None:
        code_input = self.query_one("#code", Input)
        code = code_input.value.strip()
        if not code:
            self.show_status("Type the code the customer reads to you.", error=True)
            code_input.focus()
            return
        try:
            # Checked here, before anything is sent: a typo (a digit missing)
            # is explained at once and stays in the field to be corrected.
            parse_code(code)
        except CodeError as exc:
            self.show_status(f"That code is not right: {exc}.", error=True)
            code_input.focus()
            return
        code_input.value = ""
        self.post_message(self.JoinRequested(code, self.query_one("#control", Switch).value,
                                             self.query_one("#files", Switch).value))

    def show_status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#join-status", Static)
        status.update(literal(text, 400))
        status.set_class(error, "error")

    def refresh_sessions(self, records: list[SessionRecord], now: float) -> None:
        """Redraw the table in place (rows keyed by session, newest first)."""
        table = self.query_one("#sessions", DataTable)
        wanted = [r.key for r in reversed(records)]
        for key in [str(k.value) for k in table.rows]:
            if key not in wanted:
                table.remove_row(key)
        for record in reversed(records):
            cells = {
                "device": literal(record.alias or "-", 40),
                "state": literal(record.state, 20, STATE_STYLE.get(record.state, "")),
                "rights": literal(rights(record.granted)),
                "elapsed": literal(clock(record.elapsed(now))),
                "code": literal(record.code, 20),
                "detail": literal(record.status_text(now), 120),
            }
            if record.key in table.rows:
                for column, value in cells.items():
                    table.update_cell(record.key, column, value, update_width=True)
            else:
                table.add_row(*cells.values(), key=record.key)

    @on(DataTable.RowSelected, "#sessions")
    def _chosen(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.post_message(self.SessionChosen(str(event.row_key.value)))
