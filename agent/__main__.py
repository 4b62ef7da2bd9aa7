"""consentry-agent: let a support engineer in, with your consent, while you watch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.client import Agent
from agent.config import AgentConfig, default_state_dir
from agent.errors import AgentError
from agent.identity import load_identity
from agent.screen import CustomerScreen, require_terminal
from agent.transfers.jail import MAX_FILE_BYTES, MAX_SESSION_BYTES
from agent.transfers.record import RECORD_FILE, read_record, record_lines
from agent.transfers.sizes import parse_size
from broker import eventloop
from broker.cli_style import add_version, finish_parser
from broker.client.screen_logging import keep_logs_off_the_screen
from broker.layered_config import mark_defaults, settings_or_exit, xdg_config_file
from broker.wire.codes import RIGHTS
from broker.wire.limits import DEFAULT_CONSENT_TIMEOUT, MAX_CONSENT_TIMEOUT, MIN_CONSENT_TIMEOUT

CONFIG_NAME = "agent.toml"
# What agent.toml (and CONSENTRY_<NAME>) may set: the options' dests.
SETTINGS = ("broker", "ca", "alias", "consent_timeout", "max_rights", "share_hostname",
            "share_user", "state_dir", "shell", "transfers_dir", "share", "max_file_size",
            "max_session_size")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="consentry-agent",
        description="Show a support code, and let an engineer in only if you approve. "
        "You see everything they do; Ctrl-] then e ends the session at once, and Ctrl-] "
        "then i shows a new code for one more engineer.",
    )
    add_version(p)
    p.add_argument("--broker", default="wss://127.0.0.1:8443", metavar="URL",
                   help="the support service's broker, wss://HOST:PORT")
    p.add_argument("--ca", type=Path, default=Path("certs/ca.crt"), metavar="FILE",
                   help="CA certificate the broker must be signed by (default: certs/ca.crt)")
    p.add_argument("--alias", default="unnamed device",
                   help="a name for this computer that the engineer will see")
    p.add_argument("--consent-timeout", type=float, default=DEFAULT_CONSENT_TIMEOUT,
                   metavar="SECONDS", help="deny a request nobody answers within this time "
                                           f"({MIN_CONSENT_TIMEOUT:g} to "
                                           f"{MAX_CONSENT_TIMEOUT:g} s)")
    p.add_argument("--max-rights", default=",".join(RIGHTS), metavar="RIGHTS",
                   help="the most any engineer may ever be granted on this computer: a "
                        "comma list drawn from view, control, files (default: all three)")
    p.add_argument("--share-hostname", action="store_true",
                   help="tell the broker this computer's hostname (off by default)")
    p.add_argument("--share-user", action="store_true",
                   help="tell the broker your login name (off by default)")
    p.add_argument("--state-dir", type=Path, default=default_state_dir(), metavar="DIR",
                   help="where the device key and your consent receipts are kept")
    p.add_argument("--shell", default=None, metavar="PROGRAM",
                   help="shell to run for the engineer (default: $SHELL, else /bin/sh)")
    p.add_argument("--transfers-dir", type=Path, default=None, metavar="DIR",
                   help="where files an engineer sends you go, a folder per session "
                        "(default: ~/consentry-transfers)")
    p.add_argument("--share", type=Path, default=None, metavar="DIR",
                   help="a folder engineers with the files right may copy from "
                        "(read-only, seen as /shared)")
    p.add_argument("--max-file-size", type=_size, default=MAX_FILE_BYTES, metavar="SIZE",
                   help="the largest file one transfer may move, e.g. 500M or 2G")
    p.add_argument("--max-session-size", type=_size, default=MAX_SESSION_BYTES,
                   metavar="SIZE", help="the most one session may move in files, e.g. 10G")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="settings file (TOML; default: $XDG_CONFIG_HOME/consentry/"
                        f"{CONFIG_NAME} if it exists); flags win over CONSENTRY_* "
                        "variables, which win over it")
    p.add_argument("--print-config", action="store_true",
                   help="print the settings the agent would use, and where each came "
                        "from, then exit")
    mark_defaults(p, SETTINGS)
    return finish_parser(p)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def show_transfers(argv: list[str]) -> int:
    """`consentry-agent transfers`: the customer's record of every file."""
    p = argparse.ArgumentParser(prog="consentry-agent transfers",
                                description="Print the record of every file engineers sent "
                                            "to or copied from this computer.")
    p.add_argument("--state-dir", type=Path, default=default_state_dir(), metavar="DIR",
                   help="the agent's state directory")
    args = finish_parser(p).parse_args(argv)
    lines = record_lines(read_record(args.state_dir / RECORD_FILE))
    print("\n".join(lines) if lines else "No file has been transferred.")
    return 0


async def _run(config: AgentConfig) -> None:
    identity = load_identity(config.state_dir)
    async with CustomerScreen() as screen:
        await Agent(config, identity, screen).run()


def main(argv: list[str] | None = None) -> int:
    keep_logs_off_the_screen()
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["transfers"]:
        return show_transfers(given[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    done = settings_or_exit(args, parser, SETTINGS, program="consentry-agent",
                            default_file=xdg_config_file(CONFIG_NAME))
    if done is not None:
        return done
    try:
        require_terminal()
        kwargs = {}
        if args.shell:
            kwargs["shell"] = args.shell
        config = AgentConfig(
            broker=args.broker, ca=args.ca, alias=args.alias,
            consent_timeout=args.consent_timeout, max_rights=args.max_rights,
            share_hostname=args.share_hostname, share_user=args.share_user,
            state_dir=args.state_dir, transfers_dir=args.transfers_dir, share=args.share,
            max_file_bytes=args.max_file_size, max_session_bytes=args.max_session_size,
            **kwargs,
        )
        eventloop.run(_run(config))
    except AgentError as exc:
        print(f"consentry-agent: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    print("consentry-agent: stopped; nobody is connected.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
