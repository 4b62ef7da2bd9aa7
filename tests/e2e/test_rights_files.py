"""The files right with real processes: asked by the engineer, named to the
customer in words, granted with [a], and it opens (and, taken back, closes)
the SFTP subsystem."""

from __future__ import annotations

import asyncio
import json

import asyncssh
import pexpect
import pytest

from broker.wire.code import parse_code
from console.client import ConsoleClient
from console.identity import load_file_identity
from tests.e2e.conftest import Deployment, read_code
from tests.e2e.test_control import expect


def test_console_asks_for_files_and_hears_what_was_granted(running: Deployment) -> None:
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk", "--share", str(running.root))
    console = running.console(read_code(agent), key, "alice", "--control", "--files")
    agent.expect("copy files to and from a folder on this computer")
    agent.expect(r"\[a\] allow all of this")
    agent.send("a")
    console.expect("granted: view, control, files")
    console.expect("connected to front desk")
    console.send("\x1dq")
    console.expect(pexpect.EOF)


def test_view_and_files_without_control(running: Deployment) -> None:
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk", "--share", str(running.root))
    console = running.console(read_code(agent), key, "alice", "--files")
    agent.expect(r"\[a\] allow all of this")
    agent.send("a")
    console.expect("granted: view and files")
    console.send("\x1dq")
    console.expect(pexpect.EOF)


def test_a_computer_that_does_not_allow_files_says_so(running: Deployment) -> None:
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk", "--share", str(running.root),
                          "--max-rights", "view,control")
    console = running.console(read_code(agent), key, "alice", "--files")
    agent.expect("does not allow copying files")
    agent.send("v")
    console.expect("the customer did not grant files")
    console.send("\x1dq")
    console.expect(pexpect.EOF)


async def test_granted_files_open_sftp(running: Deployment) -> None:
    key = running.add_engineer("alice", display="Alice Example")
    (running.root / "hello.txt").write_bytes(b"hi")
    agent = running.agent("--alias", "front desk", "--share", str(running.root))
    code = read_code(agent)
    client = ConsoleClient(running.url, running.pki.ca_cert,
                           load_file_identity("alice", key, None))
    join = asyncio.create_task(client.join(parse_code(code), ("view", "files")))
    await expect(agent, r"\[a\] allow all of this")
    agent.send("a")
    joined = await asyncio.wait_for(join, 30)
    assert tuple(joined.granted) == ("view", "files")
    conn, pump = await joined.open_ssh()
    try:
        async with conn.start_sftp_client() as sftp:
            assert "hello.txt" in await sftp.listdir("shared")
    finally:
        conn.close()
        await joined.leave()
        pump.cancel()


async def test_view_only_answer_to_a_files_request_refuses_sftp(running: Deployment) -> None:
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk", "--share", str(running.root))
    code = read_code(agent)
    client = ConsoleClient(running.url, running.pki.ca_cert,
                           load_file_identity("alice", key, None))
    join = asyncio.create_task(client.join(parse_code(code), ("view", "files")))
    await expect(agent, r"\[a\] allow all of this")
    agent.send("v")
    joined = await asyncio.wait_for(join, 30)
    assert tuple(joined.granted) == ("view",)
    conn, pump = await joined.open_ssh()
    try:
        with pytest.raises(asyncssh.ChannelOpenError):
            async with conn.start_sftp_client():
                pass
    finally:
        conn.close()
        await joined.leave()
        pump.cancel()


async def test_taking_rights_back_closes_sftp(running: Deployment) -> None:
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk", "--share", str(running.root))
    code = read_code(agent)
    client = ConsoleClient(running.url, running.pki.ca_cert,
                           load_file_identity("alice", key, None))
    join = asyncio.create_task(client.join(parse_code(code), ("view", "files")))
    await expect(agent, r"\[a\] allow all of this")
    agent.send("a")
    joined = await asyncio.wait_for(join, 30)
    conn, pump = await joined.open_ssh()
    try:
        async with conn.start_sftp_client() as sftp:
            await sftp.listdir("shared")
        agent.send("\x1dv")  # Ctrl-] v: view only, for the one engineer
        # The agent closes the gate as the key arrives; wait until the
        # customer's choice has reached it (bounded), then SFTP is refused.
        refused = False
        for _ in range(200):
            try:
                async with conn.start_sftp_client():
                    pass
            except asyncssh.ChannelOpenError:
                refused = True
                break
            await asyncio.sleep(0.1)
        assert refused
    finally:
        conn.close()
        await joined.leave()
        pump.cancel()


def test_files_asked_for_later_in_a_plain_join(running: Deployment) -> None:
    """Joined for view only, the engineer presses Ctrl-] f: the customer is
    asked for files on a prompt of its own, grants with [f], the engineer is
    told, and Ctrl-] f now opens the files prompt; the audit records the
    request and the grant like control's."""
    key = running.add_engineer("alice", display="Alice Example")
    (running.root / "report.txt").write_bytes(b"hello")
    agent = running.agent("--alias", "front desk", "--share", str(running.root))
    console = running.console(read_code(agent), key, "alice")
    agent.expect(r"\[n/Enter\] deny")
    agent.send("v")
    console.expect("connected to front desk")
    console.expect(r"\$ ")
    console.send("\x1df")
    console.expect("asking the customer to allow file transfer")
    agent.expect("now asks to copy files")
    agent.expect(r"\[f\] allow files")
    agent.send("f")
    console.expect("the customer allowed file transfer")
    agent.expect("may now copy files")
    console.send("\x1df")
    console.expect("consentry: files")
    console.send("ls /shared\r")
    console.expect("report.txt")
    console.send("\x1b")
    console.send("\x1dq")
    console.expect(pexpect.EOF)
    listing = running.cli("audit", "list", "--json", "--type", "rights_changed")
    assert listing.returncode == 0, listing.stderr
    changes = [json.loads(line)["body"] for line in listing.stdout.splitlines()]
    assert {"granted": ["view", "files"], "by": "customer", "upgrade": True} in [
        {k: v for k, v in body.items() if k in ("granted", "by", "upgrade")} for body in changes]


async def test_the_customer_withdraws_files_alone(running: Deployment) -> None:
    """Ctrl-] f, then w: SFTP closes to the engineer, who keeps control and
    hears the rights now in force."""
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk", "--share", str(running.root))
    code = read_code(agent)
    client = ConsoleClient(running.url, running.pki.ca_cert,
                           load_file_identity("alice", key, None))
    join = asyncio.create_task(client.join(parse_code(code), ("view", "control", "files")))
    await expect(agent, r"\[a\] allow all of this")
    agent.send("a")
    joined = await asyncio.wait_for(join, 30)
    conn, pump = await joined.open_ssh()
    try:
        async with conn.start_sftp_client() as sftp:
            await sftp.listdir("shared")
            agent.send("\x1df")
            await expect(agent, "Press w to stop file transfer")
            agent.send("w")
            await expect(agent, "File transfer is off: Alice Example can no longer copy files")
            for _ in range(200):  # bounded: until the narrowing has reached the console
                if tuple(joined.granted) == ("view", "control"):
                    break
                await asyncio.sleep(0.05)
            assert tuple(joined.granted) == ("view", "control")
            # The channel opened before is still there, and does nothing now.
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.listdir("shared")
        with pytest.raises(asyncssh.ChannelOpenError):
            async with conn.start_sftp_client():
                pass
    finally:
        conn.close()
        await joined.leave()
        pump.cancel()
