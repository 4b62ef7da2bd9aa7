"""The chat line's framing and rules, without I/O."""

from __future__ import annotations

import pytest

from broker.wire.chat import (
    MAX_CHAT_CHARS,
    MAX_CHAT_FRAME,
    ChatDecoder,
    ChatFrameError,
    ChatLine,
    ChatRate,
    clean_text,
    decode_line,
    decode_say,
    encode_line,
    encode_say,
)


def test_a_line_round_trips_and_the_agent_names_the_sender() -> None:
    frame = encode_line(ChatLine("Alice Example", "engineer", "sending the patch now"))
    [only] = ChatDecoder().feed(frame)
    assert decode_line(only) == ChatLine("Alice Example", "engineer", "sending the patch now")
    assert decode_say(ChatDecoder().feed(encode_say("hello"))[0]) == "hello"


def test_text_is_one_printable_line_and_bounded() -> None:
    assert clean_text("two\nlines\tand\r\n  spaces ") == "two lines and spaces"
    assert clean_text("\x1b]0;owned\x07red\u202eevil") == "]0;ownedredevil"
    assert clean_text("\x00\x1b") == ""
    assert len(clean_text("x" * 10_000)) == MAX_CHAT_CHARS
    assert clean_text("Grüße, 你好") == "Grüße, 你好"


def test_a_forged_or_hostile_line_from_the_agent_is_cleaned_again() -> None:
    frame = b'{"from":"\\u001b[2Jeve","role":"engineer","text":"hi\\nthere"}'
    assert decode_line(frame) == ChatLine("[2Jeve", "engineer", "hi there")


@pytest.mark.parametrize("frame", [
    b"not json", b"[1,2]", b'{"say": 5}', b"\xff\xfe",
])
def test_what_is_not_a_say_frame_is_refused(frame: bytes) -> None:
    with pytest.raises(ChatFrameError):
        decode_say(frame)


@pytest.mark.parametrize("frame", [
    b'{"from":"a","role":"admin","text":"x"}', b'{"from":"a","role":"engineer"}',
])
def test_what_is_not_a_chat_line_is_refused(frame: bytes) -> None:
    with pytest.raises(ChatFrameError):
        decode_line(frame)


def test_frames_split_anywhere_come_out_whole() -> None:
    data = encode_say("one") + encode_say("two") + b"\n"
    decoder = ChatDecoder()
    frames = [f for i in range(len(data)) for f in decoder.feed(data[i:i + 1])]
    assert [decode_say(f) for f in frames] == ["one", "two"]


def test_the_longest_line_fits_a_frame_and_a_longer_frame_ends_the_channel() -> None:
    worst = encode_line(ChatLine("\u00e9" * 200, "engineer", "\u2028\u00e9" * MAX_CHAT_CHARS))
    assert len(worst) <= MAX_CHAT_FRAME
    with pytest.raises(ChatFrameError):
        ChatDecoder().feed(b"x" * (MAX_CHAT_FRAME + 1))  # no newline ever comes
    with pytest.raises(ChatFrameError):
        ChatDecoder().feed(b"x" * (MAX_CHAT_FRAME + 1) + b"\n")


def test_the_rate_allows_a_burst_then_one_a_second() -> None:
    rate = ChatRate(per_second=1.0, burst=3)
    assert [rate.allow(100.0) for _ in range(4)] == [True, True, True, False]
    assert not rate.allow(100.5)
    assert rate.allow(101.6)
    assert rate.allow(200.0) and rate.allow(200.0) and rate.allow(200.0)
    assert not rate.allow(200.0)
