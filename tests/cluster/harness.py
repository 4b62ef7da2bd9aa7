"""The engines a cluster runs on, started for the tests: a PostgreSQL of
their own (initdb in a temporary folder, as the `postgres` user when the
tests run as root, on 127.0.0.1 only) and HAProxy in TCP mode in front of
brokers. Both come from the system's packages (`.ci/run` installs them);
without them the tests fail, never skip: a cluster test that does not run
proves nothing.

Every process started here is stopped by whoever started it (the fixtures
in tests/conftest.py and tests/cluster/conftest.py).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MISSING = "(.ci/run installs it from the system's packages: apt-get install {package})"

# Settings of a throwaway cluster: nothing it holds must survive a crash,
# so no fsync; small buffers so that it starts in well under a second.
TEST_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",  # TCP on loopback only, nothing in /var/run
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "100",
    "log_min_messages": "warning",
}
# What a measurement needs instead (bench/cluster.py): commits as durable as
# a production server's, so that the audit log's cost is not hidden.
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def free_port() -> int:
    """A port nothing listens on now (another process may take it before
    the caller does; the callers retry their start once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_bound(port: int, process: subprocess.Popen[bytes], what: str, log: Path,
                     timeout: float = 20.0) -> None:
    """Until `process` listens on `port`, told by the port refusing a bind:
    no connection is made (through a balancer it would reach a broker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                if process.poll() is None:
                    return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on 127.0.0.1:{port}:\n"
                         + log.read_text(errors="replace"))


# -- PostgreSQL ---------------------------------------------------------------


def postgres_bin() -> Path:
    """The newest installed server's bin directory (Debian's layout)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if not found:
        pytest.fail("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl) "
                    + MISSING.format(package="postgresql"), pytrace=False)
    return found[-1].parent


@dataclass
class Postgres:
    """A running test cluster; `url(db)` for a client, `psql(sql)` for set-up."""

    bin: Path
    root: Path
    port: int
    password: str
    as_user: tuple[str, ...]  # the command prefix that runs a program as the owner
    settings: dict[str, str] = field(default_factory=lambda: dict(TEST_SETTINGS))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres", user: str = "postgres",
            password: str | None = None) -> str:
        return (f"postgresql://{user}:{password or self.password}@127.0.0.1:{self.port}"
                f"/{database}")

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
             "-c", sql],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"},
        )
        if result.returncode != 0:
            raise AssertionError(f"psql failed on {sql!r}: {result.stderr.strip()}")
        return result.stdout.strip()

    def pg_ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data),
                               *args], capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        options = " ".join(f"-c {key}={value!r}" if value == "" else f"-c {key}={value}"
                           for key, value in self.settings.items())
        result = self.pg_ctl("start", "-w", "-t", "30", "-l", str(self.log),
                             "-o", f"-p {self.port} {options}")
        if result.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise AssertionError(f"PostgreSQL did not start: {result.stderr.strip()}\n{log}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.pg_ctl("stop", "-w", "-m", "fast")

    def is_running(self) -> bool:
        return self.pg_ctl("status").returncode == 0


def start_postgres(*, durable: bool = False) -> Postgres:
    """initdb and start a cluster in a fresh temporary folder; the caller
    stops it (`stop_postgres`). `durable`: fsync and synchronous commits on."""
    bin_dir = postgres_bin()
    # pytest's own temporary folders are root's, mode 0700: the server's
    # user could not enter them. This one is the server user's alone.
    root = Path(tempfile.mkdtemp(prefix="consentry-pg-"))
    as_user: tuple[str, ...] = ()
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.fail("there is no `postgres` user to run the test cluster as "
                        + MISSING.format(package="postgresql"), pytrace=False)
        os.chown(root, owner.pw_uid, owner.pw_gid)
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        as_user = (runuser, "-u", "postgres", "--")
    password = secrets.token_urlsafe(18)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if as_user:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    pg = Postgres(bin=bin_dir, root=root, port=0, password=password, as_user=as_user,
                  settings={**TEST_SETTINGS, **(DURABLE if durable else {})})
    try:
        init = subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(pg.data), "-U", "postgres",
             "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8",
             "--locale=C"],
            capture_output=True, text=True, timeout=120)
        pwfile.unlink()
        if init.returncode != 0:
            raise AssertionError(f"initdb failed: {init.stderr.strip()}")
        for attempt in range(3):  # a free port can be taken before the server binds it
            pg.port = free_port()
            try:
                pg.start()
                break
            except AssertionError:
                if attempt == 2 or not re.search(r"could not bind|Address already in use",
                                                 pg.log.read_text(errors="replace")):
                    raise
        return pg
    except BaseException:
        stop_postgres(pg)
        raise


def stop_postgres(pg: Postgres) -> None:
    try:
        pg.stop()
    finally:
        shutil.rmtree(pg.root, ignore_errors=True)


# -- HAProxy ------------------------------------------------------------------


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None)
    if found is None:
        pytest.fail("HAProxy is not installed " + MISSING.format(package="haproxy"),
                    pytrace=False)
    return found


def haproxy_config(port: int, backends: Sequence[tuple[str, int]], stats: Path, *,
                   check_ca: Path | None = None, healthz: bool = False,
                   source: str | None = None, node_ports: Sequence[int] = ()) -> str:
    """TCP mode, TLS passed through to the brokers untouched, a PROXY v2
    header in front of each connection; contrib/haproxy.cfg is the
    production shape of the same. With `check_ca`, each broker is checked
    by a TLS handshake verified against that CA (the PROXY header first),
    and with `healthz` by a GET /healthz over it that must say 200.
    `source`: the address HAProxy connects to the brokers from (so that
    the brokers trust only it, and clients on 127.0.0.1 dial them directly).
    `node_ports`: a frontend of its own for each backend, in order (the
    node URLs that go through the balancer too, as in contrib/haproxy.cfg)."""
    check = (f" check check-send-proxy check-ssl verify required ca-file {check_ca} inter 500ms"
             if check_ca else "")
    if source:
        check += f" source {source}"
    servers = "\n".join(f"    server broker{n} {host}:{bport} send-proxy-v2{check}"
                        for n, (host, bport) in enumerate(backends, 1))
    http_check = ("    option httpchk\n    http-check send meth GET uri /healthz ver HTTP/1.1 "
                  "hdr Host consentry\n    http-check expect status 200\n" if healthz else "")
    per_node = "".join(f"""
frontend node{n}
    bind 127.0.0.1:{node_port}
    default_backend node{n}

backend node{n}
{http_check}    server broker{n} {host}:{bport} send-proxy-v2{check}
""" for n, ((host, bport), node_port) in enumerate(zip(backends, node_ports, strict=False), 1))
    return f"""\
global
    maxconn 2000
    stats socket {stats} mode 600 level admin

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h

frontend consentry
    bind 127.0.0.1:{port}
    default_backend brokers

backend brokers
    balance leastconn
{http_check}{servers}
{per_node}"""


@dataclass
class HAProxy:
    process: subprocess.Popen[bytes]
    port: int
    config: Path
    log: Path
    stats: Path

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    def servers(self) -> dict[str, dict[str, str]]:
        """`show stat` of the backend's servers, by name (status, check_status...)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.stats))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode(errors="replace").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {row["svname"]: row for row in rows
                if row.get("pxname") == "brokers" and row["svname"] != "BACKEND"}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_haproxy(folder: Path, backends: Sequence[tuple[str, int]], *,
                  check_ca: Path | None = None, healthz: bool = False,
                  source: str | None = None, node_ports: Sequence[int] = ()) -> HAProxy:
    """HAProxy in the foreground on a free loopback port; the caller stops it."""
    binary = haproxy_binary()
    folder.mkdir(parents=True, exist_ok=True)
    config, log, stats = folder / "haproxy.cfg", folder / "haproxy.log", folder / "admin.sock"
    for attempt in range(3):
        port = free_port()
        config.write_text(haproxy_config(port, backends, stats, check_ca=check_ca,
                                         healthz=healthz, source=source,
                                         node_ports=node_ports))
        checked = subprocess.run([binary, "-c", "-q", "-f", str(config)],
                                 capture_output=True, text=True, timeout=30)
        if checked.returncode != 0:
            raise AssertionError(f"haproxy refused its config: {checked.stderr.strip()}")
        with log.open("wb") as out:
            process = subprocess.Popen([binary, "-db", "-f", str(config)],
                                       stdout=out, stderr=subprocess.STDOUT)
        proxy = HAProxy(process, port, config, log, stats)
        try:
            wait_until_bound(port, process, "haproxy", log)
            return proxy
        except AssertionError:
            proxy.stop()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
