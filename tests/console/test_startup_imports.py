"""A plain join's start-up: what it imports, and on which thread.

The console opens its connection before it pays for asyncssh and the
pairing (`console.__main__._connected`): those are imported by a worker
thread while the TLS handshake is under way, and Textual and rich (the
TUI's) never. A real `consentry-console join` runs as a subprocess under an
audit hook that notes every import and the thread it ran on; a real socket
on 127.0.0.1 takes its first byte (a TLS ClientHello) and closes. How long
start-up takes is measured by `make bench` ("console start-up"), not here.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from broker.certs import init_dev_pki
from tests.e2e.conftest import write_key

RECORDER = """
import atexit, json, sys, threading
out, argv = sys.argv[1], sys.argv[2:]
imports = []
main = threading.main_thread().ident
def hook(event, args):
    if event == "import":
        imports.append((args[0], threading.get_ident() == main))
sys.addaudithook(hook)
def write():
    with open(out, "w") as f:
        json.dump(imports, f)
atexit.register(write)
sys.argv = ["consentry-console", *argv]
from console.__main__ import main as console_main
raise SystemExit(console_main())
"""

TUI_ONLY = {"textual", "rich", "pyte"}
AFTER_CONNECTING = {"asyncssh", "spake2", "nacl", "cryptography"}


def test_a_plain_join_connects_first_and_never_imports_the_tui(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path / "certs")
    key = write_key(tmp_path / "id_ed25519")
    record = tmp_path / "imports.json"
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(30)
        port = server.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-c", RECORDER, str(record), "join", "4821-193-775",
             "--broker", f"wss://127.0.0.1:{port}", "--ca", str(pki.ca_cert),
             "--identity", str(key), "--user", "alice"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(30)
                first = conn.recv(1)
            _, errors = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait()
    assert first == b"\x16"  # a TLS handshake record: the ClientHello
    text = errors.decode()
    assert "cannot reach the broker" in text and "Traceback" not in text, text

    imports = [(name, on_main) for name, on_main in json.loads(record.read_text())]
    packages = {name.split(".")[0] for name, _ in imports}
    assert not packages & TUI_ONLY, sorted(packages & TUI_ONLY)
    # The heavy parts were loaded (the key was read), all by the worker.
    assert AFTER_CONNECTING <= packages
    on_main = sorted({name.split(".")[0] for name, main in imports if main} & AFTER_CONNECTING)
    assert on_main == [], f"imported before connecting, on the main thread: {on_main}"


def test_a_key_with_a_passphrase_is_read_before_connecting(tmp_path: Path) -> None:
    """Typed while nothing waits: asked for, refused, and no connection made
    (no passphrase can be given here: stdin is not a terminal)."""
    import asyncssh

    path = tmp_path / "id_ed25519"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(
        str(path), passphrase="correct horse")
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.5)
        port = server.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "console", "join", "4821-193-775",
             "--broker", f"wss://127.0.0.1:{port}", "--ca", str(tmp_path / "no-ca.crt"),
             "--identity", str(path), "--user", "alice"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        try:
            server.accept()[0].close()
            connected = True
        except TimeoutError:
            connected = False
    assert result.returncode != 0
    assert "needs its passphrase" in result.stderr.decode(), result.stderr.decode()
    assert not connected
