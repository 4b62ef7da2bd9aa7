"""bench/profile.py's reading of py-spy's raw (collapsed) stacks: the
innermost frame is charged, line numbers are folded into the function, and
each frame is put in its library by path."""

from __future__ import annotations

import dataclasses

from bench.profile import library_of, parse_collapsed, report

SITE = "/venv/lib/python3.11/site-packages"
RAW = [  # as `py-spy record --format raw` writes them: outermost frame first
    f"<module> (/src/broker/__main__.py:3);run ({SITE}/asyncio/base_events.py:603);"
    f"recv ({SITE}/websockets/protocol.py:254) 30",
    f"<module> (/src/broker/__main__.py:3);recv ({SITE}/websockets/protocol.py:260) 10",
    "<module> (/src/broker/__main__.py:3);relay (/src/broker/relay.py:40) 5",
    "not a sample line",
    "",
]


def test_the_innermost_frame_is_charged_and_lines_fold_into_functions() -> None:
    profile = parse_collapsed(RAW, "broker")
    assert profile.samples == 45
    assert profile.functions[f"recv ({SITE}/websockets/protocol.py)"] == 40
    assert profile.functions["relay (/src/broker/relay.py)"] == 5
    assert profile.libraries == {"websockets": 40, library_of("x (broker/relay.py:1)"): 5}
    assert library_of("x (broker/relay.py:1)").startswith("consentry: broker/")


def test_frames_are_put_in_their_library_by_path() -> None:
    # py-spy shortens paths to the package
    assert library_of("send_packet (asyncssh/connection.py:9)") == "asyncssh"
    assert library_of("write (ssl.py:9)").startswith("ssl")
    assert library_of("run (agent/sshd.py:3)") == "consentry agent"
    assert library_of("Runner.run (asyncio/runners.py:118)").startswith("the event loop in C")
    assert library_of("sleep (asyncio/tasks.py:639)") == "asyncio"
    assert library_of("<module> (selectors.py:1)").startswith("other")


def test_the_report_names_each_process_with_its_shares() -> None:
    profile = dataclasses.replace(parse_collapsed(RAW, "broker"), cpu_seconds=0.03)
    text = report([profile], strokes=100, seconds=1.0)
    assert "## broker: 45 samples; 300 us of CPU per round trip" in text
    assert "| websockets | 89% |" in text
    assert f"`recv ({SITE}/websockets/protocol.py)` | 88.9%" in text
