"""The wire core is I/O-free, the broker never holds the E2E code, and the
client end of a broker link (broker/client) and the broker's server keep
apart: neither imports the other.

Checked in fresh interpreters, so what the test process already imported
does not hide a leak.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROKER = ROOT / "broker"

WIRE_MODULES = [
    "broker.wire.messages",
    "broker.wire.machine.protocol",
    "broker.wire.machine.session",
    "broker.wire.machine.actions",
    "broker.wire.machine.consent",
    "broker.wire.machine.reasons",
    "broker.wire.machine.lobby",
    "broker.wire.machine.participants",
    "broker.wire.machine.handshake",
    "broker.wire.code",
    "broker.wire.codes",
    "broker.wire.e2e",
    "broker.wire.receipt",
    "broker.wire.text",
    "broker.wire.limits",
    "broker.wire.login",
    "broker.wire.resume",
]

FORBIDDEN_IN_WIRE = [
    "websockets",
    "aiosqlite",
    "asyncssh",
    "sqlite3",
    "broker.server",
    "broker.session",
    "broker.audit",
    "broker.registry",
    "broker.relay",
    "ssl",
    "socket",
]


def loaded_after(imports: list[str], names: list[str]) -> list[str]:
    """Import `imports` in a fresh interpreter; return which `names` got loaded."""
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in imports)
        + f"print('\\n'.join(n for n in {names!r} if n in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_probe_sees_what_is_loaded() -> None:
    # Without this, a broken probe would make the real checks pass vacuously.
    assert loaded_after(["json"], ["json", "sqlite3"]) == ["json"]
    assert "asyncssh" in loaded_after(["broker.auth"], ["asyncssh"])


def test_wire_core_is_io_free() -> None:
    assert loaded_after(WIRE_MODULES, FORBIDDEN_IN_WIRE) == []


# The protocol core does no I/O and keeps no clock or log of its own: time
# comes in as `now`, and what to log or write goes out as actions. These are
# never imported by any module of broker/wire, directly or by a relative name.
NO_IO_IN_WIRE = ("asyncio", "socket", "os", "logging", "pathlib")


def imported_names(source: str, package: str) -> set[str]:
    """Every module `source` (a module of `package`) imports, fully named."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if (name in ("import_module", "__import__") and isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)):
                names.add(arg.value)
    return names


def _io_imports(source: str, package: str) -> set[str]:
    return {n for n in imported_names(source, package)
            if n.split(".")[0] in NO_IO_IN_WIRE}


def test_io_import_checker_sees_every_spelling() -> None:
    assert _io_imports("import os", "broker.wire") == {"os"}
    assert _io_imports("import os.path as p", "broker.wire") == {"os.path"}
    assert _io_imports("from asyncio import sleep", "broker.wire") >= {"asyncio"}
    assert _io_imports("def f():\n    import logging\n", "broker.wire") == {"logging"}
    assert _io_imports("importlib.import_module('socket')", "broker.wire") == {"socket"}
    assert _io_imports("from pathlib import Path", "broker.wire.machine") >= {"pathlib"}
    assert _io_imports("from . import limits", "broker.wire") == set()
    assert _io_imports("import osmium, asyncio_free", "broker.wire") == set()


def test_wire_modules_never_import_io() -> None:
    wire = BROKER / "wire"
    checked = []
    for path in sorted(wire.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        assert _io_imports(source, _package_of(path)) == set(), path.relative_to(ROOT)
        checked.append(path.relative_to(wire).as_posix())
    assert {"messages.py", "machine/session.py", "machine/protocol.py"} <= set(checked)


def test_broker_entry_points_do_not_load_e2e() -> None:
    assert loaded_after(["broker.server", "broker.cli"], ["broker.wire.e2e", "spake2"]) == []


def _package_of(path: Path) -> str:
    """The package a module file lives in (for resolving relative imports)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts.pop()  # the module itself, or "__init__" of the package
    return ".".join(parts)


def _is_e2e(name: str) -> bool:
    return name == "broker.wire.e2e" or name.startswith("broker.wire.e2e.")


def imports_e2e(source: str, package: str) -> bool:
    """True if `source`, a module of `package`, imports broker.wire.e2e."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            if any(_is_e2e(a.name) for a in node.names):
                return True
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if _is_e2e(base):
                return True
            if base == "broker.wire" and any(a.name == "e2e" for a in node.names):
                return True
        elif isinstance(node, ast.Call) and node.args:
            # importlib.import_module("broker.wire.e2e") / __import__(...)
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and _is_e2e(arg.value)
            ):
                return True
    return False


def test_static_checker_detects_imports() -> None:
    assert imports_e2e("import broker.wire.e2e", "broker")
    assert imports_e2e("import broker.wire.e2e as e", "broker")
    assert imports_e2e("from broker.wire.e2e import Pairing", "broker")
    assert imports_e2e("from broker.wire import limits, e2e", "broker")
    assert imports_e2e("from broker.wire import e2e as x", "broker.audit")
    assert imports_e2e("from .wire import e2e", "broker")
    assert imports_e2e("from .wire.e2e import Pairing", "broker")
    assert imports_e2e("from ..wire import e2e", "broker.audit")
    assert imports_e2e("from ..wire.e2e import Pairing", "broker.audit")
    assert imports_e2e("def f():\n    from broker.wire import e2e\n", "broker")
    assert imports_e2e("importlib.import_module('broker.wire.e2e')", "broker")
    assert imports_e2e("__import__('broker.wire.e2e')", "broker")
    assert not imports_e2e("from broker.wire import limits, messages", "broker")
    assert not imports_e2e("import broker.wire.errors", "broker")
    assert not imports_e2e("from .wire import text", "broker")
    assert not imports_e2e("from . import e2e", "broker.audit")  # another e2e
    assert not imports_e2e('"""The broker never imports broker.wire.e2e."""', "broker")


def test_package_of() -> None:
    assert _package_of(BROKER / "server.py") == "broker"
    assert _package_of(BROKER / "__init__.py") == "broker"
    assert _package_of(BROKER / "audit" / "store.py") == "broker.audit"
    assert _package_of(BROKER / "audit" / "__init__.py") == "broker.audit"


def test_broker_modules_never_import_e2e() -> None:
    checked = []
    for path in sorted(BROKER.rglob("*.py")):
        rel = path.relative_to(BROKER)
        if rel.parts[0] == "wire":
            continue
        source = path.read_text(encoding="utf-8")
        assert not imports_e2e(source, _package_of(path)), rel
        checked.append(rel.as_posix())
    assert {"server.py", "cli.py", "auth.py", "pairing.py", "audit/store.py",
            "client/link.py"} <= set(checked)


def test_broker_package_init_is_empty() -> None:
    assert (BROKER / "__init__.py").read_text(encoding="utf-8").strip() == ""


# -- the client end of a broker link and the server keep apart -------------

CLIENT = BROKER / "client"
CLIENT_MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts) for p in CLIENT.glob("*.py")
    if p.name != "__init__.py")
# What broker/client may import of the rest of broker: the protocol core,
# and the two modules of plumbing both ends share (the event loop's TLS
# reads, the binary fast path mixin), which hold no server logic.
SHARED_WITH_CLIENT = ("broker.eventloop", "broker.framepath")
# The broker's server side, as a fresh interpreter would load it.
SERVER_MODULES = ["broker.server", "broker.session", "broker.audit", "broker.registry",
                  "broker.admin_api", "broker.listener", "broker.admission",
                  "broker.keepalive", "broker.throttle", "broker.failures", "broker.pairing",
                  "broker.crash_recovery", "broker.cli", "broker.audit_cli", "broker.auth",
                  "broker.config", "websockets.asyncio.server", "aiosqlite", "sqlite3"]


def _client_may_import(name: str) -> bool:
    if name.split(".")[0] != "broker" or name == "broker":
        return True  # the standard library and third parties (checked below when loaded)
    return (name.startswith(("broker.client", "broker.wire"))
            or name in SHARED_WITH_CLIENT
            or name.rsplit(".", 1)[0] in SHARED_WITH_CLIENT)  # from broker.framepath import X


def test_client_package_imports_no_server_module() -> None:
    assert {"broker.client.link", "broker.client.relay",
            "broker.client.handshake"} <= set(CLIENT_MODULES)
    for path in sorted(CLIENT.glob("*.py")):
        names = imported_names(path.read_text(encoding="utf-8"), _package_of(path))
        assert [n for n in names if not _client_may_import(n)] == [], path.relative_to(ROOT)
    assert loaded_after(CLIENT_MODULES, SERVER_MODULES) == []


def test_client_import_rule_sees_a_server_import() -> None:
    names = imported_names("from broker.session import SessionDriver\n"
                           "from ..audit import store\nfrom broker import server",
                           "broker.client")
    assert {"broker.session", "broker.audit", "broker.server"} <= names
    assert not _client_may_import("broker.session")
    assert not _client_may_import("broker.audit.store")
    assert not _client_may_import("broker.server")
    assert _client_may_import("broker.framepath.FramePath")
    assert _client_may_import("broker.wire.messages")


def _client_side(name: str) -> bool:
    return name.startswith(("broker.client", "agent", "console")) and (
        name in ("agent", "console", "broker.client")
        or name.startswith(("broker.client.", "agent.", "console.")))


def test_server_modules_import_nothing_of_the_clients() -> None:
    checked = []
    for path in sorted(BROKER.rglob("*.py")):
        rel = path.relative_to(BROKER)
        if rel.parts[0] == "client":
            continue
        names = imported_names(path.read_text(encoding="utf-8"), _package_of(path))
        assert [n for n in names if _client_side(n)] == [], rel
        checked.append(rel.as_posix())
    assert {"server.py", "session.py", "listener.py", "wire/machine/session.py"} <= set(checked)
    assert loaded_after(["broker.server", "broker.cli", "broker.__main__"],
                        ["broker.client", "broker.client.link", "agent", "console"]) == []


def test_client_side_rule() -> None:
    assert _client_side("broker.client.link") and _client_side("agent.client")
    assert _client_side("console") and _client_side("broker.client")
    assert not _client_side("broker.clients_table") and not _client_side("agentic")
