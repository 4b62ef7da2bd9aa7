"""The files pane of a session tab (F4): the customer's folder, download
and upload with a progress bar each, and errors in words.

Every name from the agent is shown as a `Text` built by `literal` (escaped
by `printable`), never as markup. The transfers themselves are
`console.files.FileTransfers`; this pane only drives and shows them.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Static

from console.files import FileTransfers, RemoteEntry, TransferError, shown
from console.format import entries as entries_text
from console.format import literal, size

MAX_SHOWN_TRANSFERS = 4  # finished ones beyond this are dropped from the pane
_UP = "\x00up"  # the row key of "..": no real name can hold a NUL


def default_download_dir() -> Path:
    downloads = Path.home() / "Downloads"
    return downloads if downloads.is_dir() else Path.cwd()


def tilde(path: Path) -> str:
    """A local path as the engineer writes it: ~ for their home folder."""
    home = Path.home()
    try:
        return "~/" + str(path.relative_to(home)) if path != home else "~"
    except ValueError:
        return str(path)


class TransferRow(Vertical):
    """One transfer: what moves, and its bar; the result replaces the bar's label."""

    def __init__(self, label: Text) -> None:
        super().__init__(classes="transfer")
        self._label = label
        self.done = 0  # bytes moved so far

    def compose(self) -> ComposeResult:
        yield Static(self._label, classes="transfer-label")
        yield ProgressBar(total=None, show_eta=False, classes="transfer-bar")

    def progress(self, done: int, total: int) -> None:
        self.done = done
        self.query_one(ProgressBar).update(total=max(total, 1), progress=done)

    def finish(self, text: Text, *, error: bool = False) -> None:
        label = self.query_one(".transfer-label", Static)
        label.update(text)
        label.set_class(error, "error")
        self.add_class("-done")


class FilesPane(Vertical):
    """Hidden until F4; `transfers` is None until the session's SSH is up."""

    def __init__(self, key: str, *, local_dir: Path | None = None) -> None:
        super().__init__(id=f"files-{key}", classes="files-pane")
        self.key = key
        self.transfers: FileTransfers | None = None
        self.remote_dir = "."
        self.entries: list[RemoteEntry] = []
        self.local_dir = local_dir or default_download_dir()

    def compose(self) -> ComposeResult:
        yield Static(Text("Customer's files"), classes="files-title")
        yield Static(Text("."), classes="files-where")
        yield DataTable(classes="files-list", cursor_type="row", zebra_stripes=True)
        yield Static(Text(""), classes="files-status")
        # Shown only while the session has no files right: asks the customer.
        yield Button("Ask the customer for files", classes="files-ask", variant="primary")
        yield Label("Save to:", classes="files-label")
        yield Input(tilde(self.local_dir), classes="files-local",
                    placeholder="folder for downloads")
        yield Label("Send (local path, Enter):", classes="files-label")
        yield Input("", classes="files-upload", placeholder="e.g. ~/fix.patch")
        yield Vertical(classes="files-transfers")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("Name", key="name")
        table.add_column("Size", key="size")

    # -- state shown ----------------------------------------------------------------

    def show_ask(self, shown: bool) -> None:
        self.query_one(".files-ask", Button).display = shown

    def say(self, text: str, *, error: bool = False) -> None:
        status = self.query_one(".files-status", Static)
        status.update(literal(text, 400))
        status.set_class(error, "error")

    @property
    def status_text(self) -> str:
        return str(self.query_one(".files-status", Static).render())

    def rows(self) -> list[str]:
        """The listing as shown (escaped names), for tests and screenshots."""
        return [e.display + ("/" if e.is_dir else "") for e in self.entries]

    # -- listing --------------------------------------------------------------------

    @work(group="files-list", exclusive=True)
    async def refresh_listing(self, path: str | None = None, *, announce: bool = True) -> None:
        if self.transfers is None:
            self.say("The session's connection is not open yet.", error=True)
            return
        target = self.remote_dir if path is None else path
        try:
            entries, cut = await self.transfers.listdir(target)
            where = await self.transfers.home() if target == "." else target
        except TransferError as exc:
            self.say(str(exc), error=True)
            return
        self.remote_dir, self.entries = target, entries
        self.query_one(".files-where", Static).update(literal(where, 200, "bold"))
        table = self.query_one(DataTable)
        table.clear()
        if target not in (".", "/"):
            table.add_row(Text(".."), Text(""), key=_UP)
        for index, entry in enumerate(entries):
            name = literal(entry.display + ("/" if entry.is_dir else ""), 120,
                           "bold" if entry.is_dir else "")
            table.add_row(name, Text("" if entry.is_dir else size(entry.size)),
                          key=str(index))
        if announce or cut:
            self.say(entries_text(len(entries)) + (" (more not shown)" if cut else "")
                     + ". Enter: open a folder or download a file.")

    @on(DataTable.RowSelected)
    def _chosen(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value
        if key == _UP:
            parent = posixpath.dirname(self.remote_dir.rstrip("/"))
            self.refresh_listing(parent or ".")
            return
        if key is None:
            return
        entry = self.entries[int(key)]
        remote = posixpath.join(self.remote_dir, entry.name) if self.remote_dir != "." \
            else entry.name
        if entry.is_dir:
            self.refresh_listing(remote)
        else:
            self.download(remote)

    # -- transfers ------------------------------------------------------------------

    @on(Input.Submitted, ".files-local")
    def _local_dir(self, event: Input.Submitted) -> None:
        path = Path(event.value).expanduser()
        if not path.is_dir():
            self.say(f"{event.value} is not a folder here; downloads still go to "
                     f"{tilde(self.local_dir)}.", error=True)
            return
        self.set_local_dir(path)
        self.say(f"Downloads go to {tilde(path)}.")

    def set_local_dir(self, path: Path) -> None:
        self.local_dir = path
        self.query_one(".files-local", Input).value = tilde(path)

    @on(Input.Submitted, ".files-upload")
    def _upload(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.upload(Path(event.value.strip()).expanduser())
            event.input.value = ""

    async def _row(self, label: Text) -> TransferRow:
        box = self.query_one(".files-transfers", Vertical)
        done = [row for row in box.query(TransferRow) if row.has_class("-done")]
        for old in done[:max(0, len(box.children) + 1 - MAX_SHOWN_TRANSFERS)]:
            await old.remove()
        row = TransferRow(label)
        await box.mount(row)
        return row

    @work(group="files-transfer")
    async def download(self, remote: str) -> None:
        if self.transfers is None:
            return
        name = shown(posixpath.basename(remote), 60)
        row = await self._row(Text(f"↓ {name}"))
        try:
            got = await self.transfers.download(remote, self.local_dir, row.progress)
        except TransferError as exc:
            row.finish(literal(f"↓ {name}: {exc}", 300), error=True)
            self.say(str(exc), error=True)
            return
        text = f"↓ {name}: {size(row.done)} saved as {tilde(got)}"
        row.finish(literal(text, 300))
        self.say(text)

    @work(group="files-transfer")
    async def upload(self, local: Path) -> None:
        if self.transfers is None:
            return
        name = shown(local.name, 60)
        row = await self._row(Text(f"↑ {name}"))
        target = self.remote_dir + "/" if self.remote_dir != "." else "."
        try:
            sent = await self.transfers.upload(local, target, row.progress)
        except TransferError as exc:
            row.finish(literal(f"↑ {name}: {exc}", 300), error=True)
            self.say(str(exc), error=True)
            return
        text = f"↑ {name}: {size(row.done)} sent as {shown(sent)}"
        row.finish(literal(text, 300))
        self.say(text)
        self.refresh_listing(announce=False)  # the upload's result stays in view
