"""The consent decision and its prompt, without I/O (fake clock)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.consent import (
    ConsentRequest,
    Decision,
    allowed,
    decide,
    parse_max_rights,
    prompt_lines,
    remaining,
)
from broker.wire.codes import upgrade_for
from broker.wire.text import printable


def request(wants: tuple[str, ...] = ("view", "control"), **override: str) -> ConsentRequest:
    fields: dict[str, Any] = dict(
        session="s-1",
        engineer_login="alice",
        engineer_display="Alice Example",
        engineer_role="engineer",
        key_fingerprint="SHA256:AbCdEf",
        sas="7F3A-91C2",
    )
    fields.update(override)
    return ConsentRequest(wants=wants, **fields)


FULL = request()
VIEW = request(("view",))
BOTH = Decision("granted", ("view", "control"))
VIEW_ONLY = Decision("granted", ("view",))


@pytest.mark.parametrize("key", ["c", "C"])
def test_c_grants_control_when_asked_and_allowed(key: str) -> None:
    assert decide(key, FULL, "control") == BOTH


def test_c_does_nothing_when_not_asked() -> None:
    assert decide("c", VIEW, "control") is None


def test_c_does_nothing_when_agent_allows_view_only() -> None:
    assert decide("c", FULL, "view") is None
    assert decide("C", FULL, "view") is None


@pytest.mark.parametrize("key", ["v", "V"])
@pytest.mark.parametrize("max_rights", ["view", "control"])
def test_v_grants_view(key: str, max_rights: str) -> None:
    assert decide(key, FULL, max_rights) == VIEW_ONLY
    assert decide(key, VIEW, max_rights) == VIEW_ONLY


@pytest.mark.parametrize("key", ["n", "N", "\r", "\n"])
def test_deny(key: str) -> None:
    result = decide(key, FULL, "control")
    assert result is not None
    assert result.decision == "denied"
    assert result.granted == ()


@pytest.mark.parametrize("key", ["", "y", "Y", "x", " ", "q", "\x1b", "\t", "cv", "1", "\x03"])
def test_other_keys_mean_nothing(key: str) -> None:
    assert decide(key, FULL, "control") is None


def test_remaining() -> None:
    assert remaining(started=100.0, now=100.0, timeout=60.0) == 60.0
    assert remaining(started=100.0, now=130.0, timeout=60.0) == 30.0
    assert remaining(started=100.0, now=160.0, timeout=60.0) == 0.0
    assert remaining(started=100.0, now=10_000.0, timeout=60.0) == 0.0
    for now in range(100, 300, 7):
        assert remaining(100.0, float(now), 60.0) >= 0.0


def test_prompt_shows_network_strings_literally() -> None:
    hostile = request(
        engineer_display="Eve\x1b[31m\nAllowed by admin",
        engineer_login="eve\r",
        engineer_role="admin\x1b]0;pwned\x07",
        key_fingerprint="SHA256:\u202eevil",
    )
    lines = prompt_lines(hostile, 30.0, "control")
    for line in lines:
        assert "\x1b" not in line
        assert "\n" not in line and "\r" not in line
        assert "\x07" not in line and "\u202e" not in line
        assert printable(line, max_len=10_000) == line
    text = "\n".join(lines)
    assert "Eve\\x1b[31m\\x0aAllowed by admin" in text
    assert "eve\\x0d" in text
    assert "admin\\x1b]0;pwned\\x07" in text
    assert "SHA256:\\u202eevil" in text


def test_prompt_shows_who_and_what() -> None:
    text = "\n".join(prompt_lines(FULL, 30.0, "control"))
    for part in ("Alice Example", "alice", "engineer", "SHA256:AbCdEf", "7F3A-91C2"):
        assert part in text
    assert "view and control" in text


@pytest.mark.parametrize(("left", "shown"), [(60.0, "60 s"), (41.2, "42 s"), (0.5, "1 s")])
def test_prompt_countdown(left: float, shown: str) -> None:
    assert prompt_lines(FULL, left, "control")[-1].endswith(f"No answer in {shown} means deny.")


def test_prompt_offers_c_only_when_grantable() -> None:
    assert "[c]" in "\n".join(prompt_lines(FULL, 30.0, "control"))
    for req, max_rights in ((VIEW, "control"), (FULL, "view"), (VIEW, "view")):
        text = "\n".join(prompt_lines(req, 30.0, max_rights))
        assert "[c]" not in text
        assert "[v]" in text and "[n/Enter]" in text


def test_prompt_explains_a_view_only_agent() -> None:
    text = "\n".join(prompt_lines(FULL, 30.0, "view"))
    assert "control cannot be granted" in text
    assert "control cannot be granted" not in "\n".join(prompt_lines(VIEW, 30.0, "view"))


# -- an engineer already watching asks for control ---------------------------

UPGRADE = ConsentRequest(
    session="s-1", engineer_login="alice", engineer_display="Alice Example",
    engineer_role="engineer", key_fingerprint="SHA256:AbCdEf", sas="7F3A-91C2",
    wants=("view", "control"), upgrade=True,
)
DENIED = Decision("denied")


@pytest.mark.parametrize("key", ["c", "C"])
def test_upgrade_c_grants_control(key: str) -> None:
    assert decide(key, UPGRADE, "control") == BOTH


@pytest.mark.parametrize("key", ["v", "V", "n", "\r", "\n"])
def test_upgrade_anything_else_that_answers_is_a_no(key: str) -> None:
    assert decide(key, UPGRADE, "control") == DENIED


@pytest.mark.parametrize("key", ["x", " ", "\x1d", "y"])
def test_upgrade_other_keys_mean_nothing(key: str) -> None:
    assert decide(key, UPGRADE, "control") is None


def test_upgrade_cannot_be_granted_on_a_view_only_computer() -> None:
    assert decide("c", UPGRADE, "view") is None
    assert "cannot be granted" in "\n".join(prompt_lines(UPGRADE, 10, "view"))


def test_upgrade_prompt_says_what_changes() -> None:
    text = "\n".join(prompt_lines(UPGRADE, 59.2, "control"))
    assert "now asks for control" in text
    assert "[c] allow control" in text
    assert "keep view only" in text
    assert "No answer in 60 s means no." in text
    assert "Alice Example (alice, engineer)" in text


FILES_LATER = ConsentRequest(
    session="s-1", engineer_login="alice", engineer_display="Alice Example",
    engineer_role="engineer", key_fingerprint="SHA256:AbCdEf", sas="7F3A-91C2",
    wants=("view", "control", "files"), upgrade=True, adds="files",
)


def test_files_asked_later_are_granted_by_f_only_with_what_the_seat_holds() -> None:
    assert decide("f", FILES_LATER, "control,files") == Decision(
        "granted", ("view", "control", "files"))
    assert decide("c", FILES_LATER, "control,files") is None  # not what was asked
    assert decide("v", FILES_LATER, "control,files") == DENIED
    assert decide("f", FILES_LATER, "control") is None  # this computer forbids files


def test_files_asked_later_prompt_says_what_changes() -> None:
    text = "\n".join(prompt_lines(FILES_LATER, 30, "control,files"))
    assert "now asks to copy files" in text
    assert "copy files to and from a folder on this computer" in text
    assert "[f] allow files" in text and "keep view and control" in text
    forbidden = "\n".join(prompt_lines(FILES_LATER, 30, "control"))
    assert "files cannot be granted" in forbidden and "[f]" not in forbidden


def test_upgrade_prompt_shows_network_strings_literally() -> None:
    evil = ConsentRequest(
        session="s-1", engineer_login="a\x1b[2J", engineer_display="\x1b]0;pwned\x07Eve",
        engineer_role="engineer", key_fingerprint="SHA256:x", sas="7F3A-91C2",
        wants=("view", "control"), upgrade=True,
    )
    text = "\n".join(prompt_lines(evil, 10, "control"))
    assert "\x1b" not in text and "\x07" not in text
    assert printable("\x1b]0;pwned\x07Eve") in text


def test_a_second_engineer_is_asked_about_joining_the_running_session() -> None:
    """The prompt names who is already connected, escaped like every name."""
    ask = ConsentRequest(**{**request().__dict__, "engineer_display": "Bob",
                            "joining": ("Alice Example", "Eve\x1b[2J")})
    first = prompt_lines(ask, 60, "control")[0]
    assert first.startswith("Another support engineer asks to join the session already running")
    assert "with Alice Example, Eve" in first and "\x1b" not in first
    assert prompt_lines(FULL, 60, "control")[0] == (
        "A support engineer asks to connect to this computer.")


# -- the files right (issue 12) ---------------------------------------------

ALL = request(("view", "control", "files"))
VIEW_FILES = request(("view", "files"))
EVERYTHING = "view,control,files"


def test_a_grants_everything_asked_and_allowed() -> None:
    assert decide("a", ALL, EVERYTHING) == Decision("granted", ("view", "control", "files"))
    assert decide("A", VIEW_FILES, EVERYTHING) == Decision("granted", ("view", "files"))
    # Never more than the computer allows, nor more than was asked.
    assert decide("a", ALL, "view,files") == Decision("granted", ("view", "files"))
    assert decide("a", FULL, EVERYTHING) == BOTH
    assert decide("a", VIEW, EVERYTHING) is None
    assert decide("a", ALL, "view") is None


def test_c_grants_view_and_control_without_files() -> None:
    assert decide("c", ALL, EVERYTHING) == BOTH
    assert decide("c", VIEW_FILES, EVERYTHING) is None
    assert decide("v", ALL, EVERYTHING) == VIEW_ONLY
    assert decide("n", ALL, EVERYTHING) == Decision("denied")
    assert decide("\r", ALL, EVERYTHING) == Decision("denied")


def test_files_named_in_words_on_its_own_line() -> None:
    lines = prompt_lines(ALL, 30.0, EVERYTHING)
    files = [line for line in lines if line.lstrip().startswith("Files:")]
    assert files == ["  Files:     copy files to and from a folder on this computer "
                     "(you see each one)"]
    text = "\n".join(lines)
    assert "[a] allow all of this" in text and "[c] allow view and control (no files)" in text
    assert "[v] view only" in text and "[n/Enter] deny" in text
    assert "Files:" not in "\n".join(prompt_lines(FULL, 30.0, EVERYTHING))


def test_a_not_offered_for_view_and_control_only() -> None:
    text = "\n".join(prompt_lines(FULL, 30.0, EVERYTHING))
    assert "[a]" not in text and "[c] allow view and control" in text


def test_prompt_says_when_files_are_not_allowed() -> None:
    text = "\n".join(prompt_lines(ALL, 30.0, "view,control"))
    assert "does not allow copying files" in text
    assert "[a]" not in text and "[c]" in text
    text = "\n".join(prompt_lines(VIEW_FILES, 30.0, "view,control"))
    assert "does not allow copying files" in text and "[a]" not in text


def test_view_and_files_without_control() -> None:
    text = "\n".join(prompt_lines(VIEW_FILES, 30.0, EVERYTHING))
    assert "[a] allow all of this" in text and "[c]" not in text


def test_upgrade_keeps_files_the_seat_holds() -> None:
    held = request(("view", "control", "files"), upgrade=True)  # type: ignore[arg-type]
    assert decide("c", held, EVERYTHING) == Decision("granted", ("view", "control", "files"))
    assert decide("a", held, EVERYTHING) is None
    assert decide("v", held, EVERYTHING) == Decision("denied")
    assert "keep view and files" in "\n".join(prompt_lines(held, 10.0, EVERYTHING))


@pytest.mark.parametrize(("text", "rights"), [
    ("view", ("view",)), ("control", ("view", "control")), ("view,control", ("view", "control")),
    ("view,files", ("view", "files")), ("view,control,files", ("view", "control", "files")),
    ("files", ("view", "files")),
])
def test_max_rights_parses_a_comma_list(text: str, rights: tuple[str, ...]) -> None:
    assert parse_max_rights(text) == rights
    assert allowed(text) == rights


@pytest.mark.parametrize("text", ["", "all", "view,admin", "view;files", "VIEW"])
def test_max_rights_refuses_unknown_names(text: str) -> None:
    assert parse_max_rights(text) is None


def test_upgrade_asks_for_the_files_the_seat_holds() -> None:
    assert upgrade_for(["view"]) == ("view", "control")
    assert upgrade_for(["view", "files"]) == ("view", "control", "files")
