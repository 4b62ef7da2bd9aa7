"""Every limit of the protocol, named once, with the reason for its value.

Agent, console and broker all import these, so a peer that follows them is
never surprised by a close from the other side.
"""

from __future__ import annotations

# Why a session ended, as each side may say it in an `end` message, and why
# pairing failed: defined with the other codes in broker/wire/codes.py, and
# re-exported here where they always were.
from broker.wire.codes import AGENT_END_REASONS as AGENT_END_REASONS
from broker.wire.codes import CONSOLE_END_REASONS as CONSOLE_END_REASONS
from broker.wire.codes import PAIRING_FAILURES as PAIRING_FAILURES

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
# Nameplates are drawn from a space at least this many times the number of
# waiting agents (`broker.pairing`): a join with a made-up nameplate finds a
# waiting agent with odds of at most 1 in 1,000 (while fewer than 90,000
# agents wait, the most 8 digits hold at that density). Each such hit is one
# guess at the secret (1 in 10**6) and spends that customer's code, so hits
# must be rare. 1,000 keeps the code short enough to read aloud: four digits
# and the secret (4821-193-775) while up to 9 agents wait, five up to 90.
NAMEPLATE_SPARSITY = 1000
# The fewest digits `broker.pairing` ever draws: the first length whose
# space (9 * 10**(n-1) values, no leading zero) holds NAMEPLATE_SPARSITY
# values for one waiting agent. A shorter nameplate is a typo, caught by
# the console before anything is sent (`broker.wire.code.parse_code`).
MIN_NAMEPLATE_DIGITS = next(n for n in range(1, MAX_NAMEPLATE_DIGITS + 1)
                            if 9 * 10 ** (n - 1) >= NAMEPLATE_SPARSITY)

# Consent: no answer within this is a deny. The agent may choose another
# value within these bounds; the broker cannot lengthen it.
DEFAULT_CONSENT_TIMEOUT = 60.0
MIN_CONSENT_TIMEOUT = 1.0
MAX_CONSENT_TIMEOUT = 10 * 60.0

# Login: failures are remembered per engineer name and per source address
# for this long. They never lock anyone out - a correct signature always gets
# in at once - but each refusal waits before it is sent (`broker.throttle`):
# nothing for the first few failures (a wrong key file, a typo in the name),
# then doubling up to the cap. The delay is taken from the larger of the
# name's and the source's recent failures, so guessing one name from many
# places and many names from one place are both slowed.
LOGIN_WINDOW_SECONDS = 5 * 60
LOGIN_FREE_FAILURES = 3
LOGIN_DELAY_FIRST = 0.25
# Far below the clients' handshake timeout (60 s), so the refusal is still
# read and shown; at the cap one connection guesses 15 times a minute.
LOGIN_DELAY_MAX = 4.0
# Refusals held back at once, over all sources. Each holds its connection
# (~40 KiB) and no other task; past this, a failure is refused at once, so
# parallel guessers cost the broker bounded memory - what stops them is the
# cap on connections per source, and their failures cost no audit write
# beyond the aggregated events (`broker.failures`).
MAX_DELAYED_REFUSALS = 256

# Joins, counted before the nameplate is claimed, so a refused join spends no
# customer's code. A miss (no customer waits behind that nameplate, or the
# PAKE failed) is what sweeping random nameplates produces and what a person
# rarely does: counted tightly, per engineer and per source (several
# accounts sweeping from one address; the source's limit stops only those
# of its engineers who missed, so colleagues sharing an office's address
# are not locked out by a sweep beside them). All joins are counted loosely:
# harnesses and busy teams join hundreds of sessions in a minute (the bench
# joins 200 at once from one account), a person one every few minutes.
# With 10 misses per 10 minutes and nameplate odds of 1 in 1,000, a sweeping
# account reaches a waiting agent about once in 17 hours, and is refused
# (`rate_limited`) and named in the operator's log after its tenth miss.
JOIN_MISS_WINDOW_SECONDS = 10 * 60
MAX_JOIN_MISSES_PER_ENGINEER = 10
MAX_JOIN_MISSES_PER_SOURCE = 30
JOIN_WINDOW_SECONDS = 10 * 60
MAX_JOINS_PER_ENGINEER = 600
MAX_JOINS_PER_SOURCE = 1200

# Agents registering (`hello`), per source address in a minute. Each one is
# an `agent_connected` event, and anyone may send a hello, so this bounds how
# fast one address can grow the audit log. An agent connects once and keeps
# its connection (fresh codes come over it); 120 lets an office of agents
# behind one NAT reconnect after a broker restart within a few minutes of
# backoff, while a flood from one address costs at most ~120 events a minute.
AGENT_HELLO_WINDOW_SECONDS = 60.0
MAX_AGENT_HELLOS_PER_SOURCE = 120

# Time allowed to finish TLS + WebSocket opening + first message.
OPEN_TIMEOUT = 10.0

# Labels chosen by people (aliases, display names).
MAX_LABEL = 64


# Engineer input the agent dropped (view only, or held across a stall and
# then discarded), reported as a running total in `input_dropped`. The total
# can never exceed the bytes relayed to the agent, which the broker also
# checks; the cap only keeps the integer a sane JSON number.
MAX_DROPPED_BYTES = 2**53
# `file_transferred`: the bytes one file moved (any sane JSON number; the
# agent's own size limits are far lower), and how many such events one
# session may record (beyond this they are dropped: the audit stays bounded).
MAX_TRANSFER_BYTES = 2**53
MAX_FILE_EVENTS_PER_SESSION = 1000
# `chat_lines`: a seat's running totals of chat lines (its engineer's, and
# the customer's while it was connected), never their text. The agent
# allows about a line a second per sender, so a session of the longest
# allowed duration has far fewer; the cap keeps a claim a sane number.
MAX_CHAT_LINES = 1_000_000
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
# A session's links (the console's and the agent side's) notice a silent
# drop sooner, so a resume has most of its window left: a dead Wi-Fi sends
# no reset, and only a missed ping tells. A ping goes out only after this
# much silence, so a busy session sends none.
SESSION_PING_INTERVAL = 10.0
SESSION_PING_TIMEOUT = 10.0

# TLS 1.2 cipher suites, for the broker and its clients alike: forward-secret
# AEAD only (AES-GCM, ChaCha20-Poly1305), never the CBC suites OpenSSL's
# default list still offers. TLS 1.3's suites are all AEAD already.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"

# Engineers in one session at once (seats being paired count): a join with
# an invitation beyond this is refused to the engineer who asked
# (`session_full`), and the customer is not prompted.
MAX_ENGINEERS_PER_SESSION = 4

# Resuming after a drop (`broker.wire.resume`, driven by `broker.client.resumable`).
# Unacknowledged SSH stream bytes a sender keeps per direction for a replay.
# While the link is down SSH goes on writing into it until the peer's channel
# windows are used up (it receives nothing, so it grants no more): the bound
# must hold what SSH may have in flight, the shell's and a file transfer's
# windows (`SSH_WINDOW` each) and its own packets. Past it a resume would
# lose bytes, so the session ends instead. Only bytes in flight are held: a
# few hundred KiB on a busy link, nothing on a quiet one.
MAX_REPLAY_BYTES = 4 * 1024 * 1024
# The SSH channel window both our ends grant (asyncssh's default is 2 MiB):
# 1 MiB keeps a transfer fast over a 100 ms path (about 10 MB/s) and keeps
# what can be in flight in a drop within `MAX_REPLAY_BYTES`.
SSH_WINDOW = 1024 * 1024
# How long a session waits for a lost end before ending as `agent_lost` or
# `console_lost`: a Wi-Fi roam or a VPN reconnect takes seconds, a laptop
# changing networks up to a minute; past two minutes the person at the other
# end has likely given up, and the shell should not stay open unwatched.
RESUME_WINDOW_SECONDS = 120.0
# One resume's exchange (resume, challenge, proof, accepted) must finish in
# this long, or that attempt is dropped and the seat waits for the next one.
RESUME_STEP_TIMEOUT = 15.0
# Stream offsets and attempt numbers travel in JSON control messages: at
# most the integers every JSON reader holds exactly (2**53 - 1).
MAX_STREAM_OFFSET = 2**53 - 1
RESUME_NONCE_BYTES = 32
RESUME_PROOF_BYTES = 32  # HMAC-SHA256
