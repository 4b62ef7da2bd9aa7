"""TLS contexts made by the broker and the clients bound each read's buffer
(see broker.eventloop) and lose nothing doing so."""

from __future__ import annotations

import ssl
from pathlib import Path

from broker.certs import init_dev_pki
from broker.client.link import client_tls
from broker.server import server_tls


def test_bounded_reads_deliver_everything(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path)
    server_ctx, client_ctx = server_tls(pki.cert, pki.key), client_tls(pki.ca_cert)
    bios = [ssl.MemoryBIO() for _ in range(4)]  # client in/out, server in/out
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname="localhost")
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    assert type(client) is type(server) is not ssl.SSLObject  # both bounded

    def shuttle() -> None:
        bios[2].write(bios[1].read())
        bios[0].write(bios[3].read())

    for _ in range(10):  # the handshake, a flight at a time
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        shuttle()
    payload = bytes(range(256)) * 1024  # 256 KiB, sixteen records
    client.write(payload)
    shuttle()

    received = bytearray()
    while len(received) < len(payload):
        received += server.read(1 << 20)  # asks for 1 MiB, as uvloop asks for 256 KiB
    assert bytes(received) == payload
    into = bytearray(100)  # reads into a caller's buffer are left as they are
    client.write(b"x" * 100)
    shuttle()
    # object: with a buffer, read gives a count, though typeshed says bytes.
    count: object = server.read(100, into)
    assert count == 100 and into == b"x" * 100
