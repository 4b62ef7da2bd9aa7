"""Join codes: parsing as people type them, formatting, secrets, passwords."""

from __future__ import annotations

import pytest

from broker.pairing import NameplateBook
from broker.wire.code import JoinCode, draw_secret, parse_code
from broker.wire.errors import CodeError
from broker.wire.limits import MAX_NAMEPLATE_DIGITS, MIN_NAMEPLATE_DIGITS, SECRET_DIGITS


@pytest.mark.parametrize(
    ("text", "nameplate", "secret"),
    [
        ("4821-193-775", "4821", "193775"),
        ("4821193775", "4821", "193775"),
        (" 4821-193-775 ", "4821", "193775"),
        ("4821 193 775", "4821", "193775"),
        ("4821\t193-775", "4821", "193775"),
        ("4821-193775", "4821", "193775"),
        ("4821 - 193 - 775", "4821", "193775"),
        ("1000-000-000", "1000", "000000"),
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
        "4821-193-77a",
        "abc-def-ghi",
        "4821-193-775x",
        "12345",  # no room for a nameplate
        "193-775",  # a secret alone
        "0821-193-775",  # leading zero
        "0-193-775",
        "482-193-775",  # a nameplate shorter than the broker ever draws
        "482193775",
        "123456789-123-456",  # nameplate of 9 digits
        "٤٨٢-١٩٣-٧٧٥",  # Arabic-Indic digits
        "４８２-１９３-７７５",  # full-width digits
        "4821_193_775",
        "4821.193.775",
        "4821-193-775\n",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(CodeError):
        parse_code(text)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        # The report of issue 10: a digit missing from the secret must not
        # move the nameplate boundary ("58" sent to the broker).
        ("581-128-45", "5 secret digits after 581; a code has 6"),
        ("5812-128-45", "5 secret digits after 5812; a code has 6"),
        ("5812-128-4567", "7 secret digits after 5812; a code has 6"),
        ("5812-12845", "5 secret digits after 5812; a code has 6"),
        ("58112845", "8 digits: a code has a nameplate of 4 to 8 digits and 6 secret digits"),
        ("581-128-456", "the first group, 581, has 3 digits; it has 4 to 8"),
        ("123456789-123-456", "the first group, 123456789, has 9 digits; it has 4 to 8"),
        ("4821", "4 digits: a code has a nameplate of 4 to 8 digits and 6 secret digits"),
    ],
)
def test_parse_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(CodeError) as caught:
        parse_code(text)
    assert says in str(caught.value)
    assert "like 4821-193-775" in str(caught.value)


def test_the_shortest_nameplate_accepted_is_the_shortest_the_broker_draws() -> None:
    book = NameplateBook()
    assert len(book.allocate("agent-1", now=0.0).value) == MIN_NAMEPLATE_DIGITS == 4


def test_str_formats_and_round_trips() -> None:
    assert str(JoinCode("4821", "193775")) == "4821-193-775"
    assert str(JoinCode("4821", "000123")) == "4821-000-123"
    for n in range(MIN_NAMEPLATE_DIGITS, MAX_NAMEPLATE_DIGITS + 1):
        code = JoinCode("9" * n, "012345")
        assert parse_code(str(code)) == code


def test_draw_secret() -> None:
    draws = [draw_secret() for _ in range(300)]
    for s in draws:
        assert len(s) == SECRET_DIGITS == 6
        assert s.isascii() and s.isdigit()
    assert len(set(draws)) > 250  # random, not a constant or a counter


def test_password_binds_nameplate_and_secret() -> None:
    code = parse_code("4821-193-775")
    assert code.password == JoinCode("4821", "193775").password
    assert code.password != JoinCode("4831", "193775").password
    assert code.password != JoinCode("4821", "193776").password
    # No ambiguity from moving digits between the halves.
    assert JoinCode("4821", "93775").password != JoinCode("482", "193775").password
    assert b"4821" in code.password and b"193775" in code.password
