"""Broker configuration: where things live and how long things may take."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from broker.errors import ConfigError
from broker.proxy_protocol import Networks
from broker.wire.limits import MAX_AGENT_HELLOS_PER_SOURCE, RESUME_WINDOW_SECONDS

DEFAULT_LISTEN = "127.0.0.1:8443"
DEFAULT_DATA_DIR = Path("var")


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6) into its parts."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"--listen must look like HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is out of range 0-65535")
    host = host.strip("[]") or "127.0.0.1"
    return host, port


@dataclass(frozen=True)
class Timeouts:
    """Session limits enforced by the broker, in seconds."""

    # A paired session with no relayed byte for this long is ended.
    idle: float = 30 * 60
    # No session lasts longer than this, whatever the traffic.
    max_session: float = 8 * 60 * 60
    # Pairing + consent must finish within this (consent itself is 60 s by
    # default on the agent; the agent may choose longer, up to this).
    handshake: float = 10 * 60
    # An active session whose agent or console link broke waits this long
    # for it to resume (`broker.wire.resume`), then ends as agent_lost /
    # console_lost.
    resume_window: float = RESUME_WINDOW_SECONDS
    # WebSocket keepalive: a peer that misses pings is dropped.
    ping_interval: float = 20.0
    ping_timeout: float = 20.0


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 8443
    data_dir: Path = DEFAULT_DATA_DIR
    cert: Path = Path("certs/broker.crt")
    key: Path = Path("certs/broker.key")
    timeouts: Timeouts = field(default_factory=Timeouts)
    # Signed audit checkpoints (broker.audit.checkpoints): every N events or T
    # seconds, appended to a file outside the database — None means
    # data_dir/checkpoints.jsonl; another disk or a shipped copy is stronger.
    checkpoint_file: Path | None = None
    checkpoint_every_events: int = 100
    checkpoint_every_seconds: float = 60.0
    # Files of checkpoints kept elsewhere (`serve --witness`): at start the
    # broker refuses a log shorter than any of them says, as it does for its
    # own checkpoint file.
    witnesses: tuple[Path, ...] = ()
    # `serve --checkpoint-command CMD`: each checkpoint line also goes to its
    # stdin (broker.audit.shipping says what happens when it dies or blocks).
    checkpoint_command: str | None = None
    # Operator quota on the audit database, in MiB (None: no cap but the
    # disk). At the cap appends fail like on a full disk, so the broker
    # refuses new sessions and says why (fail closed) instead of filling a
    # disk other services share.
    audit_max_mb: int | None = None
    # Retention (broker.audit.retention), applied at start-up and then every
    # `retention_interval` seconds: personal data (alias, IP, receipts) is
    # kept this many days, the event skeleton this many (whole UTC days).
    pii_retention_days: int = 14
    event_retention_days: int = 365
    retention_interval: float = 60 * 60.0
    # Agent registrations (`hello`) allowed per source address and minute
    # (`broker.wire.limits.MAX_AGENT_HELLOS_PER_SOURCE`); raise it for many
    # customers behind one address, or for a load test from one machine.
    agent_hellos_per_minute: int = MAX_AGENT_HELLOS_PER_SOURCE
    # The broker's own log (broker.logformat): "text" lines for a person,
    # "json" lines for journald or a log pipeline.
    log_format: str = "text"
    # Load balancers in front of the broker (`serve --proxy-protocol-from`):
    # a connection from one of these networks must begin with a PROXY v2
    # header, whose client address the broker then records and rate-limits
    # by (broker.proxy_protocol). Empty: no header is read from anyone.
    proxy_protocol_from: Networks = ()
    # Several nodes (`serve --database-url postgresql://... --node-url
    # wss://NODE:PORT`, broker.cluster): the shared database, which holds the
    # audit log too (`broker.audit.pg_store`; the master key stays in
    # `data_dir`, the same file on every node), and the URL at which consoles
    # reach this node itself (sent in `moved` answers). None: one node alone,
    # SQLite, as before. May hold a password: never printed.
    database_url: str | None = None
    node_url: str | None = None
    # How long a node's lease lasts unrenewed (`serve --node-lease`): a dead
    # node leaves the cluster, and its sessions are closed in the log, after
    # about twice this; a shorter lease reacts faster to a slow database too.
    node_lease_seconds: float = 15.0

    @property
    def clustered(self) -> bool:
        return self.database_url is not None

    @property
    def audit_db(self) -> Path:
        return self.data_dir / "audit.db"

    @property
    def registry_db(self) -> Path:
        return self.data_dir / "registry.db"
