"""Large pastes and large output through the plain-terminal console
(`consentry-console join`), as an engineer's terminal delivers them: the
bytes go into the console's PTY as fast as it takes them, and its output is
read back as slowly as a busy terminal does."""

from __future__ import annotations

import hashlib
import os
import pty
import subprocess
import threading
import time

import pexpect

from tests.e2e.conftest import BIN, Deployment, read_code, transcript
from tests.e2e.test_session import approve_session

PASTE_BYTES = 5 * 1000 * 1000


def paste_data(size: int) -> bytes:
    """Numbered printable lines of 64 bytes, like a pasted log: no Ctrl-]
    (the console's escape key), no control characters, and no two lines
    alike, so a dropped or repeated chunk changes the checksum."""
    filler = bytes(range(0x30, 0x30 + 54))
    lines = b"".join(b"%08d %s\n" % (i, filler) for i in range(size // 64 + 1))
    return lines[:size]


class Drain:
    """Reads a child's output in a thread so its terminal never fills up
    (the agent mirrors the shell to the customer's screen)."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.child.read_nonblocking(65536, timeout=0.1)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def send_in_background(child: pexpect.spawn, data: bytes) -> threading.Thread:
    """Write `data` into the console's terminal as a terminal would: all of
    it, blocking whenever the console has not read the previous part yet."""

    def write() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(child.child_fd, view[:65536]):]

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_a_5_mb_paste_arrives_whole_through_the_plain_console(running: Deployment) -> None:
    agent, console, _code = approve_session(running, "c", "--control")
    target = running.root / "paste.bin"
    data = paste_data(PASTE_BYTES)
    # Raw mode on the customer's side: no 4096-byte line limit, no echo.
    # The reader starts late, as a busy program does: the paste must wait
    # for it (flow control), not be dropped.
    console.send(f"stty raw -echo; sleep 1; head -c {len(data)} > {target}; stty sane; "
                 "echo PASTE$((40+2))DONE\r")
    time.sleep(0.3)  # the shell has switched the terminal to raw mode
    writer = send_in_background(console, data)
    console.expect("PASTE42DONE", timeout=90)  # a bound; bench/ measures speed
    writer.join(5)
    assert target.stat().st_size == len(data)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    console.send("\x1dq")
    console.expect("You left the session.")
    console.expect(pexpect.EOF)
    console.close()
    assert console.exitstatus == 0
    agent.expect("Alice Example left the session.")


def test_an_echoed_paste_of_short_lines_arrives_while_the_terminal_reads_slowly(
    running: Deployment,
) -> None:
    """The report: 213,000 bytes pasted into `cat > file` (echo on, canonical
    mode) dropped the session with EAGAIN on the console's terminal."""
    agent, console, _code = approve_session(running, "c", "--control")
    drain = Drain(agent)
    try:
        target = running.root / "cat.txt"
        data = paste_data(400_000)
        console.send(f"cat > {target}\r")
        time.sleep(0.3)
        writer = send_in_background(console, data)
        time.sleep(1.5)  # the engineer's terminal is busy: the echo piles up
        writer.join(30)
        assert not writer.is_alive()
        deadline = time.monotonic() + 30
        while (not target.exists() or target.stat().st_size < len(data)) \
                and time.monotonic() < deadline:
            try:
                console.read_nonblocking(65536, timeout=0.2)
            except pexpect.TIMEOUT:
                pass
        console.send("\x04")  # Ctrl-D ends cat
        assert target.read_bytes() == data
        console.send("echo ECHO$((40+2))DONE\r")
        console.expect("ECHO42DONE", timeout=30)
        leave(console)
    finally:
        drain.close()


def leave(console: pexpect.spawn) -> None:
    """Ctrl-] q: the engineer's normal leave, exit 0."""
    console.send("\x1dq")
    console.expect("You left the session.")
    console.expect(pexpect.EOF)
    console.close()
    assert console.exitstatus == 0


def test_large_output_to_a_slow_terminal_arrives_whole(running: Deployment) -> None:
    agent, console, _code = approve_session(running, "c", "--control")
    drain = Drain(agent)
    try:
        # 3,000,000 zero bytes are exactly 4,000,000 "A"s in base64.
        console.send("head -c 3000000 /dev/zero | base64; echo OUT$((40+2))DONE\r")
        time.sleep(1.5)  # nobody reads the console's terminal for a while
        received = bytearray()
        deadline = time.monotonic() + 60
        while b"OUT42DONE" not in received[-4096:] and time.monotonic() < deadline:
            try:
                received += console.read_nonblocking(16384, timeout=1).encode()
            except pexpect.TIMEOUT:
                continue
            time.sleep(0.001)  # a slow terminal
        assert b"OUT42DONE" in received
        assert received.count(b"A") == 4_000_000
        leave(console)
    finally:
        drain.close()


def test_a_terminal_that_fails_ends_with_an_error_not_a_leave(running: Deployment) -> None:
    """The console's output cannot be written (the pipe it goes to is gone):
    a clear message, a non-zero exit, and the broker does not log that the
    engineer left."""
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk")
    drain: Drain | None = None
    code = read_code(agent)
    master, slave = pty.openpty()
    read_end, write_end = os.pipe()
    console = subprocess.Popen(
        [str(BIN / "consentry-console"), "join", code, "--broker", running.url,
         "--ca", str(running.pki.ca_cert), "--identity", str(key), "--user", "alice",
         "--control"],
        stdin=slave, stdout=write_end, stderr=subprocess.PIPE, env=running.env(),
        cwd=running.root,
    )
    os.close(slave)
    os.close(write_end)
    try:
        agent.expect(r"\[n/Enter\] deny")
        agent.send("c")
        agent.expect(r"is viewing and typing")
        drain = Drain(agent)
        os.close(read_end)  # whatever the console writes now fails
        read_end = -1
        os.write(master, b"echo hello\r")
        _out, err = console.communicate(timeout=30)
        text = err.decode(errors="replace")
        assert console.returncode == 1, text
        assert "You left" not in text
        assert "your terminal failed (Broken pipe)" in text, text
        assert "Traceback" not in text
        deadline = time.monotonic() + 20
        while "Alice Example was lost" not in transcript(agent):
            assert time.monotonic() < deadline, "the agent was not told"
            time.sleep(0.1)
    finally:
        if console.poll() is None:
            console.kill()
            console.wait()
        os.close(master)
        if read_end >= 0:
            os.close(read_end)
        if drain is not None:
            drain.close()
    running.stop()
    listing = running.cli("audit", "list").stdout
    assert "engineer_left" not in listing, listing
    assert "console_lost" in listing, listing


def test_keys_from_a_file_are_sent_without_a_terminal(running: Deployment) -> None:
    """`consentry-console join CODE --control < commands.txt`: the event loop
    cannot watch a regular file, which once ended in a traceback."""
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk")
    code = read_code(agent)
    commands = running.root / "commands.txt"
    commands.write_bytes(b"echo FROMFILE$((40+2))\r")
    with commands.open("rb") as stdin:
        console = subprocess.Popen(
            [str(BIN / "consentry-console"), "join", code, "--broker", running.url,
             "--ca", str(running.pki.ca_cert), "--identity", str(key), "--user", "alice",
             "--control"],
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=running.env(),
            cwd=running.root,
        )
    try:
        agent.expect(r"\[n/Enter\] deny")
        agent.send("c")
        agent.expect("FROMFILE42")  # the shell ran what the file typed
        agent.send("\x1d")
        agent.expect(r"\[e\] end the session now")
        agent.send("e")
        out, err = console.communicate(timeout=30)
    finally:
        if console.poll() is None:
            console.kill()
            console.wait()
    text = err.decode(errors="replace")
    assert console.returncode == 0, text
    assert "Traceback" not in text
    assert "The customer ended the session." in text
    assert b"FROMFILE42" in out
