"""The client end of a connection to the broker, shared by the agent and the
console: reaching the broker safely (`link`), carrying SSH over the relay
(`relay`), running the join's handshake over a link (`handshake`), and
writing to a terminal without ever blocking the event loop (`terminal_io`).

Client code only: nothing here imports a module of the broker's server
(`tests/test_import_hygiene.py` checks it), and the server imports nothing
from here.
"""
