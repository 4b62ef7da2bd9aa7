"""Error codes, end reasons and rights are defined once (broker/wire/codes.py).

A static scan of the sources: every code literal given to a ProtocolError or
a Refuse, every `code=`/`reason=` literal and every literal end reason
compared against or stored as a "reason" is a member of its enum, so a
typo there fails here rather than silently mismatching on the wire.
"""

from __future__ import annotations

import ast
from pathlib import Path

from broker.wire.codes import RIGHTS, UPGRADE, EndReason, ErrorCode, Right
from broker.wire.machine.reasons import END_MESSAGES

ROOT = Path(__file__).resolve().parent.parent.parent
SOURCES = sorted(p for d in ("broker", "agent", "console") for p in (ROOT / d).rglob("*.py"))
# Reasons that are the client's own, never sent on the wire.
LOCAL_REASONS = {"closed", "broker_lost"}


def _name(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(
        func, ast.Attribute) else ""


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _scan(files: list[tuple[str, str]] | None = None
          ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    codes: list[tuple[str, str]] = []
    reasons: list[tuple[str, str]] = []
    if files is None:
        files = [(str(path.relative_to(ROOT)), path.read_text()) for path in SOURCES]
    for where, text in files:
        for node in ast.walk(ast.parse(text, where)):
            if isinstance(node, ast.Call):
                name = _name(node)
                if name in ("ProtocolError", "Refuse", "refuse") and len(node.args) >= 2:
                    if (code := _literal(node.args[1])) is not None:
                        codes.append((where, code))
                for kw in node.keywords:
                    if kw.arg == "code" and (code := _literal(kw.value)) is not None:
                        codes.append((where, code))
                    if kw.arg == "reason" and (reason := _literal(kw.value)) is not None:
                        reasons.append((where, reason))
                # Whichever argument is the reason (Close(to, reason),
                # _depart(seat, reason, now)), it is the only string literal.
                if name in ("_end", "_depart", "_end_everything", "withdraw", "Close", "Ended"):
                    reasons += [(where, r) for arg in node.args if (r := _literal(arg))]
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if _literal(key) == "reason" and (reason := _literal(value)) is not None:
                        reasons.append((where, reason))
            elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Subscript) \
                    and _literal(node.left.slice) == "reason":
                reasons += [(where, r) for c in node.comparators if (r := _literal(c))]
    return codes, reasons


def test_the_scan_finds_the_literals_it_looks_for() -> None:
    # A scan that finds nothing proves nothing (the sources now use the
    # enums, so few literals are left): each form it must catch, typos included.
    snippet = """
raise ProtocolError("no", "unknwn_code")
Refuse(console, "sesion_full", text)
encode("error", code="bad_jsn", message="m")
self._end("idle_timout", now)
self._depart(seat, "agent_lots", now)
Close(conn, "consle_lost")
await self._end(active, "shell_exitd")
send("end", reason="engineer_lft")
{"reason": "denid"}
ended["reason"] == "broker_shutdwn"
"""
    codes, reasons = _scan([("snippet.py", snippet)])
    assert [c for _, c in codes] == ["unknwn_code", "sesion_full", "bad_jsn"]
    assert sorted(r for _, r in reasons) == sorted(
        ["idle_timout", "agent_lots", "consle_lost", "shell_exitd", "engineer_lft", "denid",
         "broker_shutdwn"])
    assert not {c for _, c in codes} & set(ErrorCode)
    assert not {r for _, r in reasons} & set(EndReason)


def test_every_code_literal_is_an_error_code() -> None:
    codes, _ = _scan()
    strays = [(where, code) for where, code in codes if code not in set(ErrorCode)]
    assert strays == []


def test_every_end_reason_literal_is_an_end_reason() -> None:
    _, reasons = _scan()
    known = set(EndReason) | set(ErrorCode) | LOCAL_REASONS  # a join refusal's reason is its code
    strays = [(where, reason) for where, reason in reasons if reason not in known]
    assert strays == []


def test_every_end_reason_has_its_wording_and_no_more() -> None:
    assert set(END_MESSAGES) == set(EndReason)
    assert all(isinstance(reason, EndReason) for reason in END_MESSAGES)


def test_values_are_unique_and_equal_their_wire_strings() -> None:
    for enum in (ErrorCode, EndReason, Right):
        values = [member.value for member in enum]
        assert len(values) == len(set(values))
        assert all(member == member.value for member in enum)
    assert RIGHTS == ("view", "control", "files") and UPGRADE == ("view", "control")
