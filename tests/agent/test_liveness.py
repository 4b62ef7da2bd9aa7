"""The input guard with a fake clock: input passes while the loop is
healthy; after a stall it waits for the broker's answer and runs only on
`live`, is discarded (and counted) otherwise, and is held only so far."""

from __future__ import annotations

import asyncio

from agent.liveness import MAX_HELD_INPUT, STALL_AFTER, Heartbeat, InputGuard


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _guard(answer: asyncio.Future[bool]) -> tuple[Clock, InputGuard, bytearray, list[int]]:
    clock = Clock()
    discarded: list[int] = []

    async def confirm() -> bool:
        return await answer

    guard = InputGuard(Heartbeat(clock), confirm, discarded.append)
    return clock, guard, bytearray(), discarded


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_input_passes_while_the_loop_is_healthy() -> None:
    clock, guard, shell, _ = _guard(asyncio.get_running_loop().create_future())
    clock.now += STALL_AFTER / 2
    assert guard.admit(b"ls\r", shell.extend, lambda: True)


async def test_after_a_stall_input_waits_and_runs_on_live() -> None:
    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    clock, guard, shell, discarded = _guard(answer)
    clock.now += STALL_AFTER + 50  # the process was stopped
    assert not guard.admit(b"touch x\r", shell.extend, lambda: True)
    assert not guard.admit(b"more", shell.extend, lambda: True)
    await _settle()
    assert shell == b""
    answer.set_result(True)
    await _settle()
    assert shell == b"touch x\rmore" and discarded == []
    assert guard.admit(b"next", shell.extend, lambda: True)  # confirmed: straight through


async def test_after_a_stall_input_is_discarded_unless_confirmed() -> None:
    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    clock, guard, shell, discarded = _guard(answer)
    clock.now += STALL_AFTER + 50
    guard.admit(b"x" * (MAX_HELD_INPUT + 10), shell.extend, lambda: True)
    assert discarded == [10]  # beyond the bound at once
    answer.set_result(False)  # the session had ended
    await _settle()
    assert shell == b"" and discarded == [10, MAX_HELD_INPUT]
