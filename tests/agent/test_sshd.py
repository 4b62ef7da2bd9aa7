"""The agent's SSH server enforces the consent itself: real asyncssh on both
ends of a socket pair, a real shell in a real PTY."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncssh
import pytest

from agent.liveness import MAX_HELD_INPUT, STALL_AFTER, Heartbeat, InputGuard
from agent.sshd import Gate, Services, SharedShell, serve_shell
from broker.wire.chat import CHAT_SUBSYSTEM


class Collect(asyncssh.SSHClientSession[bytes]):
    def __init__(self) -> None:
        self.data = bytearray()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.data.extend(data)


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


class Pair:
    def __init__(
        self, gate: Gate, conn: asyncssh.SSHClientConnection, server: asyncssh.SSHServerConnection
    ) -> None:
        self.gate, self.conn, self.server = gate, conn, server

    async def shell(self) -> tuple[asyncssh.SSHClientChannel[bytes], Collect]:
        chan, session = await self.conn.create_session(
            Collect, term_type="xterm", term_size=(80, 24), encoding=None
        )
        assert isinstance(session, Collect)  # asyncssh types it as the base class
        await until(lambda: b"$ " in session.data)
        return chan, session


@pytest.fixture
async def paired(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple]:
    monkeypatch.setenv("PS1", "$ ")
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    engineer = asyncssh.generate_private_key("ssh-ed25519")
    mirrored = bytearray()
    gate = Gate(control=False, on_output=mirrored.extend)
    services = Services()
    ours, theirs = socket.socketpair()
    server_task = asyncio.create_task(
        serve_shell(
            ours,
            host_key=host_key,
            engineer_key=engineer.export_public_key().decode().strip(),
            shell="/bin/sh",
            gate=gate,
            services=services,
        )
    )

    async def connect(key: asyncssh.SSHKey) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            sock=theirs,
            host="consentry-agent",
            username="alice",
            client_keys=[key],
            agent_path=None,
            config=None,
            known_hosts=([host_key.convert_to_public()], [], []),
            preferred_auth="publickey",
        )

    yield gate, mirrored, connect, engineer, server_task, services
    server_task.cancel()
    ours.close()
    theirs.close()


async def test_view_only_input_is_dropped_and_control_lets_it_through(
    paired: tuple, tmp_path: Path
) -> None:
    gate, mirrored, connect, engineer, server_task, _services = paired
    conn = await connect(engineer)
    server = await server_task
    pair = Pair(gate, conn, server)
    chan, session = await pair.shell()

    typed = tmp_path / "typed"
    chan.write(f"touch {typed}\r".encode())
    await asyncio.sleep(1.0)
    assert not typed.exists()
    assert gate.dropped_bytes == len(f"touch {typed}\r")

    gate.control = True  # the customer granted control
    chan.write(f"echo ran-$((40+2)) && touch {typed}\r".encode())
    await until(typed.exists)
    await until(lambda: b"ran-42" in session.data)
    assert b"ran-42" in mirrored  # the customer saw exactly what the engineer saw
    conn.close()


async def test_only_the_paired_key_gets_in(paired: tuple) -> None:
    _gate, _mirrored, connect, _engineer, _server_task, _services = paired
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(stranger)


async def test_no_exec_no_forwarding(paired: tuple) -> None:
    _gate, _mirrored, connect, engineer, server_task, _services = paired
    conn = await connect(engineer)
    await server_task
    with pytest.raises(asyncssh.ChannelOpenError):
        await conn.run("id", check=False)  # exec is refused: a shell or nothing
    with pytest.raises(asyncssh.ChannelOpenError):
        await conn.create_connection(asyncssh.SSHTCPSession, "127.0.0.1", 22)
    conn.close()


async def test_one_shell_per_connection_and_no_subsystem_that_is_not_offered(
    paired: tuple
) -> None:
    gate, _mirrored, connect, engineer, server_task, _services = paired
    conn = await connect(engineer)
    pair = Pair(gate, conn, await server_task)
    await pair.shell()
    with pytest.raises(asyncssh.ChannelOpenError):
        await conn.create_session(Collect, term_type="xterm", encoding=None)  # a second shell
    gate.files = True  # even with the right, SFTP needs the agent to offer it
    for subsystem in ("sftp", CHAT_SUBSYSTEM, "netconf"):
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_session(Collect, subsystem=subsystem, encoding=None)
    conn.close()


async def test_sftp_is_a_subsystem_only_while_the_files_right_holds(
    paired: tuple, tmp_path: Path
) -> None:
    gate, _mirrored, connect, engineer, server_task, services = paired
    services.sftp = lambda chan, _gate: asyncssh.SFTPServer(chan, chroot=bytes(tmp_path))
    conn = await connect(engineer)
    await server_task
    with pytest.raises(asyncssh.ChannelOpenError):
        async with conn.start_sftp_client():
            pass  # no files right: the subsystem is refused
    gate.files = True
    (tmp_path / "log.txt").write_bytes(b"hello")
    async with conn.start_sftp_client() as sftp:
        assert await sftp.getsize("log.txt") == 5
    conn.close()


async def test_keys_typed_before_the_shell_starts_are_kept(
    paired: tuple, tmp_path: Path
) -> None:
    gate, _mirrored, connect, engineer, server_task, _services = paired
    gate.control = True
    conn = await connect(engineer)
    await server_task
    chan, _session = await conn.create_session(
        Collect, term_type="xterm", term_size=(80, 24), encoding=None)
    typed = tmp_path / "early"
    chan.write(f"touch {typed}\r".encode())  # at once, before any prompt
    await until(typed.exists)
    conn.close()



async def test_a_paste_faster_than_the_program_reads_waits_instead_of_being_cut(
    paired: tuple, tmp_path: Path
) -> None:
    """The shell's input queue is bounded; past it the channel stops reading,
    so the engineer's side waits (SSH flow control) and nothing is dropped."""
    gate, _mirrored, connect, engineer, server_task, _services = paired
    gate.control = True
    conn = await connect(engineer)
    server = await server_task
    chan, session = await Pair(gate, conn, server).shell()
    target = tmp_path / "pasted"
    size = 2 * 1024 * 1024  # eight times the shell's input bound
    data = bytes(range(0x21, 0x7F)) * (size // 94 + 1)
    data = data[:size]
    # Raw mode (no line limit, no echo), and a program that starts reading late.
    chan.write(f"stty raw -echo; sleep 1; head -c {size} > {target}; stty sane; "
               "echo GOT$((40+2))\r".encode())
    await asyncio.sleep(0.3)
    chan.write(data)
    await until(lambda: b"GOT42" in session.data, timeout=30)
    assert target.read_bytes() == data
    assert gate.dropped_bytes == 0
    conn.close()


async def test_a_paste_held_for_the_liveness_check_waits_instead_of_being_cut(
    paired: tuple, tmp_path: Path
) -> None:
    """After a stall, input waits for the broker's `live`; meanwhile the
    channel stops reading, so a paste larger than the guard holds is not cut."""
    gate, _mirrored, connect, engineer, server_task, _services = paired
    gate.control = True
    conn = await connect(engineer)
    server = await server_task
    chan, session = await Pair(gate, conn, server).shell()
    target = tmp_path / "pasted"
    size = 8 * MAX_HELD_INPUT
    data = (bytes(range(0x21, 0x7F)) * (size // 94 + 1))[:size]
    chan.write(f"stty raw -echo; head -c {size} > {target}; stty sane; "
               "echo GOT$((40+2))\r".encode())
    await asyncio.sleep(0.3)

    now = [1000.0]
    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    discarded: list[int] = []

    async def confirm() -> bool:
        return await answer

    gate.guard = InputGuard(Heartbeat(lambda: now[0]), confirm, discarded.append)
    now[0] += STALL_AFTER + 10  # the agent was stopped for a while
    chan.write(data)
    await asyncio.sleep(0.5)
    assert not target.exists() or target.stat().st_size == 0  # held, not run
    answer.set_result(True)  # the broker: the session is live
    await until(lambda: b"GOT42" in session.data, timeout=30)
    assert target.read_bytes() == data
    assert discarded == []
    conn.close()


async def test_a_customer_screen_that_is_behind_pauses_the_shell_whatever_the_engineer_reads(
    paired: tuple,
) -> None:
    """The engineer's side keeps up (its window reopens, `resume_writing`),
    yet the shell waits while the customer's screen says it is behind; all
    of the output arrives on both sides once the screen has caught up."""
    gate, mirrored, connect, engineer, server_task, _services = paired
    behind: list[asyncio.Future[None]] = []  # set while the customer's screen is behind

    def show(data: bytes) -> asyncio.Future[None] | None:
        mirrored.extend(data)
        return behind[0] if behind and not behind[0].done() else None

    gate.on_output = show
    gate.control = True
    conn = await connect(engineer)
    chan, session = await Pair(gate, conn, await server_task).shell()
    behind.append(asyncio.get_running_loop().create_future())
    chan.write(b"head -c 3000000 /dev/zero | base64; echo OUT$((40+2))DONE\r")
    await asyncio.sleep(1.0)
    assert b"OUT42DONE" not in session.data
    assert len(session.data) < 512 * 1024  # a chunk or two, not the flood
    behind[0].set_result(None)
    await until(lambda: b"OUT42DONE" in session.data and b"OUT42DONE" in mirrored, 30)
    assert session.data.count(b"A") == mirrored.count(b"A") == 4_000_000
    conn.close()


async def test_two_engineers_share_one_shell_and_only_the_one_with_control_types(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """Two seats, each its own SSH connection, one `SharedShell`: both see
    the same output (and the customer once), only the seat holding control
    types, and the shell outlives the first engineer who leaves."""
    monkeypatch.setenv("PS1", "$ ")
    mirrored = bytearray()
    shared = SharedShell("/bin/sh", lambda data: mirrored.extend(data))
    seats = []
    for control in (True, False):
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        engineer = asyncssh.generate_private_key("ssh-ed25519")
        gate = Gate(control=control)
        ours, theirs = socket.socketpair()
        server = asyncio.create_task(serve_shell(
            ours, host_key=host_key, engineer_key=engineer.export_public_key().decode().strip(),
            shell="/bin/sh", gate=gate, shared=shared))
        conn = await asyncssh.connect(
            sock=theirs, host="consentry-agent", username="e", client_keys=[engineer],
            agent_path=None, config=None, known_hosts=([host_key.convert_to_public()], [], []),
            preferred_auth="publickey")
        await server
        chan, session = await conn.create_session(Collect, term_type="xterm",
                                                  term_size=(80, 24), encoding=None)
        assert isinstance(session, Collect)
        seats.append((gate, conn, chan, session, ours, theirs))
    (a_gate, a_conn, a_chan, a_seen, *_), (b_gate, _b_conn, b_chan, b_seen, *_) = seats
    try:
        await until(lambda: b"$ " in a_seen.data)
        touched = tmp_path / "from-b"
        b_chan.write(f"touch {touched}\r".encode())
        a_chan.write(b"echo A-$((40+2))\r")
        await until(lambda: b"A-42" in a_seen.data and b"A-42" in b_seen.data)
        assert mirrored.count(b"A-42") == a_seen.data.count(b"A-42")  # the customer, once
        await asyncio.sleep(0.5)
        assert not touched.exists() and b_gate.dropped_bytes == len(f"touch {touched}\r")
        # The viewer's window size does not reflow the typing engineer's screen.
        b_chan.change_terminal_size(120, 40)
        await asyncio.sleep(0.2)
        a_chan.write(b"stty size\r")
        await until(lambda: b"24 80" in a_seen.data)
        assert b"40 120" not in a_seen.data

        a_conn.close()  # the first engineer leaves: the shell is still there for B
        await until(a_gate.closed.is_set)
        b_gate.control = True
        b_chan.write(b"echo B-$((3+4))\r")
        await until(lambda: b"B-7" in b_seen.data)
        assert b_gate.exit_status is None
    finally:
        for _gate, conn, _chan, _seen, ours, theirs in seats:
            conn.close()
            ours.close()
            theirs.close()


async def test_an_engineer_who_joins_a_running_shell_sees_its_screen_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second seat attaching to a shell that is already running is shown
    the screen as it stands (painted from the recent output), not a blank
    terminal that fills only when the shell next writes."""
    monkeypatch.setenv("PS1", "$ ")
    shared = SharedShell("/bin/sh", lambda data: None)
    opened = []

    async def seat(control: bool) -> tuple[asyncssh.SSHClientChannel[bytes], Collect]:
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        engineer = asyncssh.generate_private_key("ssh-ed25519")
        ours, theirs = socket.socketpair()
        server = asyncio.create_task(serve_shell(
            ours, host_key=host_key, engineer_key=engineer.export_public_key().decode().strip(),
            shell="/bin/sh", gate=Gate(control=control), shared=shared))
        conn = await asyncssh.connect(
            sock=theirs, host="consentry-agent", username="e", client_keys=[engineer],
            agent_path=None, config=None, known_hosts=([host_key.convert_to_public()], [], []),
            preferred_auth="publickey")
        await server
        opened.append((conn, ours, theirs))
        chan, session = await conn.create_session(Collect, term_type="xterm",
                                                  term_size=(80, 24), encoding=None)
        assert isinstance(session, Collect)
        return chan, session

    try:
        a_chan, a_seen = await seat(control=True)
        a_chan.write(b"echo BEFORE-$((40+2))\r")
        await until(lambda: a_seen.data.count(b"$ ") >= 2 and b"BEFORE-42" in a_seen.data)
        _b_chan, b_seen = await seat(control=False)
        # Nothing was typed since: all B has is the paint of the screen.
        await until(lambda: b"BEFORE-42" in b_seen.data and b"$ " in b_seen.data)
        assert b_seen.data.startswith(b"\x1b[H\x1b[2J")
        assert b"\r\n" not in b_seen.data  # cells placed, not the shell's bytes replayed
    finally:
        for conn, ours, theirs in opened:
            conn.close()
            ours.close()
            theirs.close()
