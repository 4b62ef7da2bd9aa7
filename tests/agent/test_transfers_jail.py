"""The engineer's SFTP view as pure decisions: traversal, names, limits."""

from __future__ import annotations

import pytest
from asyncssh import FX_FAILURE, FX_PERMISSION_DENIED

from agent.transfers.jail import (
    CONTROL_CHARACTERS,
    INCOMING,
    LEAVES_FOLDER,
    NO_EXEC,
    NOT_UTF8,
    SHARED,
    Limits,
    Refusal,
    check_permissions,
    check_size,
    locate,
    writable,
)


def test_paths_stay_inside_the_view() -> None:
    assert locate(b"report.pdf", shared=False).virtual == "/report.pdf"
    assert locate(b"/a/./b/../c", shared=False).parts == ("a", "c")
    # An absolute path is a name inside the folder, never the customer's disk.
    assert locate(b"/etc/passwd", shared=False).parts == ("etc", "passwd")
    for escape in (b"..", b"../x", b"/../../etc/passwd", b"a/../../b"):
        with pytest.raises(Refusal) as refused:
            locate(escape, shared=False)
        assert (refused.value.code, refused.value.text) == (FX_PERMISSION_DENIED, LEAVES_FOLDER)


def test_shared_is_its_own_read_only_area_only_when_given() -> None:
    place = locate(b"/shared/app.log", shared=True)
    assert (place.area, place.parts, place.virtual) == (SHARED, ("app.log",), "/shared/app.log")
    with pytest.raises(Refusal):
        writable(place)
    assert locate(b"/shared/app.log", shared=False).area == INCOMING


@pytest.mark.parametrize("name", ["a\x1b[31mb", "new\nline", "bidi\u202e", "nul\x00"])
def test_names_with_control_characters_are_refused(name: str) -> None:
    with pytest.raises(Refusal) as refused:
        locate(name.encode(), shared=False)
    assert refused.value.text == CONTROL_CHARACTERS


def test_invalid_utf8_and_overlong_names_are_refused() -> None:
    with pytest.raises(Refusal) as refused:
        locate(b"caf\xe9", shared=False)
    assert refused.value.text == NOT_UTF8
    with pytest.raises(Refusal):
        locate(b"x" * 256, shared=False)


def test_never_executable_and_limits() -> None:
    check_permissions(0o644)
    check_permissions(None)
    with pytest.raises(Refusal) as refused:
        check_permissions(0o755)
    assert refused.value.text == NO_EXEC
    limits = Limits(max_file_bytes=100, max_session_bytes=150)
    check_size(100, 150, limits)
    with pytest.raises(Refusal) as refused:
        check_size(101, 101, limits)
    assert refused.value.code == FX_FAILURE and "per file" in refused.value.text
    with pytest.raises(Refusal) as refused:
        check_size(10, 151, limits)
    assert "per session" in refused.value.text
