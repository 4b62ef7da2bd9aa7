"""consentry-console: join a customer's computer with the code they read out."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from broker import eventloop
from broker.cli_style import add_version, finish_parser
from broker.client.link import BrokerLink, LinkError, broker_url, open_link
from broker.client.screen_logging import keep_logs_off_the_screen
from broker.layered_config import mark_defaults, settings_or_exit, xdg_config_file
from broker.wire.code import parse_code
from broker.wire.codes import Right
from broker.wire.errors import CodeError
from broker.wire.text import printable
from console import known_hosts
from console.errors import BrokerError, ConsoleError, UsageError
from console.format import asked_rights, granted_text
from console.identity import (
    Identity,
    check_key_file,
    load_agent_identity,
    load_file_identity,
    needs_passphrase,
    tty_passphrase,
)
from console.status_line import CONNECTING, CONNECTING_TEXT, Progress, ProgressPrinter, status

# Imported by `_load_the_rest`, while the connection opens: asyncssh, the
# pairing, the terminal session. Nothing above may import them (a test
# checks), nor Textual and rich, which only the TUI uses.
if TYPE_CHECKING:
    from console.client import JoinedSession

DEFAULT_BROKER = "wss://127.0.0.1:8443"
CONFIG_NAME = "console.toml"
# What console.toml (and CONSENTRY_<NAME>) may set: the options' dests. No
# passphrase: a key's passphrase is asked for, never kept in a file.
SETTINGS = ("broker", "ca", "identity", "user", "ssh_agent")


def add_connection_flags(p: argparse.ArgumentParser, *, sub: bool = False) -> None:
    """The same flags before or after `join`. A sub-command's defaults would
    overwrite values given before it, so there they are suppressed."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if sub else value

    # The defaults are written into the help: under `join` they are
    # suppressed (see above), and `join --help` must still show them.
    user = os.environ.get("USER") or getpass.getuser()
    p.add_argument("--broker", default=default(DEFAULT_BROKER), metavar="URL",
                   help=f"the broker, wss://HOST:PORT (default: {DEFAULT_BROKER})")
    p.add_argument("--ca", type=Path, default=default(Path("certs/ca.crt")), metavar="FILE",
                   help="the CA certificate the broker's certificate must be signed by "
                        "(default: certs/ca.crt)")
    p.add_argument("--identity", type=Path,
                   default=default(Path("~/.ssh/id_ed25519").expanduser()), metavar="KEY",
                   help="your OpenSSH Ed25519 private key (default: ~/.ssh/id_ed25519)")
    p.add_argument("--user", default=default(user), metavar="NAME",
                   help=f"your login name at the broker (default: {user}, your login here)")
    p.add_argument("--config", type=Path, default=default(None), metavar="FILE",
                   help="settings file (TOML; default: $XDG_CONFIG_HOME/consentry/"
                        f"{CONFIG_NAME} if it exists); flags win over CONSENTRY_* "
                        "variables, which win over it")
    p.add_argument("--print-config", action="store_true", default=default(False),
                   help="print the settings the console would use, and where each came "
                        "from, then exit")


def run_tui(args: argparse.Namespace) -> int:
    from console.app import ConsoleApp
    from console.backend import BrokerBackend, Settings

    settings = Settings(broker=args.broker, ca=args.ca, identity=args.identity, user=args.user)
    ConsoleApp(BrokerBackend, settings).run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="consentry-console",
        description="Join a customer's computer, with their consent, over an end-to-end "
        "encrypted session.",
    )
    add_version(p)
    add_connection_flags(p)
    sub = p.add_subparsers(dest="command", metavar="{join,proxy}",
                           description="without a command, the full-screen console starts")
    join = sub.add_parser("join", help="join with the code the customer reads to you")
    join.add_argument("code", help="the code on the customer's screen, e.g. 4821-193-775")
    add_connection_flags(join, sub=True)
    add_join_flags(join)
    proxy = sub.add_parser(
        "proxy", help="join, then carry the SSH connection for OpenSSH (its ProxyCommand)",
        description="Join as `join` does (the customer approves), then carry the SSH "
        "connection on stdin/stdout for your own ssh, scp, sftp or rsync. All messages go to "
        "stderr. Use it as ssh's ProxyCommand, with the host name consentry-CODE (see the "
        "README).")
    proxy.add_argument("code", help="the code on the customer's screen, e.g. 4821-193-775 "
                                    "(or ssh's %%n: consentry-4821-193-775)")
    add_connection_flags(proxy, sub=True)
    add_join_flags(proxy)
    proxy.add_argument("--known-hosts", type=Path, default=known_hosts.DEFAULT_FILE,
                       metavar="FILE",
                       help="where the customer's host key learned under pairing is written, "
                            "as host consentry-CODE, for ssh's UserKnownHostsFile "
                            f"(default: {known_hosts.DEFAULT_FILE})")
    mark_defaults(p, SETTINGS)
    return finish_parser(p)


def add_join_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ssh-agent", action="store_true",
                   help="use the key held by ssh-agent instead of reading --identity")
    p.add_argument("--control", action="store_true",
                   help="ask to type, not just view (the customer decides)")
    p.add_argument("--files", action="store_true",
                   help="ask to copy files to and from the customer's shared folder "
                        "(the customer decides)")


async def _joined(args: argparse.Namespace, code_text: str, *, can_prompt: bool
                  ) -> JoinedSession:
    """Log in, pair and wait for the customer's consent: `join` and `proxy`
    alike. `can_prompt`: a key's passphrase may be asked for on the terminal.

    The connection to the broker opens first; while its TLS and WebSocket
    handshakes are under way a worker thread imports the rest of the console
    (asyncssh, the pairing) and reads the key, so a join's first byte is on
    the network before any of that is paid for. A key with a passphrase is
    read before connecting, as the engineer types it while nothing waits.
    """
    try:
        code = parse_code(code_text)
        # Checked before the key is read (and its passphrase asked for).
        broker_url(args.broker)
    except (CodeError, LinkError) as exc:
        raise UsageError(str(exc)) from exc
    identity: Identity | None = None
    key_file: Path | None = None
    if not args.ssh_agent:
        key_file = args.identity.expanduser()
        check_key_file(key_file)
        if needs_passphrase(key_file) is not False:
            prompt = tty_passphrase if can_prompt else None
            identity = load_file_identity(args.user, key_file, prompt)
    printer = ProgressPrinter()
    try:
        printer(Progress(CONNECTING, CONNECTING_TEXT))
        link, identity = await _connected(args, identity, key_file)
        from console.client import ConsoleClient

        client = ConsoleClient(args.broker, args.ca, identity)
        wants = asked_rights(control=args.control, files=args.files)
        joined = await client.join(code, wants, printer, opened=link)
    finally:
        printer.stop()
    if args.control and not joined.control:
        status("the customer granted view only: you can watch, not type.")
    if args.files and Right.FILES not in joined.granted:
        status("the customer did not grant files: you cannot copy files.")
    status(f"granted: {granted_text(joined.granted)}.")
    return joined


async def _connected(args: argparse.Namespace, identity: Identity | None,
                     key_file: Path | None) -> tuple[BrokerLink, Identity]:
    """The session link, opened while the rest of the console is loaded
    (and the key read, unless it already was)."""
    opening = asyncio.ensure_future(
        open_link(args.broker, "/v1/console", args.ca, session=True))
    try:
        read = await asyncio.to_thread(_load_the_rest, args.user,
                                       key_file if identity is None else None)
        if identity is None:
            identity = read or await load_agent_identity(args.user, args.identity)
        link = await opening
    except LinkError as exc:
        raise BrokerError(str(exc)) from exc
    except BaseException:
        opening.cancel()
        if opening.done() and not opening.cancelled() and opening.exception() is None:
            await opening.result().close()
        raise
    return link, identity


def _load_the_rest(user: str, key_file: Path | None) -> Identity | None:
    """In a worker thread: import what a join needs once it is connected,
    and read an unencrypted key (`key_file`)."""
    for module in ("console.client", "console.terminal"):
        importlib.import_module(module)
    return None if key_file is None else load_file_identity(user, key_file, None)


def _has_terminal() -> bool:
    """A controlling terminal to ask a passphrase on (getpass uses /dev/tty),
    even when stdin is ssh's pipe."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        return False
    return True


async def _proxy(args: argparse.Namespace) -> int:
    from console.proxy import carry, check_stdio

    check_stdio()
    name = known_hosts.entry_name(args.code)
    joined = await _joined(args, known_hosts.code_part(args.code), can_prompt=_has_terminal())
    try:
        key_line = " ".join(joined.host_key.export_public_key("openssh").decode().split()[:2])
        known_hosts.pin_host_key(args.known_hosts, name, key_line)
    except OSError as exc:
        await joined.leave()
        raise UsageError(f"cannot write the customer's host key to {args.known_hosts}: "
                         f"{exc.strerror or exc}") from exc
    status(f"connected to {printable(joined.alias, 100)}; its host key is pinned as {name} in "
           f"{args.known_hosts}.")
    reason = await carry(joined)
    if reason is not None:
        status(reason)
    return 0


async def _join(args: argparse.Namespace) -> int:
    joined = await _joined(args, args.code, can_prompt=sys.stdin.isatty())
    from console.terminal import KEYS_TEXT, run_terminal_session

    status(f"connected to {joined.alias}. {KEYS_TEXT}.")
    reason = await run_terminal_session(joined)
    status(reason)
    return 0


def main(argv: list[str] | None = None) -> int:
    keep_logs_off_the_screen()
    parser = build_parser()
    args = parser.parse_args(argv)
    done = settings_or_exit(args, parser, SETTINGS,
                            program=f"consentry-console {args.command or ''}".strip(),
                            default_file=xdg_config_file(CONFIG_NAME))
    if done is not None:
        return done
    if args.command is None:
        return run_tui(args)
    try:
        return eventloop.run(_proxy(args) if args.command == "proxy" else _join(args))
    except ConsoleError as exc:
        print(f"consentry-console: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # A join still waiting for the customer was withdrawn on the way out
        # (`ConsoleClient.join`): their prompt has closed.
        print("consentry-console: stopped (Ctrl-C); nothing is left waiting for the "
              "customer.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
