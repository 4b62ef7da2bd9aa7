"""Join codes: parsing as people type them, formatting, secrets, passwords."""

from __future__ import annotations

import pytest

from broker.wire.code import JoinCode, draw_secret, parse_code
from broker.wire.errors import CodeError
from broker.wire.limits import MAX_NAMEPLATE_DIGITS, SECRET_DIGITS


@pytest.mark.parametrize(
    ("text", "nameplate", "secret"),
    [
        ("482-193-775", "482", "193775"),
        ("482193775", "482", "193775"),
        (" 4821-193-775 ", "4821", "193775"),
        ("482 193 775", "482", "193775"),
        ("482\t193-775", "482", "193775"),
        ("1-000-000", "1", "000000"),
        ("12345678-123-456", "12345678", "123456"),
    ],
)
def test_parse_accepts(text: str, nameplate: str, secret: str) -> None:
    assert parse_code(text) == JoinCode(nameplate, secret)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "---",
        "482-193-77a",
        "abc-def-ghi",
        "482-193-775x",
        "12345",  # no room for a nameplate
        "193-775",  # a secret alone
        "082-193-775",  # leading zero
        "0-193-775",
        "123456789-123-456",  # nameplate of 9 digits
        "٤٨٢-١٩٣-٧٧٥",  # Arabic-Indic digits
        "４８２-１９３-７７５",  # full-width digits
        "482_193_775",
        "482.193.775",
        "482-193-775\n",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(CodeError):
        parse_code(text)


def test_str_formats_and_round_trips() -> None:
    assert str(JoinCode("482", "193775")) == "482-193-775"
    assert str(JoinCode("4821", "000123")) == "4821-000-123"
    for n in range(1, MAX_NAMEPLATE_DIGITS + 1):
        code = JoinCode("9" * n, "012345")
        assert parse_code(str(code)) == code


def test_draw_secret() -> None:
    draws = [draw_secret() for _ in range(300)]
    for s in draws:
        assert len(s) == SECRET_DIGITS == 6
        assert s.isascii() and s.isdigit()
    assert len(set(draws)) > 250  # random, not a constant or a counter


def test_password_binds_nameplate_and_secret() -> None:
    code = parse_code("482-193-775")
    assert code.password == JoinCode("482", "193775").password
    assert code.password != JoinCode("483", "193775").password
    assert code.password != JoinCode("482", "193776").password
    # No ambiguity from moving digits between the halves.
    assert JoinCode("4821", "93775").password != JoinCode("482", "193775").password
    assert b"482" in code.password and b"193775" in code.password
