"""File transfer with real processes (agent side): an engineer without the
files right is refused the SFTP subsystem. (Uploads and downloads end to
end need the files right granted, which the rights work adds.)"""

from __future__ import annotations

import asyncio

import asyncssh
import pytest

from broker.wire.code import parse_code
from console.client import ConsoleClient
from console.identity import load_file_identity
from tests.e2e.conftest import Deployment, read_code
from tests.e2e.test_control import expect


async def test_an_engineer_without_the_files_right_is_refused_sftp(running: Deployment) -> None:
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk", "--share", str(running.root))
    code = read_code(agent)
    client = ConsoleClient(running.url, running.pki.ca_cert,
                           load_file_identity("alice", key, None))
    join = asyncio.create_task(client.join(parse_code(code), ("view",)))
    await expect(agent, r"\[n/Enter\] deny")
    agent.send("v")
    joined = await asyncio.wait_for(join, 30)
    conn, pump = await joined.open_ssh()
    try:
        with pytest.raises(asyncssh.ChannelOpenError):
            async with conn.start_sftp_client():
                pass
    finally:
        conn.close()
        await joined.leave()
        pump.cancel()
