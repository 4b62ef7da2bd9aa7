"""A 5 MB paste through the Textual console into a real agent's shell:
it arrives whole, at terminal speed, and the app keeps running meanwhile."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pexpect
from textual import events
from textual.widgets import Input, Switch

from console.app import ConsoleApp
from console.backend import BrokerBackend, Settings
from console.screens.main import MainScreen
from console.screens.session import SessionPane
from tests.e2e.conftest import Deployment, read_code
from tests.e2e.test_paste import PASTE_BYTES, Drain, paste_data, send_in_background
from tests.e2e.test_tui import until


async def test_a_5_mb_paste_arrives_whole_and_the_app_stays_responsive(
    running: Deployment,
) -> None:
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk")
    code = read_code(agent)
    settings = Settings(broker=running.url, ca=running.pki.ca_cert, identity=key, user="alice")
    app = ConsoleApp(BrokerBackend, settings)
    target = running.root / "tui-paste.bin"
    text = paste_data(PASTE_BYTES).decode("ascii")
    # The terminal sends pasted line ends as CR, as Enter does (like xterm).
    expected = text.replace("\n", "\r").encode("ascii")
    drain: Drain | None = None
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.click("#connect")
        # The main screen, once its widgets are there (it is pushed first).
        await until(pilot, lambda: isinstance(app.screen, MainScreen)
                    and bool(app.screen.query("#code")))
        app.screen.query_one("#control", Switch).value = True
        field = app.screen.query_one("#code", Input)
        field.value = code
        field.focus()
        await pilot.press("enter")  # as a person joins: the code, then Enter
        agent.expect(r"\[n/Enter\] deny", timeout=20)
        agent.send("c")
        drain = Drain(agent)  # the customer's screen mirrors the session
        await until(pilot, lambda: app.screen.query(SessionPane))
        pane = app.screen.query_one(SessionPane)
        await until(pilot, lambda: "$" in pane.terminal_text())
        live = pane.record.live
        assert live is not None
        await until(pilot, lambda: "control" in live.granted)
        pane.terminal.post_message(events.Paste(
            f"stty raw -echo; sleep 1; head -c {len(expected)} > {target}; stty sane; "
            "echo PASTE$((40+2))DONE\n"))
        await until(pilot, lambda: "PASTE$((40+2))DONE" in pane.terminal_text())
        await pilot.pause(0.3)  # the shell has switched its terminal to raw mode

        pane.terminal.post_message(events.Paste(text))
        # A bound, not a timing (bench/ measures speed).
        await until(pilot, lambda: "PASTE42DONE" in pane.terminal_text(), timeout=90)

        assert target.stat().st_size == len(expected)
        assert hashlib.sha256(target.read_bytes()).hexdigest() == \
            hashlib.sha256(expected).hexdigest()
        assert live.bytes_out >= len(expected)
        # The status bar goes on ticking: it shows what went out.
        await until(pilot, lambda: "out 4.8 MiB" in str(
            pane.query_one(".session-status").render()), timeout=3)

        await pilot.press("f8")
        await until(pilot, lambda: not app.screen.query(SessionPane))
        await app.backend.close()  # type: ignore[union-attr]
    drain.close()
    agent.sendcontrol("c")
    agent.expect(pexpect.EOF)


def wait_for_file(path: Path, size: int, timeout: float) -> float:
    """Wait (bounded) until `path` holds `size` bytes; the seconds it took."""
    started = time.monotonic()
    while not (path.exists() and path.stat().st_size >= size):
        if time.monotonic() - started > timeout:
            have = path.stat().st_size if path.exists() else 0
            raise AssertionError(f"{path.name}: {have} of {size} bytes after {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def test_pastes_through_the_real_terminal_driver_bracketed_or_not(running: Deployment) -> None:
    """The full-screen console in a PTY, as an engineer's terminal runs it:
    a bracketed 5 MB paste, then a 500 KB paste the terminal did not bracket
    (tmux's paste-buffer), which Textual would otherwise turn into a key
    event per character (213 KB took ~50 s)."""
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk")
    code = read_code(agent)
    tui = running.spawn("consentry-console", "--broker", running.url,
                        "--ca", str(running.pki.ca_cert), "--identity", str(key),
                        "--user", "alice", cols=100, rows=30)
    tui.expect("Connect")
    time.sleep(0.5)
    tui.send("\r")  # the connect form is filled in from the flags
    tui.expect("Join")
    time.sleep(0.5)
    # The code, "control" on, past "files" (off), Join. The code is seen in
    # its field before the rest is typed: under load the form could still be
    # opening when "Join" was drawn, and the keys went nowhere.
    tui.send(code)
    tui.expect(code.split("-")[-1])
    for keys in ("\t", " ", "\t", "\t", "\r"):
        tui.send(keys)
        time.sleep(0.2)
    agent.expect(r"\[n/Enter\] deny")
    agent.send("c")
    agent.expect("is viewing and typing")
    drains = [Drain(agent), Drain(tui)]
    try:
        # Pasted line ends are CRs, as terminals send them; raw mode keeps them.
        big = paste_data(PASTE_BYTES).replace(b"\n", b"\r")
        small = paste_data(500_000).replace(b"\n", b"\r")
        first, second, ready = (running.root / name for name in ("big.bin", "small.bin", "r"))
        time.sleep(0.5)
        tui.send(f"stty raw -echo; touch {ready}; head -c {len(big)} > {first}; "
                 f"head -c {len(small)} > {second}; stty sane\r")
        wait_for_file(ready, 0, 20)
        time.sleep(0.3)
        writer = send_in_background(tui, b"\x1b[200~" + big + b"\x1b[201~")
        # Bounded waits, not timings (bench/ measures speed): a key event per
        # character, as before, would not finish 500 KB within the bound.
        wait_for_file(first, len(big), 90)
        writer.join(5)
        assert first.read_bytes() == big
        writer = send_in_background(tui, small)
        wait_for_file(second, len(small), 90)
        writer.join(5)
        assert hashlib.sha256(second.read_bytes()).digest() == hashlib.sha256(small).digest()
    finally:
        for drain in drains:
            drain.close()
    tui.send("\x1b[21~")  # F10 quits (after asking, as a session is open)
    tui.expect("Leave and quit")
    tui.send("\r")
    tui.expect(pexpect.EOF)
