"""An answer the customer gives as the engineer's side goes: the receipt
cannot be sent, and that is a withdrawn request, never a crash. A real
WebSocket on loopback that the far side has already closed."""

from __future__ import annotations

from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from agent.client import Agent, Withdrawn
from agent.config import AgentConfig
from agent.consent import ConsentRequest, Decision
from agent.identity import load_identity
from agent.screen import CustomerScreen
from broker.client.handshake import HandshakeRun
from broker.client.link import BrokerLink
from tests.wire.handshakes import paired


async def test_a_receipt_for_a_session_that_closed_is_a_withdrawal(tmp_path: Path) -> None:
    async def hang_up(ws: ServerConnection) -> None:
        await ws.close(1000, "the engineer left")

    async with serve(hang_up, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}")
        await ws.wait_closed()
        config = AgentConfig(state_dir=tmp_path / "state")
        agent = Agent(config, load_identity(config.state_dir), CustomerScreen())
        ask = ConsentRequest(session="s1", engineer_login="alice",
                             engineer_display="Alice", engineer_role="engineer",
                             key_fingerprint="SHA256:x", wants=("view",), sas="ABCD-EF01")
        pair, _relay = paired()  # an agent's handshake paired, the customer being asked
        run = HandshakeRun(BrokerLink(ws), pair.agent)
        with pytest.raises(Withdrawn) as info:
            await agent._send_receipt(run, ask, Decision("granted", ("view",)))
        assert info.value.reason == "closed"
    # The customer still has their copy of what they answered.
    assert (tmp_path / "state" / "receipts.jsonl").read_text().count("\n") == 1
