"""Generated frames (tests/wire/test_fuzz_messages.py's strategies) fed to a
real broker on each endpoint: it answers with an `error` frame or closes,
never `internal_error`, never crashes, and a normal agent still gets in."""

from __future__ import annotations

import asyncio
import json
import ssl

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from broker.server import PATHS
from tests.e2e.conftest import Deployment
from tests.e2e.test_admission import agent_gets_a_code
from tests.wire.test_fuzz_messages import frames


async def feed(dep: Deployment, path: str, sent: list[str | bytes]) -> None:
    tls = ssl.create_default_context(cafile=str(dep.pki.ca_cert))
    async with connect(dep.url + path, ssl=tls, compression=None, max_size=None) as ws:
        try:
            for frame in sent:
                await ws.send(frame)
            while True:
                reply = await asyncio.wait_for(ws.recv(), 2)
                if isinstance(reply, str) and json.loads(reply).get("type") == "error":
                    assert json.loads(reply)["code"] != "internal_error", reply
        except ConnectionClosed:
            return
        except TimeoutError:
            return  # a frame the broker waits beyond (e.g. a valid hello): no crash


def test_the_broker_survives_generated_frames_and_still_serves(running: Deployment) -> None:
    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(PATHS), st.lists(frames(), min_size=1, max_size=3))
    def fuzz(path: str, sent: list[str | bytes]) -> None:
        asyncio.run(feed(running, path, sent))
        assert running.broker is not None and running.broker.poll() is None

    fuzz()
    asyncio.run(agent_gets_a_code(running))
    log = running.broker_stdout.read_text()
    assert "internal error" not in log and "Traceback" not in log
