"""The plain join's files prompt (``Ctrl-]`` then ``f``): a small line
prompt on the engineer's own terminal while the shell's output is held.

    files> ls [DIR]              the customer's folder (names escaped)
    files> cd DIR                change the remote folder (cd alone: back to the start)
    files> get REMOTE [LOCAL]    fetch a file (LOCAL: a file name or a folder; default ".")
    files> put LOCAL [REMOTE]    send a file (REMOTE: a name or a folder; default the current one)
    files> help
    empty line, Esc or Ctrl-C    back to the shell (Ctrl-C during a transfer cancels it)

Names with spaces are quoted as in a shell ('my file.log'). The prompt
stays open after each command, so a day's "send the patch, fetch the log"
is one Ctrl-] f. No I/O of its own: it writes through the `write` callback
and is fed the engineer's keys, so its logic is tested without a terminal.
"""

from __future__ import annotations

import asyncio
import posixpath
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from console.files import FileTransfers, TransferError, shown
from console.format import entries as entries_text
from console.format import size
from console.line_edit import CTRL_C, Key, LineEdit

PROMPT = "files> "
MAX_LINE = 4096  # a command line longer than any path a person types
# Progress is redrawn at most this often (a fast transfer would otherwise
# spend its time drawing).
PROGRESS_EVERY = 0.1
LISTING_SHOWN = 200  # entries of `ls` printed at most; the rest are counted

HELP = (
    "commands: ls [DIR] | cd DIR | get REMOTE [LOCAL] | put LOCAL [REMOTE] | help; "
    "an empty line, Esc or Ctrl-C goes back to the shell"
)
BACK_TEXT = "back to the shell (press Ctrl-L if the screen needs redrawing)"



@dataclass(frozen=True)
class Command:
    verb: str  # ls | cd | get | put | help
    args: tuple[str, ...]


def parse(line: str) -> Command | str:
    """A command, or what is wrong with the line (a sentence)."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        return f"cannot read that line: {exc}"
    if not words:
        return "empty"
    verb, args = words[0].lower(), tuple(words[1:])
    arity = {"ls": (0, 1), "cd": (0, 1), "get": (1, 2), "put": (1, 2), "help": (0, 0),
             "?": (0, 0)}
    if verb not in arity:
        return f"unknown command {shown(verb, 40)}; {HELP}"
    low, high = arity[verb]
    if not low <= len(args) <= high:
        usage = {"ls": "ls [DIR]", "cd": "cd DIR", "get": "get REMOTE [LOCAL]",
                 "put": "put LOCAL [REMOTE]"}.get(verb, verb)
        return f"usage: {usage}"
    return Command("help" if verb == "?" else verb, args)


def progress_text(name: str, done: int, total: int, elapsed: float) -> str:
    """One line: name, bytes, percent, rate."""
    percent = f"{100 * done // total:3d}%" if total else "   -"
    rate = f"{size(int(done / elapsed))}/s" if elapsed > 0 else "-"
    return f"{name}: {size(done)} of {size(total)} {percent} {rate}"


class FilesPrompt:
    """One prompt session at a time; `open()` shows it, `feed()` takes keys,
    `on_close` is called once it has gone (the caller resumes the shell)."""

    def __init__(self, files: FileTransfers, write: Callable[[str], None],
                 on_close: Callable[[], None], *, local_dir: Path | None = None) -> None:
        self._files = files
        self._write = write
        self._on_close = on_close
        self.local_dir = local_dir or Path.cwd()
        self.remote_dir = "."
        self.active = False
        self._edit = LineEdit(lambda text: len(text) <= MAX_LINE)
        self._task: asyncio.Task[None] | None = None
        self._progress_at = 0.0

    # -- keys ---------------------------------------------------------------------

    def open(self) -> None:
        self.active = True
        self._edit.clear()
        self._write(f"\r\n\x1b[Kconsentry: files ({HELP})\r\n")
        self._show_prompt()

    def feed(self, data: bytes) -> None:
        index = 0
        while index < len(data) and self.active:
            if self._task is not None:
                if data[index] == CTRL_C:  # the only key a running transfer takes
                    self._task.cancel()
                index += 1
                continue
            index, did = self._edit.key(data, index)
            if did is Key.CANCEL:
                self.close()
            elif did is Key.SUBMIT:
                line = self._edit.text
                self._edit.clear()
                self._write("\r\n")
                self._run(line)
            elif did is Key.CHANGED:
                self._redraw()

    def close(self) -> None:
        if not self.active:
            return
        self.active = False
        if self._task is not None:
            self._task.cancel()
        self._write(f"\r\x1b[Kconsentry: {BACK_TEXT}\r\n")
        self._on_close()

    def _show_prompt(self) -> None:
        self._write(f"\r\x1b[K{PROMPT}")

    def _redraw(self) -> None:
        # What the engineer typed, escaped like everything shown here.
        text = shown(self._edit.text, MAX_LINE)
        self._write(f"\r\x1b[K{PROMPT}{text}")

    def say(self, text: str) -> None:
        self._write(f"\r\x1b[Kconsentry: {text}\r\n")

    # -- commands -----------------------------------------------------------------

    def _run(self, line: str) -> None:
        command = parse(line)
        if command == "empty":
            self.close()
            return
        if isinstance(command, str):
            self.say(command)
            self._show_prompt()
            return
        self._task = asyncio.get_running_loop().create_task(self._perform(command))

    @property
    def busy(self) -> asyncio.Task[None] | None:
        return self._task

    async def _perform(self, command: Command) -> None:
        try:
            await self.perform(command)
        except asyncio.CancelledError:
            self.say("cancelled; nothing was kept under the file's name")
        except TransferError as exc:
            self.say(str(exc))
        finally:
            self._task = None
            if self.active:
                self._show_prompt()

    async def perform(self, command: Command) -> None:
        """Run one command; its result is said on the prompt's lines."""
        verb, args = command.verb, command.args
        if verb == "help":
            self.say(HELP)
        elif verb == "ls":
            await self._ls(self._remote(args[0]) if args else self.remote_dir)
        elif verb == "cd":
            target = self._remote(args[0]) if args else "."
            await self._files.listdir(target)  # refused or missing: said, and we stay
            self.remote_dir = posixpath.normpath(target) if target != "." else "."
            self.say(f"remote folder: {shown(self.remote_dir)}")
        elif verb == "get":
            remote = self._remote(args[0])
            local = self._local(args[1]) if len(args) > 1 else self.local_dir
            name = shown(posixpath.basename(remote) or remote, 60)
            got = await self._files.download(remote, local, self._progress(name))
            self.say(f"fetched {name}: {size(got.stat().st_size)} saved as "
                     f"{shown(str(got), 200)}")
        elif verb == "put":
            local = self._local(args[0])
            remote = self._remote(args[1]) if len(args) > 1 else self.remote_dir + "/"
            name = shown(local.name, 60)
            sent = await self._files.upload(local, remote, self._progress(name))
            self.say(f"sent {name}: {size(local.stat().st_size)} as {shown(sent, 200)} "
                     "on the customer's computer")

    async def _ls(self, path: str) -> None:
        entries, cut = await self._files.listdir(path)
        self.say(f"{shown(path)}: {entries_text(len(entries))}{' or more' if cut else ''}")
        for entry in entries[:LISTING_SHOWN]:
            kind = "dir " if entry.is_dir else f"{size(entry.size):>10}"
            self._write(f"  {kind:>10}  {entry.display}{'/' if entry.is_dir else ''}\r\n")
        if len(entries) > LISTING_SHOWN:
            self.say(f"... and {len(entries) - LISTING_SHOWN} more")

    def _remote(self, path: str) -> str:
        if path.startswith("/") or self.remote_dir == ".":
            return path
        return posixpath.join(self.remote_dir, path)

    def _local(self, path: str) -> Path:
        target = Path(path).expanduser()
        return target if target.is_absolute() else self.local_dir / target

    def _progress(self, name: str) -> Callable[[int, int], None]:
        start = time.monotonic()
        self._progress_at = 0.0

        def show(done: int, total: int) -> None:
            now = time.monotonic()
            if done < total and now - self._progress_at < PROGRESS_EVERY:
                return
            self._progress_at = now
            self._write(f"\r\x1b[K{progress_text(name, done, total, now - start)}")
            if done >= total:
                self._write("\r\n")

        return show
