"""The PTY shell driver: a real shell in a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import os

from agent.pty import PtyShell


async def run_shell(argv: list[str], *, pause_first: float = 0.0,
                    before_start: bytes = b"") -> tuple[bytes, int]:
    output = bytearray()
    # What had been delivered when the exit was reported: nothing may come after.
    done: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
    shell = PtyShell(argv, cols=80, rows=24, env=dict(os.environ), on_output=output.extend,
                     on_exit=lambda status: done.set_result((status, bytes(output))))
    if before_start:
        shell.write(before_start)
    await shell.start()
    if pause_first:
        shell.pause_reading()  # as SSH flow control does when the engineer lags
        await asyncio.sleep(pause_first)
        shell.resume_reading()
    status, delivered = await asyncio.wait_for(done, 10)
    shell.close()
    return delivered, status


async def test_output_buffered_when_the_shell_exits_is_not_lost() -> None:
    out, status = await run_shell(["/bin/sh", "-c", "echo TAIL-MARK; exit 3"], pause_first=0.5)
    assert b"TAIL-MARK" in out
    assert status == 3


async def test_typeahead_before_start_reaches_the_shell() -> None:
    out, _status = await run_shell(["/bin/sh"], before_start=b"echo EARLY-$((20+1)); exit\r")
    assert b"EARLY-21" in out


async def test_output_that_piled_up_leaves_in_large_chunks_and_whole() -> None:
    """A terminal read gives at most ~4 KiB; output already waiting is read on
    and delivered as one chunk, so bulk output is not cut into slivers."""
    chunks: list[bytes] = []
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    shell = PtyShell(["/bin/sh", "-c", "stty raw -echo; head -c 30000 /dev/zero | tr '\\0' x"],
                     cols=80, rows=24, env=dict(os.environ), on_output=chunks.append,
                     on_exit=done.set_result)
    await shell.start()
    shell.pause_reading()
    await asyncio.sleep(0.5)  # the whole output waits in the terminal
    shell.resume_reading()
    await asyncio.wait_for(done, 10)
    shell.close()
    assert b"".join(chunks).count(b"x") == 30000
    assert max(len(chunk) for chunk in chunks) > 8192


async def test_a_resize_while_the_shell_starts_is_the_size_it_gets() -> None:
    """The engineer's window settles while the shell is being spawned: that
    size, not the first one, is what `stty size` must report."""
    output = bytearray()
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    shell = PtyShell(["/bin/sh"], cols=80, rows=24, env=dict(os.environ),
                     on_output=output.extend, on_exit=done.set_result)
    starting = asyncio.create_task(shell.start())
    await asyncio.sleep(0)  # start() is now spawning the process
    shell.resize(100, 30)
    await starting
    shell.write(b"stty size; exit\r")
    await asyncio.wait_for(done, 10)
    shell.close()
    assert b"30 100" in output, bytes(output)
