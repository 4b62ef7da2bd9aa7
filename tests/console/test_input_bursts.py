"""Runs of plain keys from one batch of terminal input become one paste;
typing, control keys and everything else pass through in order."""

from __future__ import annotations

from textual import events

from console.input_bursts import BURST_CHARS, coalesce


def keys(text: str) -> list[events.Key]:
    names = {"\r": "enter", "\t": "tab", "\n": "ctrl+j", " ": "space"}
    return [events.Key(names.get(char, char), char) for char in text]


def describe(messages: list[object]) -> list[str]:
    out = []
    for message in messages:
        if isinstance(message, events.Paste):
            out.append(f"paste:{message.text}")
        elif isinstance(message, events.Key):
            out.append(f"key:{message.key}")
        else:
            out.append(type(message).__name__)
    return out


def test_a_long_run_of_plain_keys_is_one_paste_with_its_line_ends() -> None:
    text = "echo one\r" + "x" * BURST_CHARS + "\tlast\n"
    assert describe(list(coalesce(keys(text)))) == [f"paste:{text}"]


def test_typing_stays_keys() -> None:
    text = "l" * (BURST_CHARS - 1)
    assert describe(list(coalesce(keys(text)))) == [f"key:{k.key}" for k in keys(text)]


def test_other_events_split_runs_and_keep_their_place() -> None:
    run = "a" * BURST_CHARS
    up = events.Key("up", None)
    ctrl_c = events.Key("ctrl+c", "\x03")
    focus = events.Focus()
    batch = [*keys("ls"), up, *keys(run), ctrl_c, *keys(run), focus, *keys("q")]
    assert describe(list(coalesce(batch))) == [
        "key:l", "key:s", "key:up", f"paste:{run}", "key:ctrl+c", f"paste:{run}", "Focus",
        "key:q",
    ]


def test_non_ascii_text_is_pasted_as_it_is() -> None:
    text = "grüße, 日本語 € " * 4
    assert len(text) >= BURST_CHARS
    assert describe(list(coalesce(keys(text)))) == [f"paste:{text}"]
