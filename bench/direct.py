"""The baseline: the agent's own SSH server (`agent.sshd.serve_shell`) on a
plain loopback TCP port, no broker in between. `python -m bench.direct
--client-key KEY.pub` prints one JSON line {"port", "host_key"} and serves
until terminated."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys

import asyncssh

from agent.sshd import Gate, serve_shell
from broker import eventloop


async def serve(client_key: str, shell: str) -> None:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    sys.stdout.write(json.dumps({
        "port": listener.getsockname()[1],
        "host_key": host_key.export_public_key().decode().strip(),
    }) + "\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[object]] = set()
    while True:
        conn, _addr = await loop.sock_accept(listener)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        gate = Gate(control=True)
        task = loop.create_task(serve_shell(conn, host_key=host_key, engineer_key=client_key,
                                            shell=shell, gate=gate))
        running.add(task)
        task.add_done_callback(running.discard)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--client-key", required=True)
    p.add_argument("--shell", default="/bin/sh")
    args = p.parse_args()
    key = open(args.client_key).read().strip()
    with contextlib.suppress(KeyboardInterrupt):
        eventloop.run(serve(key, args.shell))


if __name__ == "__main__":
    main()
