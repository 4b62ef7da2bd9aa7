"""The engineer's terminal as non-blocking streams: output waits (bounded)
for a slow reader and pauses its producer, failures are reported once, and
flags are put back for the shell that started us."""

from __future__ import annotations

import asyncio
import errno
import os

from broker.client.terminal_io import (
    OUTPUT_HIGH_WATER,
    TerminalFailed,
    TerminalInput,
    TerminalOutput,
    set_nonblocking,
)


async def test_output_to_a_slow_reader_pauses_the_producer_and_arrives_whole() -> None:
    read_end, write_end = os.pipe()
    restore = set_nonblocking(write_end)
    events: list[str] = []
    errors: list[TerminalFailed] = []
    out = TerminalOutput(write_end, on_pause=lambda: events.append("pause"),
                         on_resume=lambda: events.append("resume"), on_error=errors.append)
    data = os.urandom(3 * OUTPUT_HIGH_WATER)
    try:
        out.write(data)  # far more than the pipe holds: never raises, never blocks
        assert events == ["pause"]
        assert out.buffered > 0
        received = bytearray()
        os.set_blocking(read_end, False)
        while len(received) < len(data):
            try:
                received += os.read(read_end, 65536)
            except BlockingIOError:
                await asyncio.sleep(0.001)  # the loop flushes as the pipe drains
        assert bytes(received) == data
        assert events == ["pause", "resume"]
        assert not errors
    finally:
        out.close()
        restore()
        os.close(read_end)
        os.close(write_end)


async def test_a_closed_reader_is_one_error_and_later_writes_are_dropped() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    errors: list[TerminalFailed] = []
    out = TerminalOutput(write_end, on_pause=lambda: None, on_resume=lambda: None,
                         on_error=errors.append)
    try:
        out.write(b"hello")
        out.write(b"again")
        assert [e.errno for e in errors] == [errno.EPIPE]
        assert out.buffered == 0
    finally:
        out.close()
        os.close(write_end)


async def test_input_pauses_and_stops_at_the_end_of_a_file() -> None:
    read_end, write_end = os.pipe()
    got: list[bytes] = []
    errors: list[TerminalFailed] = []
    keys = TerminalInput(read_end, on_data=got.append, on_error=errors.append)
    try:
        keys.start()
        keys.pause()
        os.write(write_end, b"typed while paused")
        await asyncio.sleep(0.05)
        assert got == []
        keys.resume()
        os.close(write_end)
        write_end = -1
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert b"".join(got) == b"typed while paused"
        assert errors == []  # the end of a pipe is no terminal failure
    finally:
        keys.close()
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_flags_are_put_back() -> None:
    read_end, write_end = os.pipe()
    try:
        assert os.get_blocking(write_end)
        restore = set_nonblocking(write_end, write_end)
        assert not os.get_blocking(write_end)
        restore()
        assert os.get_blocking(write_end)
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_input_from_a_regular_file_is_read_whole_without_a_watch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`< commands.txt`: the loop cannot watch a regular file (epoll refuses
    it); it is read a chunk per turn until its end, pausing like a terminal."""
    script = tmp_path / "commands.txt"
    data = b"echo one\r" * 20000  # several chunks
    script.write_bytes(data)
    got = bytearray()
    errors: list[TerminalFailed] = []
    with script.open("rb") as f:
        keys = TerminalInput(f.fileno(), on_data=got.extend, on_error=errors.append)
        keys.start()
        keys.pause()
        keys.resume()
        for _ in range(200):
            if len(got) >= len(data):
                break
            await asyncio.sleep(0.005)
        keys.close()
    assert bytes(got) == data
    assert errors == []
