"""The chat line with real processes: a broker, an agent under a PTY, and
the console library. The engineer's line shows on the customer's screen
with the name the customer approved; the customer answers from the chat
page (Ctrl-] m) and the engineer hears a "customer" line; the broker
relays it all without keeping a word of it, and its audit keeps counts."""

from __future__ import annotations

import asyncio
import secrets

import asyncssh

from broker.wire.chat import CHAT_SUBSYSTEM, ChatDecoder, ChatLine, decode_line, encode_say
from broker.wire.code import parse_code
from console.client import ConsoleClient
from console.identity import load_file_identity
from tests.e2e.conftest import Deployment, read_code
from tests.e2e.test_control import audit_events, expect


async def next_line(reader: asyncssh.SSHReader[bytes], decoder: ChatDecoder,
                    pending: list[ChatLine]) -> ChatLine:
    async with asyncio.timeout(20):
        while not pending:
            data = await reader.read(4096)
            assert data, "the chat channel closed"
            pending += [decode_line(frame) for frame in decoder.feed(data)]
    return pending.pop(0)


async def test_chat_both_ways_and_the_broker_keeps_none_of_it(running: Deployment) -> None:
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk")
    code = read_code(agent)
    client = ConsoleClient(running.url, running.pki.ca_cert,
                           load_file_identity("alice", key, None))
    join = asyncio.create_task(client.join(parse_code(code), ("view",)))
    await expect(agent, r"\[n/Enter\] deny")
    agent.send("v")
    joined = await asyncio.wait_for(join, 30)
    session = joined.session
    conn, pump = await joined.open_ssh()
    said = "CHAT" + secrets.token_hex(6)
    answered = "REPLY" + secrets.token_hex(6)
    try:
        await conn.create_session(asyncssh.SSHClientSession, term_type="xterm",
                                  term_size=(80, 24), encoding=None)
        await expect(agent, r"Alice Example \(alice\) is viewing --")
        writer, reader, _stderr = await conn.open_session(subsystem=CHAT_SUBSYSTEM,
                                                          encoding=None)
        decoder, pending = ChatDecoder(), list[ChatLine]()
        writer.write(encode_say(f"hello {said}"))
        echoed = await next_line(reader, decoder, pending)
        assert echoed == ChatLine("Alice Example", "engineer", f"hello {said}")
        await expect(agent, f"Alice Example: hello {said}")

        agent.send("\x1dm")  # the customer opens the chat page
        await expect(agent, "Your message:")
        agent.send(f"{answered} thanks\r")
        heard = await next_line(reader, decoder, pending)
        assert heard == ChatLine("Customer", "customer", f"{answered} thanks")
        await expect(agent, f"You: {answered} thanks")
        agent.send("\x1b")  # back to the session
        writer.write(encode_say("one more"))
        assert (await next_line(reader, decoder, pending)).text == "one more"
        # The customer ends it: the agent reports its counts before `end`.
        agent.send("\x1de")
        await expect(agent, "You ended the session")
    finally:
        conn.close()
        await joined.leave()
        pump.cancel()
    running.stop_broker()

    ended = [e for e in audit_events(running)
             if e["type"] == "session_ended" and e["session"] == session]
    assert len(ended) == 1
    assert ended[0]["body"]["chat_lines"] == {"engineer": 2, "customer": 1}
    shown = running.cli("audit", "show", session)
    assert shown.returncode == 0, shown.stderr
    assert "chat: 2 lines from the engineer side, 1 from the customer" in shown.stdout
    for marker in (said, answered):
        for path in [*running.data_dir.rglob("*"), running.broker_stdout]:
            if path.is_file():
                assert marker.encode() not in path.read_bytes(), f"{marker} leaked into {path}"
