"""Every limit of the protocol, named once, with the reason for its value.

Agent, console and broker all import these, so a peer that follows them is
never surprised by a close from the other side.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1

# A control frame (JSON text) never needs more than a few hundred bytes; the
# largest is a consent receipt. Anything bigger is a bug or an attack.
MAX_CONTROL_FRAME = 16 * 1024

# Binary frames carry SSH stream bytes. asyncssh writes packets of at most
# ~35 KB; 64 KiB leaves room and keeps per-frame memory small.
MAX_DATA_FRAME = 64 * 1024

# WebSocket max_size: the larger of the two frame kinds.
MAX_FRAME = max(MAX_CONTROL_FRAME, MAX_DATA_FRAME)

# The two replies of the admin audit API (`audit_page`, `audit_session`) carry
# many events and may be this large. Only those two types get the larger
# ceiling (see `broker.wire.messages.FRAME_LIMITS`), and only a console opens
# its connection with this WebSocket max_size: the broker never accepts such
# a frame, and agents keep the small limit.
MAX_ADMIN_FRAME = 1024 * 1024

# Events in one `audit_page` (the `limit` of an `audit_query`), and in one
# `audit_session` reply. A reply that would still exceed MAX_ADMIN_FRAME is
# cut short by the broker, with `more` set.
MAX_AUDIT_PAGE = 200
MAX_SESSION_EVENTS = 500

# Sequence numbers of the audit log (SQLite's largest integer).
MAX_AUDIT_SEQ = 2**63 - 1

# Frames buffered per connection before the reader stops reading the socket
# (websockets' max_queue): this is what makes backpressure reach the sender.
MAX_QUEUED_FRAMES = 16

# Bytes buffered for writing before a sender awaits the drain (write_limit).
WRITE_HIGH_WATER = 256 * 1024

# Join codes: a short nameplate routed by the broker and a 6-digit secret
# that never leaves the two ends. Codes are single-use and expire.
SECRET_DIGITS = 6
CODE_LIFETIME_SECONDS = 10 * 60
MAX_NAMEPLATE_DIGITS = 8

# Consent: no answer within this is a deny. The agent may choose another
# value within these bounds; the broker cannot lengthen it.
DEFAULT_CONSENT_TIMEOUT = 60.0
MIN_CONSENT_TIMEOUT = 1.0
MAX_CONSENT_TIMEOUT = 10 * 60.0

# Login: attempts per engineer name and per source address in a window.
LOGIN_WINDOW_SECONDS = 5 * 60
MAX_LOGIN_ATTEMPTS_PER_USER = 10
MAX_LOGIN_ATTEMPTS_PER_IP = 30

# Time allowed to finish TLS + WebSocket opening + first message.
OPEN_TIMEOUT = 10.0

# Labels chosen by people (aliases, display names).
MAX_LABEL = 64

# Why a session ended, as each side may say it in an `end` message.
AGENT_END_REASONS = frozenset({"customer_ended", "shell_exited", "agent_quit"})
CONSOLE_END_REASONS = frozenset({"engineer_left"})

# Why pairing failed, as the agent reports it in `pairing_failed`; each is
# also the session's end reason, so the engineer is told which it was.
PAIRING_FAILURES = ("wrong_code", "key_mismatch")

# Engineer input the agent dropped (view only, or held across a stall and
# then discarded), reported as a running total in `input_dropped`. The total
# can never exceed the bytes relayed to the agent, which the broker also
# checks; the cap only keeps the integer a sane JSON number.
MAX_DROPPED_BYTES = 2**53
# A `confirm_live` carries a counter the agent picks; any int this size will do.
MAX_LIVENESS_ID = 2**31 - 1

# SSH ciphers, in order of preference, for both ends of a session:
# aes128-gcm moves ~2x the bytes of chacha20 on this kind of machine.
SSH_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com")

# Keepalive from the client side (agent, console). The broker pings every
# 20 s and drops peers that stop answering; the clients only need to notice
# a dead broker, so they ping less often - at 10,000 idle agents, every ping
# the broker does not have to answer is CPU it keeps.
CLIENT_PING_INTERVAL = 60.0
CLIENT_PING_TIMEOUT = 30.0
