"""`consentry-broker`: run the broker and administer its files.

    consentry-broker serve        [--listen HOST:PORT] [--cert F] [--key F]
                                  [--checkpoint-file F] [--audit-max-mb N]
                                  [--pii-retention-days N] [--event-retention-days N]
                                  [--agent-hellos-per-minute N]
                                  [--database-url URL --node-url URL [--node-lease S]]
    consentry-broker certs init   [--dir certs] [--name HOST ...] [--force]
    consentry-broker engineer add NAME --key FILE.pub [--role R] [--display TEXT]
    consentry-broker engineer list [--json]
    consentry-broker engineer remove NAME
    consentry-broker audit list   [--json] [--since T] [--until T] [--engineer NAME]
                                  [--subject ALIAS] [--type T] [--session ID] [--limit N]
                                  [--database-url URL]
    consentry-broker audit show   SESSION|PREFIX [--json] [--database-url URL]
    consentry-broker audit export [--format jsonl|csv] [--output F] [filters as list]
                                  [--database-url URL]
    consentry-broker audit export --subject ALIAS [--device PSEUDONYM] [--format json]
                                  [--output F] [--database-url URL]
    consentry-broker audit verify [--pubkey F] [--checkpoint-file F] [--json]
                                  [--database-url URL]
    consentry-broker audit pubkey
    consentry-broker audit migrate --to URL [--pubkey F] [--checkpoint-file F]
    consentry-broker audit purge  [--pii-retention-days N] [--event-retention-days N]
                                  [--database-url URL]
    consentry-broker audit erase  --subject ALIAS [--device P] [--yes] [--database-url URL]
    consentry-broker dev-setup    [--certs DIR] [--listen HOST:PORT]

Every sub-command takes --data-dir DIR (default var/), and the command takes
--version. The README's command table is checked against this parser
(tests/test_readme_commands.py). Errors the operator
can act on are printed as one line, never as a traceback; exit codes come
from `broker.errors`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from broker import audit_cli, eventloop
from broker.audit_cli.common import cli_actor, log_admin_action, now
from broker.backup import BackupError, make_backup, make_recipient_key, restore_backup
from broker.certs import DEFAULT_NAMES, PkiPaths, cert_names, init_dev_pki
from broker.cli_style import add_version, finish_parser
from broker.config import DEFAULT_DATA_DIR, DEFAULT_LISTEN, BrokerConfig, Timeouts, parse_listen
from broker.devsetup import broker_url, dev_setup
from broker.errors import BrokerError, ConfigError, RegistryError
from broker.layered_config import SettingsError, configure_from, mark_defaults
from broker.logformat import LOG_FORMATS, setup_logging
from broker.proxy_protocol import parse_networks
from broker.registry import ROLES, Registry
from broker.wire import limits
from broker.wire.text import printable

__all__ = ["main"]

PROG = "consentry-broker"
DEFAULT_CONFIG = Path("/etc/consentry/broker.toml")
# What broker.toml (and CONSENTRY_<NAME>) may set: options' dests, wherever a
# sub-command takes them (`audit purge` the retention days, `audit verify`
# the checkpoint file and witnesses).
SETTINGS = ("data_dir", "listen", "cert", "key", "checkpoint_file", "witness",
            "checkpoint_command", "audit_max_mb", "pii_retention_days",
            "event_retention_days", "agent_hellos_per_minute", "log_format",
            "proxy_protocol_from", "database_url", "node_url", "node_lease")


# -- serve --------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _network(text: str) -> IPv4Network | IPv6Network:
    try:
        return parse_networks([text])[0]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_cluster_flags(config: BrokerConfig) -> None:
    """--database-url and --node-url go together, and each must be usable."""
    from broker.audit.stores import check_database_url
    from broker.cluster.urls import node_url_problem

    if config.database_url is None and config.node_url is None:
        return
    if config.database_url is None:
        raise ConfigError("--node-url is for a node of several: give --database-url too")
    check_database_url(config.database_url)  # the URL's password never in the message
    if config.node_url is None:
        raise ConfigError("--database-url needs --node-url wss://HOST:PORT: the address at "
                          "which consoles reach this node itself")
    if config.node_lease_seconds < 3:
        raise ConfigError("--node-lease must be at least 3 seconds (it is renewed every "
                          "fifth of it)")
    problem = node_url_problem(config.node_url)
    if problem is not None:
        raise ConfigError(f"--node-url {problem}")


def cmd_serve(args: argparse.Namespace) -> int:
    host, port = parse_listen(args.listen)
    for path, what in ((args.cert, "TLS certificate"), (args.key, "TLS private key")):
        if not path.is_file():
            raise ConfigError(f"no {what} at {path} — run `{PROG} certs init` first")
    config = BrokerConfig(host=host, port=port, data_dir=args.data_dir, cert=args.cert,
                          key=args.key, checkpoint_file=args.checkpoint_file,
                          witnesses=tuple(args.witness or ()),
                          checkpoint_command=args.checkpoint_command,
                          audit_max_mb=args.audit_max_mb,
                          pii_retention_days=args.pii_retention_days,
                          event_retention_days=args.event_retention_days,
                          agent_hellos_per_minute=args.agent_hellos_per_minute,
                          log_format=args.log_format,
                          timeouts=Timeouts(resume_window=float(args.resume_window)),
                          proxy_protocol_from=tuple(args.proxy_protocol_from or ()),
                          database_url=args.database_url, node_url=args.node_url,
                          node_lease_seconds=float(args.node_lease))
    check_cluster_flags(config)
    setup_logging(args.log_format)
    # Imported here so the admin sub-commands work without the server stack.
    from broker import server

    eventloop.keep_connection_buffers_mapped()
    eventloop.run(server.run_broker(config))
    return 0


# -- certs --------------------------------------------------------------------


def cmd_certs_init(args: argparse.Namespace) -> int:
    names = args.names or list(DEFAULT_NAMES)
    before = PkiPaths.in_directory(args.dir)
    existed = {p: p.exists() for p in (before.ca_cert, before.ca_key, before.cert, before.key)}
    paths = init_dev_pki(args.dir, names, force=args.force)
    for path in (paths.ca_cert, paths.ca_key, paths.cert, paths.key):
        print(f"{'kept ' if existed[path] and not args.force else 'wrote'}  {path}")
    print(f"broker certificate names: {', '.join(cert_names(paths.cert))}")
    if all(existed.values()) and not args.force:
        print("(existing files kept; use --force to make new ones)")
    print(f"agents and consoles pin {paths.ca_cert}; keep {paths.ca_key} private")
    return 0


# -- engineers ----------------------------------------------------------------


def _read_key_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no public key file at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read public key file {path}: {exc}") from exc


def cmd_engineer_add(args: argparse.Namespace) -> int:
    key_text = _read_key_file(args.key)
    if args.database_url is not None:
        from broker.cluster import admin

        engineer = admin.add_engineer(args.database_url, args.data_dir, args.name, key_text,
                                      role=args.role, display=args.display,
                                      actor=cli_actor(), now=now())
        print(f"added {engineer.role} {engineer.name!r} ({printable(engineer.display)}), "
              f"key {engineer.fingerprint}, to the cluster")
        return 0
    registry = Registry(args.data_dir / "registry.db")
    engineer = registry.add(args.name, key_text, role=args.role, display=args.display,
                            now=now())
    try:
        asyncio.run(log_admin_action(args.data_dir, "engineer_added", {
            "name": engineer.name, "role": engineer.role, "key": engineer.fingerprint,
        }))
    except BaseException:
        # Fail closed: an access grant that left no trace in the log is undone.
        registry.remove(engineer.name)
        raise
    print(f"added {engineer.role} {engineer.name!r} ({printable(engineer.display)}), "
          f"key {engineer.fingerprint}")
    return 0


def cmd_backup_key(args: argparse.Namespace) -> int:
    if args.output.exists():
        raise BackupError(f"{args.output} exists: a backup key is never overwritten (the "
                          "backups made for it could no longer be opened)")
    public = make_recipient_key(args.output)
    print(f"backup key: {args.output} (private: keep it off this machine, with the "
          f"master and audit keys)\npublic key: {public} (give it to `backup --to`)")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    names = make_backup(args.data_dir, args.to, args.output)
    print(f"backed up {', '.join(names)} of {args.data_dir} to {args.output}, encrypted "
          f"to {args.to}; master.key and audit.key are not in it: keep them apart")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    names = restore_backup(args.input, args.identity, args.data_dir)
    print(f"restored {', '.join(names)} into {args.data_dir}. Put master.key and audit.key "
          f"back beside them, then run `{PROG} audit verify --data-dir {args.data_dir}`")
    return 0


def _cluster_registry_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", metavar="URL",
                   help="a cluster's PostgreSQL (the owner's URL, password in PGPASSWORD): "
                        "its engineers, shared by every node, instead of this directory's "
                        "registry.db")


def cmd_engineer_list(args: argparse.Namespace) -> int:
    if args.database_url is not None:
        from broker.cluster import admin

        engineers = admin.list_engineers(args.database_url)
    else:
        engineers = Registry(args.data_dir / "registry.db").list()
    if args.json:
        for e in engineers:
            print(json.dumps({"name": e.name, "role": e.role, "display": e.display,
                              "fingerprint": e.fingerprint, "public_key": e.public_key,
                              "added": e.added}))
        return 0
    if not engineers:
        print("no engineers registered", file=sys.stderr)
        return 0
    rows = [("NAME", "ROLE", "DISPLAY", "FINGERPRINT")] + [
        (e.name, e.role, printable(e.display), e.fingerprint) for e in engineers
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[3])
    return 0


def cmd_engineer_remove(args: argparse.Namespace) -> int:
    if args.database_url is not None:
        from broker.cluster import admin

        removed = admin.remove_engineer(args.database_url, args.data_dir, args.name,
                                        actor=cli_actor(), now=now())
        if removed is None:
            raise RegistryError(f"no engineer named {printable(args.name)!r} is registered "
                                "in the cluster")
        print(f"removed {removed.role} {removed.name!r} from the cluster")
        return 0
    registry = Registry(args.data_dir / "registry.db")
    engineer = registry.get(args.name)
    if engineer is None or not registry.remove(args.name):
        raise RegistryError(f"no engineer named {printable(args.name)!r} is registered")
    asyncio.run(log_admin_action(args.data_dir, "engineer_removed", {
        "name": engineer.name, "role": engineer.role, "key": engineer.fingerprint,
    }))
    print(f"removed {engineer.role} {engineer.name!r}")
    return 0


# -- dev-setup ----------------------------------------------------------------


def _display_path(path: Path) -> str:
    """A path as typed from the current directory: relative inside it, else absolute."""
    absolute = path.absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def _program(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return _display_path(candidate) if candidate.exists() else name


def cmd_dev_setup(args: argparse.Namespace) -> int:
    host, port = parse_listen(args.listen)
    result = dev_setup(args.certs, args.data_dir, host, now=now())
    if result.registered is not None:
        asyncio.run(log_admin_action(args.data_dir, "engineer_added", {
            "name": result.registered.name, "role": result.registered.role,
            "key": result.registered.fingerprint,
        }))
    url = broker_url(host, port)
    ca = _display_path(result.pki.ca_cert)
    identity = _display_path(result.identity)
    print(f"""\
consentry dev setup
  certificates  {_display_path(result.pki.cert)} for {', '.join(result.names)} \
(CA {ca}) — {result.pki_status}
  admin key     {identity} ({result.fingerprint}) — {result.identity_status}
  registry      'admin' (admin, "Dev Admin") — {result.registry_status}

The broker runs in this terminal. Open two more terminals in this directory:

  1. the customer side — starts an agent that shows a join code (e.g. 4821-193-775):

     {_program("consentry-agent")} --broker {url} --ca {ca} --alias "my laptop"

  2. the engineer side — replace CODE with the code the agent shows:

     {_program("consentry-console")} join CODE --broker {url} --ca {ca} \
--identity {identity} --user admin --control
""", flush=True)
    return 0


# -- argument parsing ---------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, metavar="DIR",
                        help="the broker's data: audit log, registry and keys "
                             "(default: var/)")
    common.add_argument("--config", type=Path, metavar="FILE",
                        help=f"settings file (TOML; default: {DEFAULT_CONFIG} if it exists); "
                             "flags win over CONSENTRY_* variables, which win over it")
    common.add_argument("--print-config", action="store_true",
                        help="print the settings this command would use, and where each "
                             "came from, then exit")
    parser = argparse.ArgumentParser(
        prog=PROG, description="consentry broker: pairs agents and consoles, keeps the audit log"
    )
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", parents=[common], help="run the broker")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help="address and port to accept agents and consoles on (TLS "
                        "WebSocket); 0.0.0.0:PORT for every interface")
    p.add_argument("--cert", type=Path, default=Path("certs/broker.crt"), metavar="FILE",
                   help="the broker's TLS certificate (PEM), naming the broker's host in its "
                        "subjectAltName; `certs init` makes one")
    p.add_argument("--key", type=Path, default=Path("certs/broker.key"), metavar="FILE",
                   help="the certificate's private key (PEM; keep it mode 0600)")
    p.add_argument("--proxy-protocol-from", type=_network, action="append",
                   metavar="ADDRESS",
                   help="a load balancer (address or network) that sends the PROXY protocol "
                        "v2 (HAProxy `send-proxy-v2`): its connections must begin with the "
                        "header, and the client it names is the one recorded and "
                        "rate-limited (repeatable; from other addresses none is read)")
    p.add_argument("--database-url", metavar="URL",
                   help="run as one node of several: the shared PostgreSQL, which "
                        "holds the audit log too (postgresql://USER@HOST/DB; leave the "
                        "password out and use PGPASSWORD or ~/.pgpass, which ps does not "
                        "show; every node holds the same DIR/master.key and "
                        "DIR/audit-ratchet.key); needs --node-url")
    p.add_argument("--node-url", metavar="URL",
                   help="with --database-url: wss://HOST:PORT at which consoles reach this "
                        "node itself, past the balancer (README: \"Running several nodes\")")
    p.add_argument("--node-lease", type=_positive_int, default=15, metavar="SECONDS",
                   help="with --database-url: how long this node's lease lasts unrenewed "
                        "(default 15, at least 3); a node dead for about twice this is "
                        "recorded node_lost and its slot freed")
    p.add_argument("--checkpoint-file", type=Path, metavar="FILE",
                   help="where signed audit checkpoints are appended (default: "
                        "DIR/checkpoints.jsonl; another disk is stronger)")
    p.add_argument("--witness", type=Path, action="append", metavar="FILE",
                   help="signed checkpoints kept elsewhere (a copy shipped off this machine, "
                        "a customer's checkpoints.jsonl): refuse to start on a log shorter "
                        "than FILE says (repeatable)")
    p.add_argument("--checkpoint-command", metavar="CMD",
                   help="also write each checkpoint line to the stdin of this long-running "
                        "command, e.g. \"logger -t consentry\" or \"ssh host 'cat >> "
                        "cp.jsonl'\" (restarted if it exits; never delays the log)")
    p.add_argument("--audit-max-mb", type=_positive_int, metavar="N",
                   help="cap the audit database at N MiB: once full, no new session starts "
                        "(agents and consoles are told why) until the cap is raised or "
                        "space is freed (`audit purge`)")
    p.add_argument("--pii-retention-days", type=int, default=14, metavar="N",
                   help="keep personal data (alias, IP, receipts) N days (default 14)")
    p.add_argument("--event-retention-days", type=int, default=365, metavar="N",
                   help="keep audit events N whole days (default 365)")
    p.add_argument("--agent-hellos-per-minute", type=_positive_int,
                   default=limits.MAX_AGENT_HELLOS_PER_SOURCE, metavar="N",
                   help="agents that may register from one address per minute (default "
                        f"{limits.MAX_AGENT_HELLOS_PER_SOURCE}); each is an audit event")
    p.add_argument("--resume-window", type=_positive_int,
                   default=int(limits.RESUME_WINDOW_SECONDS), metavar="SECONDS",
                   help="how long a session waits for an agent or console whose connection "
                        f"broke to come back (default {limits.RESUME_WINDOW_SECONDS:.0f}); "
                        "then it ends as agent_lost / console_lost")
    p.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                   help="the broker's log on stderr: text lines, or one JSON object a line "
                        "(time, level, logger, message, fields) for journald or ELK")
    p.set_defaults(func=cmd_serve)

    certs = sub.add_parser("certs", help="TLS certificates").add_subparsers(
        dest="certs_command", required=True, metavar="COMMAND")
    p = certs.add_parser("init", parents=[common], help="make a dev CA and broker certificate")
    p.add_argument("--dir", type=Path, default=Path("certs"), metavar="DIR",
                   help="where ca.crt, ca.key, broker.crt and broker.key are written")
    p.add_argument("--name", dest="names", action="append", metavar="HOST",
                   help="DNS name or IP address of the broker (repeatable; "
                        "default: localhost and 127.0.0.1)")
    p.add_argument("--force", action="store_true",
                   help="replace existing files (clients must then pin the new ca.crt)")
    p.set_defaults(func=cmd_certs_init)

    eng = sub.add_parser("engineer", help="engineers and admins allowed to log in")
    eng_sub = eng.add_subparsers(dest="engineer_command", required=True, metavar="COMMAND")
    p = eng_sub.add_parser("add", parents=[common], help="register an engineer's public key")
    p.add_argument("name", help="the login name the engineer gives with --user")
    p.add_argument("--key", type=Path, required=True, metavar="PUBKEY_FILE",
                   help="the engineer's OpenSSH Ed25519 public key (.pub)")
    p.add_argument("--role", choices=sorted(ROLES), default="engineer",
                   help="engineer: joins sessions; admin: also reads the audit log")
    p.add_argument("--display", metavar="TEXT",
                   help="full name shown to customers (default: the NAME)")
    _cluster_registry_flag(p)
    p.set_defaults(func=cmd_engineer_add)
    p = eng_sub.add_parser("list", parents=[common], help="list registered engineers")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    _cluster_registry_flag(p)
    p.set_defaults(func=cmd_engineer_list)
    p = eng_sub.add_parser("remove", parents=[common], help="remove an engineer")
    p.add_argument("name", help="the engineer's login name, as in `engineer list`")
    _cluster_registry_flag(p)
    p.set_defaults(func=cmd_engineer_remove)

    audit = sub.add_parser("audit", help="the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    audit_cli.register(audit_sub, common)

    p = sub.add_parser("backup-key", parents=[common],
                       help="make the key pair backups are encrypted to")
    p.add_argument("--output", type=Path, required=True, metavar="FILE",
                   help="the private key (0600); the public key is written as FILE.pub")
    p.set_defaults(func=cmd_backup_key)
    p = sub.add_parser("backup", parents=[common],
                       help="an encrypted snapshot of the audit log, registry and checkpoints")
    p.add_argument("--output", type=Path, required=True, metavar="FILE",
                   help="where the backup is written (0600)")
    p.add_argument("--to", type=Path, required=True, metavar="PUBKEY_FILE",
                   help="the public key it is encrypted to (`backup-key` makes it)")
    p.set_defaults(func=cmd_backup)
    p = sub.add_parser("restore", parents=[common],
                       help="bring a backup back into an empty data directory")
    p.add_argument("--input", type=Path, required=True, metavar="FILE", help="the backup")
    p.add_argument("--identity", type=Path, required=True, metavar="KEY_FILE",
                   help="the private backup key it was encrypted to")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("dev-setup", parents=[common],
                       help="certificates, a dev admin key and how to start (make run)")
    p.add_argument("--certs", type=Path, default=Path("certs"), metavar="DIR",
                   help="where the dev CA and broker certificate are made (kept if present)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help="the address `serve` will listen on, for the commands printed")
    p.set_defaults(func=cmd_dev_setup)
    return finish_parser(parser)


def configure(args: argparse.Namespace, parser: argparse.ArgumentParser,
              environ: Mapping[str, str]) -> str | None:
    """Fill `args` from the layers; the --print-config text if it was asked for."""
    try:
        # The database URL holds its password: --print-config says only
        # whether it is set.
        return configure_from(args, parser, SETTINGS,
                              program=" ".join((PROG, *_command_words(args))),
                              default_file=DEFAULT_CONFIG, environ=environ,
                              secrets=("database_url",))
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None


def _command_words(args: argparse.Namespace) -> list[str]:
    words = [args.command]
    for attr in ("certs_command", "engineer_command", "audit_command"):
        if getattr(args, attr, None):
            words.append(getattr(args, attr))
    return words


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Before parsing: a FlagDefault is how a flag left out is told from one given.
    mark_defaults(parser, SETTINGS)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        shown = configure(args, parser, os.environ)
        if shown is not None:
            print(shown, end="")
            return 0
        return int(args.func(args))
    except BrokerError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
