"""The customer's screen on a real PTY that the test reads only when it
chooses: drawing never blocks the loop, a screen that is behind asks the
shell to wait (a future from `mirror`), and nothing mirrored is lost, not
even what a prompt held back."""

from __future__ import annotations

import asyncio
import os
import pty
from collections.abc import AsyncIterator

import pytest

from agent.consent import ConsentRequest
from agent.screen import MAX_HELD_OUTPUT, CustomerScreen, Viewer
from broker.client.terminal_io import OUTPUT_HIGH_WATER

ASK = ConsentRequest(session="s1", engineer_login="alice", engineer_display="Alice",
                     engineer_role="engineer", key_fingerprint="SHA256:x",
                     wants=("view", "control"), sas="ABCD-EF01", upgrade=True)


@pytest.fixture
async def screen() -> AsyncIterator[tuple[CustomerScreen, int]]:
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    try:
        async with CustomerScreen(slave, slave) as customer:
            customer.session_started("s1", Viewer("Alice", "alice", control=False))
            yield customer, master
            read_all(master)  # let the final drawing out
    finally:
        os.close(master)
        os.close(slave)


def read_all(master: int) -> bytes:
    got = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except BlockingIOError:
            return bytes(got)
        if not chunk:
            return bytes(got)
        got += chunk


async def read_until(master: int, received: bytearray, needle: bytes) -> None:
    async with asyncio.timeout(10):
        while needle not in received:
            received += read_all(master)
            await asyncio.sleep(0.001)


def chunks(count: int) -> list[bytes]:
    """Numbered lines, 64 KiB a chunk, as a busy shell writes them."""
    return [b"".join(b"%02d:%06d\r\n" % (n, i) for i in range(6554))[:65536]
            for n in range(count)]


async def test_a_terminal_nobody_reads_pauses_the_shell_and_gets_everything_later(
    screen: tuple[CustomerScreen, int],
) -> None:
    customer, master = screen
    data = chunks(2 * OUTPUT_HIGH_WATER // 65536 + 2)
    ready = None
    for chunk in data:
        ready = customer.mirror(chunk)  # returns at once, terminal full or not
        if ready is not None:
            break
    assert ready is not None and not ready.done(), "the shell was never asked to wait"
    sent = data[: data.index(chunk) + 1]
    # The loop still runs while the terminal is full: a timer fires on time.
    await asyncio.wait_for(asyncio.sleep(0.05), 1)
    assert not ready.done()
    received = bytearray()
    async with asyncio.timeout(10):
        while not ready.done():
            received += read_all(master)
            await asyncio.sleep(0.001)
    await read_until(master, received, sent[-1][-12:])
    text = bytes(received)
    for chunk in sent:
        assert chunk in text  # in order, whole, the banner at most around it
    assert customer.mirror(b"more\r\n") is None


async def test_output_held_by_a_prompt_waits_rather_than_being_dropped(
    screen: tuple[CustomerScreen, int],
) -> None:
    customer, master = screen
    prompt = asyncio.ensure_future(customer.ask_consent(ASK, 30, "control"))
    received = bytearray()
    await read_until(master, received, b"[c] allow control")
    data = chunks(MAX_HELD_OUTPUT // 65536 + 2)
    ready = None
    for chunk in data:
        ready = customer.mirror(chunk)
        received += read_all(master)  # the customer's terminal keeps up
        if ready is not None:
            break
    assert ready is not None and not ready.done(), "the prompt held output without bound"
    sent = data[: data.index(chunk) + 1]
    assert not any(chunk in bytes(received) for chunk in sent)  # the prompt stays readable
    os.write(master, b"n")
    assert (await asyncio.wait_for(prompt, 5)).decision == "denied"
    async with asyncio.timeout(10):
        while not ready.done():
            received += read_all(master)
            await asyncio.sleep(0.001)
    await read_until(master, received, sent[-1][-12:])
    text = bytes(received)
    assert b"not kept" not in text
    for chunk in sent:
        assert chunk in text
