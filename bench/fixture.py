"""A throwaway deployment for the harness: dev PKI, registry, broker process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from broker.certs import PkiPaths, init_dev_pki
from broker.registry import Registry

BIN = Path(sys.executable).parent
LISTEN_RE = re.compile(r"listening on wss://127\.0\.0\.1:(\d+)")


@dataclass
class Deployment:
    root: Path
    pki: PkiPaths
    data_dir: Path
    key_path: Path
    user: str = "bench"
    broker: subprocess.Popen[bytes] | None = None
    port: int = 0
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def create(cls) -> Deployment:
        import datetime as dt

        root = Path(tempfile.mkdtemp(prefix="consentry-bench-"))
        pki = init_dev_pki(root / "certs")
        key = asyncssh.generate_private_key("ssh-ed25519")
        key_path = root / "bench_ed25519"
        key.write_private_key(str(key_path))
        key.write_public_key(f"{key_path}.pub")
        os.chmod(key_path, 0o600)
        data = root / "var"
        Registry(data / "registry.db").add(
            "bench", key.export_public_key().decode(), role="admin", display="Bench",
            now=dt.datetime.now(dt.UTC))
        return cls(root=root, pki=pki, data_dir=data, key_path=key_path)

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    def start_broker(self, *extra_args: str, listen: str = "127.0.0.1:0") -> None:
        log = (self.root / "broker.out").open("wb")
        self.broker = subprocess.Popen(
            [str(BIN / "consentry-broker"), "serve", "--listen", listen,
             "--data-dir", str(self.data_dir), "--cert", str(self.pki.cert),
             "--key", str(self.pki.key), *extra_args],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = (self.root / "broker.out").read_text(errors="replace")
            if match := LISTEN_RE.search(text):
                self.port = int(match.group(1))
                return
            if self.broker.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("broker did not start:\n" + (self.root / "broker.out").read_text())

    def stop(self) -> None:
        for proc in [*self.extra, self.broker]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
