"""A whole deployment on loopback, per test: dev PKI made in the test session,
a broker subprocess on 127.0.0.1:0, and agents/consoles driven through PTYs.
Every process started here is stopped by the fixture that started it."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pexpect
import pytest

from broker.certs import PkiPaths, init_dev_pki

BIN = Path(sys.executable).parent
CODE_RE = re.compile(r"Your support code:\s+(?:\x1b\[\d+m)?(\d+-\d{3}-\d{3})")
LISTEN_RE = re.compile(r"listening on wss://127\.0\.0\.1:(\d+)")


def write_key(path: Path) -> Path:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(path))
    key.write_public_key(str(path) + ".pub")
    os.chmod(path, 0o600)
    return path


@dataclass
class Deployment:
    root: Path
    pki: PkiPaths
    data_dir: Path
    broker: subprocess.Popen[bytes] | None = None
    port: int = 0
    children: list[pexpect.spawn] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    @property
    def broker_stdout(self) -> Path:
        return self.root / "broker.out"

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "TERM": "xterm",
            "LANG": "C.UTF-8",
            "PS1": "$ ",
            "SHELL": "/bin/sh",
        }

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "consentry-broker"), *args, "--data-dir", str(self.data_dir)],
            capture_output=True, text=True, timeout=60, cwd=self.root,
        )

    def add_engineer(self, name: str, role: str = "engineer", display: str | None = None) -> Path:
        key = write_key(self.root / f"{name}_ed25519")
        extra = ["--display", display] if display else []
        result = self.cli("engineer", "add", name, "--key", f"{key}.pub", "--role", role, *extra)
        assert result.returncode == 0, result.stderr
        return key

    def start_broker(self, port: int = 0, *extra: str,
                     preexec_fn: Callable[[], None] | None = None) -> None:
        """Start `consentry-broker serve`; `extra` flags are added (e.g. a quota).
        `preexec_fn` runs in the child first (e.g. to lower its rlimits)."""
        out = self.broker_stdout.open("wb")  # a restart starts a fresh transcript
        self.broker = subprocess.Popen(
            [str(BIN / "consentry-broker"), "serve", "--listen", f"127.0.0.1:{port}",
             "--data-dir", str(self.data_dir), "--cert", str(self.pki.cert),
             # A console or agent killed by a test is given up on quickly;
             # the resume tests pass a longer window in `extra`.
             "--key", str(self.pki.key), "--resume-window", "3", *extra],
            stdout=out, stderr=subprocess.STDOUT, cwd=self.root, preexec_fn=preexec_fn,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            match = LISTEN_RE.search(self.broker_stdout.read_text(errors="replace"))
            if match:
                self.port = int(match.group(1))
                return
            if self.broker.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("broker did not start:\n" + self.broker_stdout.read_text())

    def spawn(self, program: str, *args: str, cols: int = 100, rows: int = 30) -> pexpect.spawn:
        child = pexpect.spawn(
            str(BIN / program), list(args), env=self.env(), cwd=str(self.root),
            dimensions=(rows, cols), timeout=20, encoding="utf-8", codec_errors="replace",
        )
        child.logfile_read = io.StringIO()  # the whole transcript, for assertions
        self.children.append(child)
        return child

    def agent(self, *args: str, ca: Path | None = None) -> pexpect.spawn:
        return self.spawn(
            "consentry-agent", "--broker", self.url, "--ca", str(ca or self.pki.ca_cert),
            "--state-dir", str(self.root / "agent-state"), "--shell", "/bin/sh", *args,
        )

    def console(self, code: str, key: Path, user: str, *args: str,
                ca: Path | None = None) -> pexpect.spawn:
        return self.spawn(
            "consentry-console", "join", code, "--broker", self.url,
            "--ca", str(ca or self.pki.ca_cert), "--identity", str(key), "--user", user,
            *args, cols=80, rows=24,
        )

    def stop(self) -> None:
        for child in self.children:
            if child.isalive():
                child.terminate(force=True)
        self.stop_broker()

    def stop_broker(self) -> None:
        if self.broker is not None and self.broker.poll() is None:
            self.broker.terminate()
            try:
                self.broker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.broker.kill()
                self.broker.wait()

    def audit_types(self) -> list[str]:
        result = self.cli("audit", "list", "--json")
        assert result.returncode == 0, result.stderr
        import json

        return [json.loads(line)["type"] for line in result.stdout.splitlines() if line.strip()]


def transcript(child: pexpect.spawn) -> str:
    log = child.logfile_read
    assert isinstance(log, io.StringIO), "the child was not started by Deployment"
    return log.getvalue()


def matched(child: pexpect.spawn, group: int = 1) -> str:
    """Group `group` of what `child.expect` last matched (a pattern, not EOF or TIMEOUT)."""
    match = child.match
    assert isinstance(match, re.Match), f"the last expect matched {match!r}, not a pattern"
    return str(match.group(group))


def read_code(agent: pexpect.spawn, timeout: float = 20) -> str:
    agent.expect(CODE_RE, timeout=timeout)
    return matched(agent)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    pki = init_dev_pki(tmp_path / "certs")
    dep = Deployment(root=tmp_path, pki=pki, data_dir=tmp_path / "var")
    try:
        yield dep
    finally:
        dep.stop()


@pytest.fixture
def running(deployment: Deployment) -> Deployment:
    deployment.start_broker()
    return deployment
