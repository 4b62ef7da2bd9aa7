"""The agent's SSH server: one per paired engineer, over the relay, to the
session's one shell.

asyncssh gives us the end-to-end encryption and authentication: the server
key is fresh per session and was sent to the console under the PAKE key, and
the only client key accepted is the one the engineer proved in pairing. No
port forwarding, no agent or X11 forwarding, no exec. Each session
channel is routed by what it asks for (`ChannelRouter`): the one shell in a
PTY, mirrored to the customer, input dropped unless control was granted; and
the session's services (`Services`) as subsystems — SFTP only while the
`files` right holds, the chat line — each refused when not offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncssh
from asyncssh.channel import SSHChannel

from agent.liveness import InputGuard
from agent.pty import INPUT_HIGH_WATER, PtyShell
from agent.replay import RecentOutput
from broker.wire.chat import CHAT_SUBSYSTEM
from broker.wire.limits import SSH_CIPHERS, SSH_WINDOW


@dataclass
class Gate:
    """What the engineer may do right now; the customer can narrow it."""

    control: bool
    dropped_bytes: int = 0
    # Shows the shell's output to the customer. It returns a future while
    # their screen is behind: no more is read from the shell until it is done.
    on_output: Callable[[bytes], asyncio.Future[None] | None] = lambda _data: None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    exit_status: int | None = None
    # Set once the shell runs: the customer's own keys go straight to it.
    local_input: Callable[[bytes], None] | None = None
    # Holds engineer input after a stall until the session is confirmed live.
    guard: InputGuard | None = None
    # Told each time `dropped_bytes` grows (the agent reports the total).
    on_dropped: Callable[[], None] = lambda: None
    # The `files` right, now: SFTP is refused without it, and a transfer
    # running when the customer withdraws it stops.
    files: bool = False
    # Told of each file that moved (or did not): direction "upload" (engineer
    # to customer) or "download", the byte count, and the outcome
    # ("complete", "cancelled", "refused", "failed"); the agent reports it to
    # the broker as metadata, never with the name.
    on_file_transferred: Callable[[str, int, str], None] = lambda _d, _n, _o: None
    # Told of each chat line this engineer sent (the audit keeps only a count).
    on_chat: Callable[[], None] = lambda: None

    def drop(self, count: int) -> None:
        """Engineer input that did not reach the shell, counted for the log."""
        self.dropped_bytes += count
        self.on_dropped()


class SharedShell:
    """One shell in one PTY, shared by every engineer of a session.

    The first engineer's shell session starts it; an engineer who joins the
    running session attaches to it. Everything the shell writes goes to every
    attached channel and to the customer's mirror, so all of them see the
    same screen; the shell waits (stops being read) while any one of them is
    behind, so nobody misses any of it. It is hung up once the last engineer
    has gone, not when the first does.
    """

    def __init__(self, shell: str, on_output: Callable[[bytes], asyncio.Future[None] | None]
                 ) -> None:
        self._shell_path = shell
        self._on_output = on_output
        self._members: list[ShellSession] = []
        self._shell: PtyShell | None = None
        self._running = False
        self._customer_behind = False
        self.exit_status: int | None = None
        # The screen as it stands, for an engineer who joins a running shell:
        # bounded, and painted as cells, never the shell's bytes replayed.
        self._recent = RecentOutput()
        self._size = (80, 24)

    def attach(self, member: ShellSession, term: str, size: tuple[int, int]) -> None:
        self._members.append(member)
        if self.exit_status is not None:
            member.shell_exited(self.exit_status)
        elif self._shell is None:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTRY_")}
            env["TERM"] = term
            self._size = size
            self._shell = PtyShell(
                [self._shell_path], cols=size[0], rows=size[1], env=env,
                on_output=self._output, on_exit=self._exited, on_input_room=self._input_room,
            )
            asyncio.get_running_loop().create_task(self._start())
        elif self._running:
            member.send(self._screen_now())
            member.shell_running()

    def _screen_now(self) -> bytes:
        """Clear the joiner's terminal and paint the session's screen on it."""
        cols, rows = self._size
        return ("\x1b[H\x1b[2J" + self._recent.paint(cols, rows, top=1)).encode()

    def detach(self, member: ShellSession) -> None:
        if member in self._members:
            self._members.remove(member)
        if not self._members and self._shell is not None:
            self._shell.close()
        else:
            self.flow()

    async def _start(self) -> None:
        assert self._shell is not None
        try:
            await self._shell.start()
        except OSError as exc:
            for member in list(self._members):
                member.cannot_start(f"consentry: cannot start {self._shell_path}: {exc}\r\n")
            return
        self._running = True
        for member in list(self._members):
            member.shell_running()

    def write(self, data: bytes) -> None:
        if self._shell is not None:
            self._shell.write(data)

    @property
    def input_pending(self) -> int:
        return self._shell.input_pending if self._shell is not None else 0

    @property
    def engineers(self) -> int:
        return len(self._members)

    def resize(self, width: int, height: int) -> None:
        if self._shell is not None:
            self._size = (width, height)
            self._shell.resize(width, height)

    def _output(self, data: bytes) -> None:
        self._recent.add(data)
        for member in list(self._members):
            member.send(data)
        ready = self._on_output(data)
        if ready is not None and not ready.done() and not self._customer_behind:
            self._customer_behind = True
            ready.add_done_callback(self._customer_caught_up)
            self.flow()

    def _customer_caught_up(self, _ready: asyncio.Future[None]) -> None:
        self._customer_behind = False
        self.flow()

    def flow(self) -> None:
        """Read the shell only while every engineer and the customer keep up."""
        if self._shell is None:
            return
        if self._customer_behind or any(m.engineer_behind for m in self._members):
            self._shell.pause_reading()
        else:
            self._shell.resume_reading()

    def _exited(self, status: int) -> None:
        if not self._members:
            return  # we hung it up because the last engineer went away
        self.exit_status = status
        for member in list(self._members):
            member.shell_exited(status)

    def _input_room(self) -> None:
        for member in list(self._members):
            member.input_room()


# Channels one SSH connection may have open at once besides the shell: an
# SFTP client or two and the chat line; more is a client gone wrong.
MAX_SERVICE_CHANNELS = 8

# SFTP version 3: what OpenSSH's sftp and scp speak, and asyncssh's client.
SFTP_VERSION = 3

SftpFactory = Callable[["SSHChannel[bytes]", Gate], asyncssh.SFTPServer]
ChatHandler = Callable[["asyncssh.SSHReader[bytes]", "asyncssh.SSHWriter[bytes]", Gate],
                       Awaitable[None]]


@dataclass
class Services:
    """What a session offers besides its shell, as SSH subsystems: each is
    None until the agent provides it, and a subsystem it does not provide is
    refused."""

    sftp: SftpFactory | None = None
    chat: ChatHandler | None = None


class ShellSession(asyncssh.SSHServerSession[bytes]):
    """One engineer's channel to the session's shared shell."""

    def __init__(self, shared: SharedShell, gate: Gate) -> None:
        self._shared = shared
        self._gate = gate
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._term = "xterm-256color"
        self._size = (80, 24)
        self._attached = False
        self._hung_up = False
        # Why engineer input is not read now: the shell is behind (its queue
        # is past INPUT_HIGH_WATER), or input waits for the liveness check.
        self._shell_behind = False
        self._held_for_check = False
        self._input_paused = False
        # The engineer's side has not taken what was sent (SSH flow control):
        # the shared shell waits for them (see `SharedShell.flow`).
        self.engineer_behind = False

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: object) -> bool:
        # The TERM value comes from the engineer's side: keep it to a sane name.
        if term_type and term_type.replace("-", "").replace("+", "").isalnum():
            self._term = term_type[:40]
        if term_size[0] and term_size[1]:
            self._size = (term_size[0], term_size[1])
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        return False

    def session_started(self) -> None:
        self._attached = True
        self._shared.attach(self, self._term, self._size)

    # -- from the shared shell ------------------------------------------------

    def shell_running(self) -> None:
        self._gate.local_input = self._shared.write

    def cannot_start(self, text: str) -> None:
        if self._chan is not None:
            self._chan.write(text.encode())
            self._chan.exit(127)

    def send(self, data: bytes) -> None:
        if self._chan is None or self._hung_up:
            return
        # Output racing the channel's close (the engineer just left) has
        # nowhere to go on that side; the customer still sees it.
        with contextlib.suppress(BrokenPipeError, asyncssh.Error):
            self._chan.write(data)

    def shell_exited(self, status: int) -> None:
        self._gate.exit_status = status
        if self._chan is not None and not self._hung_up:
            self._chan.exit(max(0, status))

    def input_room(self) -> None:
        self._shell_behind = False
        self._input_flow()

    # -- from the engineer -----------------------------------------------------

    def data_received(self, data: bytes, datatype: int | None) -> None:
        gate = self._gate
        shared = self._shared
        if not self._attached or not gate.control:
            # View only, or typed before the shell was there (or after it
            # left): it did not reach the shell, and the log counts it.
            gate.drop(len(data))
            return
        if gate.guard is None or gate.guard.admit(data, shared.write,
                                                  lambda: gate.control, self._check_settled):
            shared.write(data)
        else:
            self._held_for_check = True  # the rest waits on the engineer's side
        if shared.input_pending > INPUT_HIGH_WATER:
            # A paste faster than the program reads it: hold the rest back
            # in the engineer's console, as a local terminal would.
            self._shell_behind = True
        self._input_flow()

    def eof_received(self) -> bool:
        # The engineer's side has no more input (`ssh -T host < script`
        # reached the script's end) but still reads the output: keep the
        # channel open until the shell ends, as OpenSSH's sshd does with a
        # PTY. (asyncssh's default would close it, and the shell with it,
        # before the script's output came back.)
        return True

    def _check_settled(self) -> None:
        self._held_for_check = False
        self._input_flow()

    def _input_flow(self) -> None:
        paused = self._shell_behind or self._held_for_check
        if paused != self._input_paused and self._chan is not None and not self._hung_up:
            self._input_paused = paused
            if paused:
                self._chan.pause_reading()
            else:
                self._chan.resume_reading()

    def terminal_size_changed(self, width: int, height: int, pixwidth: int,
                              pixheight: int) -> None:
        self._size = (width, height)
        # The one window size follows an engineer who types (or one alone):
        # a viewer resizing their window must not reflow the others' screen.
        if self._attached and (self._gate.control or self._shared.engineers == 1):
            self._shared.resize(width, height)

    def pause_writing(self) -> None:
        self.engineer_behind = True
        self._shared.flow()

    def resume_writing(self) -> None:
        self.engineer_behind = False
        self._shared.flow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._hung_up = True
        self.engineer_behind = False
        if self._attached:
            self._shared.detach(self)
        self._gate.closed.set()


class _ServiceSession(asyncssh.stream.SSHServerStreamSession[bytes]):
    """A subsystem channel: SFTP (asyncssh's own server protocol, with the
    agent's file system policy) or the chat line. Nothing else is offered."""

    def __init__(self, gate: Gate, services: Services) -> None:
        sftp = services.sftp
        chat = services.chat
        super().__init__(
            (lambda reader, writer, _stderr: chat(reader, writer, gate)) if chat else None,
            (lambda chan: sftp(chan, gate)) if sftp else None,
            SFTP_VERSION,
        )
        self._gate = gate
        self._services = services

    def shell_requested(self) -> bool:
        return False

    def exec_requested(self, command: str) -> bool:
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem == "sftp":
            return self._services.sftp is not None and self._gate.files
        if subsystem == CHAT_SUBSYSTEM:
            return self._services.chat is not None
        return False


class ChannelRouter(asyncssh.SSHServerSession[bytes]):
    """One session channel, routed by its first request: a shell goes to the
    session's shared shell (one per connection), a subsystem to the service
    that offers it; anything else is refused. asyncssh picks a channel's
    handler when it opens, before the request is known, so this hands every
    callback on to the handler chosen then."""

    def __init__(self, shared: SharedShell, gate: Gate, services: Services,
                 take_shell: Callable[[], bool], closed: Callable[[], None]) -> None:
        self._shared = shared
        self._closed = closed
        self._gate = gate
        self._services = services
        self._take_shell = take_shell
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._pty: tuple[str, tuple[int, int, int, int], object] | None = None
        self._target: asyncssh.SSHServerSession[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: object) -> bool:
        if self._target is not None:
            return False
        self._pty = (term_type, term_size, term_modes)
        return True

    def _route(self, target: asyncssh.SSHServerSession[bytes]) -> None:
        assert self._chan is not None
        self._target = target
        target.connection_made(self._chan)

    def shell_requested(self) -> bool:
        if self._target is not None or not self._take_shell():
            return False
        shell = ShellSession(self._shared, self._gate)
        self._route(shell)
        if self._pty is not None:
            shell.pty_requested(*self._pty)
        return True

    def exec_requested(self, command: str) -> bool:
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        if self._target is not None:
            return False
        service = _ServiceSession(self._gate, self._services)
        if not service.subsystem_requested(subsystem):
            return False
        self._route(service)
        return True

    # -- handed on to the chosen handler --------------------------------------

    def session_started(self) -> None:
        if self._target is not None:
            self._target.session_started()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self._target is not None:
            self._target.data_received(data, datatype)

    def eof_received(self) -> bool:
        return self._target.eof_received() if self._target is not None else False

    def pause_writing(self) -> None:
        if self._target is not None:
            self._target.pause_writing()

    def resume_writing(self) -> None:
        if self._target is not None:
            self._target.resume_writing()

    def terminal_size_changed(self, width: int, height: int, pixwidth: int,
                              pixheight: int) -> None:
        if self._target is not None:
            self._target.terminal_size_changed(width, height, pixwidth, pixheight)

    def break_received(self, msec: int) -> bool:
        return self._target.break_received(msec) if self._target is not None else False

    def signal_received(self, signal: str) -> None:
        if self._target is not None:
            self._target.signal_received(signal)

    def soft_eof_received(self) -> None:
        if self._target is not None:
            self._target.soft_eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed()
        if self._target is not None:
            self._target.connection_lost(exc)


class PairedServer(asyncssh.SSHServer):
    """Public-key auth only (the key list holds exactly the paired engineer);
    one shell per connection, and a bounded number of service channels."""

    def __init__(self, shared: SharedShell, gate: Gate, services: Services | None = None
                 ) -> None:
        self._shared = shared
        self._gate = gate
        self._services = services or Services()
        self._open_channels = 0
        self._shell_taken = False

    def _take_shell(self) -> bool:
        if self._shell_taken:
            return False  # one shell per consented session
        self._shell_taken = True
        return True

    def session_requested(self) -> ChannelRouter | bool:
        if self._open_channels >= 1 + MAX_SERVICE_CHANNELS:
            return False
        self._open_channels += 1
        return ChannelRouter(self._shared, self._gate, self._services, self._take_shell,
                             self._channel_closed)

    def _channel_closed(self) -> None:
        self._open_channels -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._gate.closed.set()

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True


async def serve_shell(
    sock: socket.socket | None = None,
    *,
    tunnel: object | None = None,
    host_key: asyncssh.SSHKey,
    engineer_key: str,
    shell: str,
    gate: Gate,
    shared: SharedShell | None = None,
    services: Services | None = None,
) -> asyncssh.SSHServerConnection:
    """Run the SSH server until the engineer is authenticated: over a
    connected socket, or over the relay (`tunnel`, a `broker.client.relay.SSHRelay`,
    which asyncssh asks for the connection through its `tunnel` option).

    `shared` is the session's shell when another engineer already uses it;
    without it this engineer's shell session starts a shell of its own."""
    if (sock is None) == (tunnel is None):
        raise ValueError("serve_shell needs exactly one of sock or tunnel")
    extra: dict[str, object] = {"tunnel": tunnel} if tunnel is not None else {}
    if shared is None:
        # Looked up on each write: the gate's mirror may be set after this.
        shared = SharedShell(shell, lambda data: gate.on_output(data))
    hub = shared
    return await asyncssh.run_server(
        sock,
        config=None,
        **extra,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(engineer_key + "\n"),
        server_factory=lambda: PairedServer(hub, gate, services),
        encoding=None,
        line_editor=False,
        allow_pty=True,
        x11_forwarding=False,
        agent_forwarding=False,
        sftp_factory=None,
        allow_scp=False,
        encryption_algs=list(SSH_CIPHERS),
        login_timeout=30,
        keepalive_interval=0,
        window=SSH_WINDOW,
    )
