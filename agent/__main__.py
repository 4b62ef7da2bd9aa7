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
from broker import eventloop
from broker.cli_style import add_version, finish_parser
from broker.wire.codes import RIGHTS, Right
from broker.wire.limits import DEFAULT_CONSENT_TIMEOUT, MAX_CONSENT_TIMEOUT, MIN_CONSENT_TIMEOUT


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
    p.add_argument("--max-rights", choices=RIGHTS, default=Right.CONTROL,
                   help="the most any engineer may ever be granted on this computer")
    p.add_argument("--share-hostname", action="store_true",
                   help="tell the broker this computer's hostname (off by default)")
    p.add_argument("--share-user", action="store_true",
                   help="tell the broker your login name (off by default)")
    p.add_argument("--state-dir", type=Path, default=default_state_dir(), metavar="DIR",
                   help="where the device key and your consent receipts are kept")
    p.add_argument("--shell", default=None, metavar="PROGRAM",
                   help="shell to run for the engineer (default: $SHELL, else /bin/sh)")
    return finish_parser(p)


async def _run(config: AgentConfig) -> None:
    identity = load_identity(config.state_dir)
    async with CustomerScreen() as screen:
        await Agent(config, identity, screen).run()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        require_terminal()
        kwargs = {}
        if args.shell:
            kwargs["shell"] = args.shell
        config = AgentConfig(
            broker=args.broker, ca=args.ca, alias=args.alias,
            consent_timeout=args.consent_timeout, max_rights=args.max_rights,
            share_hostname=args.share_hostname, share_user=args.share_user,
            state_dir=args.state_dir, **kwargs,
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
