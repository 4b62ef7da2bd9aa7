"""The I/O-free core of resuming after a drop: byte-exact replay, its
bounds, resume proofs only the paired ends can make, and the window."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.wire.code import parse_code
from broker.wire.e2e import Pairing
from broker.wire.errors import ResumeError
from broker.wire.limits import MAX_REPLAY_BYTES, RESUME_WINDOW_SECONDS, SSH_WINDOW
from broker.wire.resume import (
    BACKOFF_MAX_SECONDS,
    NONCE_BYTES,
    Backoff,
    ReceiveCursor,
    ReplayBuffer,
    ResumeChallenge,
    ResumeKey,
    Resumer,
    ResumeVerifier,
    ResumeWindow,
)
from broker.wire.resume.stream import MAX_STREAM_OFFSET

# --- the stream: numbering, acknowledgement, replay -------------------------


def transfer_with_drops(seed: int, limit: int, ack_every: int, exact: bool) -> None:
    """Push a random stream through a link that drops at random moments,
    losing whatever frames were in flight; after each drop the sender
    replays. The receiver must end with exactly the stream that was sent."""
    rng = random.Random(seed)
    source = rng.randbytes(rng.randrange(1, 8_000))
    sender, receiver = ReplayBuffer(limit), ReceiveCursor(ack_every)
    delivered = bytearray()
    in_flight: list[bytes] = []  # frames on the current link, in order
    read = 0
    for _ in range(200_000):  # bounded, so a broken buffer fails instead of hanging
        if len(delivered) >= len(source):
            break
        action = rng.random()
        if action < 0.5 and read < len(source) and sender.room > 0:
            # The source is read only while there is room: backpressure.
            chunk = source[read:read + rng.randrange(1, min(sender.room, 3000) + 1)]
            assert sender.push(chunk) == read
            read += len(chunk)
            in_flight.append(chunk)
        elif action < 0.8 and in_flight:
            delivered += receiver.accept(in_flight.pop(0))
            if receiver.ack_due() or rng.random() < 0.1:
                ack = receiver.take_ack()
                if ack is not None:
                    sender.ack(ack)
        elif action < 0.9 and not in_flight:
            # The link is idle: the receiver's idle timer acknowledges.
            ack = receiver.take_ack()
            if ack is not None:
                sender.ack(ack)
        elif action >= 0.9:
            # The link drops: every frame in flight is lost. The new link
            # starts with the replay, from the offset the receiver says it
            # has, or (not exact) from all the sender still holds.
            in_flight.clear()
            start = receiver.received if exact else sender.acked
            replay = sender.replay_from(start)
            receiver.restart(start)
            if replay:
                in_flight.append(replay)
    assert bytes(delivered) == source
    assert receiver.received == sender.sent == len(source)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), limit=st.integers(1, 5000),
       ack_every=st.integers(1, 4000), exact=st.booleans())
def test_no_byte_lost_or_doubled_across_random_drops(
        seed: int, limit: int, ack_every: int, exact: bool) -> None:
    transfer_with_drops(seed, limit, ack_every, exact)


def test_replay_returns_exactly_the_bytes_after_the_peers_offset() -> None:
    sender = ReplayBuffer()
    assert sender.push(b"hello ") == 0
    assert sender.push(b"world") == 6
    assert sender.replay_from(3) == b"lo world"
    assert sender.acked == 3 and sender.held == 8
    assert sender.replay_from(11) == b""
    assert sender.held == 0 and sender.sent == 11


def test_the_buffer_is_bounded_and_acks_make_room() -> None:
    sender = ReplayBuffer(10)
    sender.push(b"0123456")
    assert sender.room == 3
    with pytest.raises(ResumeError, match="full"):
        sender.push(b"abcd")
    assert sender.sent == 7  # a refused push numbers nothing
    sender.push(b"789")
    assert sender.room == 0
    sender.ack(4)
    assert sender.room == 4 and sender.held == 6
    sender.push(b"abcd")
    assert sender.replay_from(4) == b"456789abcd"


def test_the_default_bound_is_the_named_constant() -> None:
    sender = ReplayBuffer()
    assert sender.limit == MAX_REPLAY_BYTES == 4 * 1024 * 1024
    # It holds what SSH may have in flight in a drop: the shell's window and a transfer's.
    assert MAX_REPLAY_BYTES >= 2 * SSH_WINDOW + 64 * 1024
    sender.push(bytes(MAX_REPLAY_BYTES))
    assert sender.room == 0
    with pytest.raises(ResumeError):
        sender.push(b"x")


@pytest.mark.parametrize("offset", [-1, 12, MAX_STREAM_OFFSET + 1])
def test_an_offset_that_was_never_sent_is_refused(offset: int) -> None:
    sender = ReplayBuffer()
    sender.push(b"hello world")
    with pytest.raises(ResumeError):
        sender.ack(offset)
    with pytest.raises(ResumeError):
        sender.replay_from(offset)
    assert sender.replay_from(0) == b"hello world"  # nothing was dropped on the way


def test_an_offset_already_dropped_or_going_back_is_refused() -> None:
    sender = ReplayBuffer()
    sender.push(b"hello world")
    sender.ack(6)
    with pytest.raises(ResumeError, match="gone"):
        sender.replay_from(5)
    with pytest.raises(ResumeError, match="after it had acknowledged"):
        sender.ack(5)
    assert sender.replay_from(6) == b"world"


@pytest.mark.parametrize("offset", [True, 1.0, "3", None])
def test_an_offset_that_is_not_an_integer_is_refused(offset: object) -> None:
    sender = ReplayBuffer()
    sender.push(b"hello")
    with pytest.raises(ResumeError, match="not a byte offset"):
        sender.ack(offset)  # type: ignore[arg-type]  # what a JSON peer may send
    with pytest.raises(ResumeError, match="not a byte offset"):
        ReceiveCursor().restart(offset)  # type: ignore[arg-type]


def test_the_receiver_drops_a_replayed_prefix_it_has() -> None:
    receiver = ReceiveCursor()
    assert receiver.accept(b"hello") == b"hello"
    receiver.restart(2)
    assert receiver.accept(b"ll") == b""
    assert receiver.accept(b"o wo") == b" wo"
    assert receiver.accept(b"rld") == b"rld"
    assert receiver.received == 11


def test_the_receiver_refuses_a_replay_that_skips_bytes() -> None:
    receiver = ReceiveCursor()
    receiver.accept(b"hello")
    with pytest.raises(ResumeError, match="lost"):
        receiver.restart(6)
    receiver.restart(5)
    assert receiver.accept(b"!") == b"!"


def test_acks_are_due_every_so_many_bytes_and_never_repeat() -> None:
    receiver = ReceiveCursor(ack_every=4)
    assert receiver.take_ack() is None
    receiver.accept(b"abc")
    assert not receiver.ack_due()
    receiver.accept(b"d")
    assert receiver.ack_due()
    assert receiver.take_ack() == 4
    assert not receiver.ack_due() and receiver.take_ack() is None
    receiver.accept(b"e")
    assert receiver.take_ack() == 5  # an idle timer may ack a little


# --- the proof: only the paired ends ----------------------------------------

CODE = parse_code("4821-193-775")
SESSION = "s-1"


def paired(session: str = SESSION) -> tuple[Pairing, Pairing]:
    console, agent = Pairing("console", CODE, session), Pairing("agent", CODE, session)
    to_agent, to_console = console.start(), agent.start()
    agent.receive_pake(to_agent)
    console.receive_pake(to_console)
    return console, agent


def paired_keys(session: str = SESSION) -> tuple[ResumeKey, ResumeKey]:
    """Resume keys of a console and an agent after a real SPAKE2 pairing."""
    console, agent = paired(session)
    return (ResumeKey(console.resume_secret(), session),
            ResumeKey(agent.resume_secret(), session))


def test_both_paired_ends_derive_the_same_secret_and_no_one_else() -> None:
    console, agent = paired()
    assert console.resume_secret() == agent.resume_secret()
    assert len(console.resume_secret()) == 32
    # Another run of the pairing, even with the same code, has another key:
    # what the broker would get by pairing with each end on its own.
    assert paired()[0].resume_secret() != console.resume_secret()


def exchange(resumer: Resumer, verifier: ResumeVerifier,
             resumer_received: int = 10, verifier_received: int = 20) -> int:
    request = resumer.request(resumer_received)
    challenge = verifier.challenge(request, verifier_received)
    return verifier.verify(resumer.answer(challenge))


@pytest.mark.parametrize("resumer_side", ["console", "agent"])
def test_the_paired_ends_resume_each_other(resumer_side: str) -> None:
    console_key, agent_key = paired_keys()
    if resumer_side == "console":
        resumer, verifier = Resumer(console_key, "console"), ResumeVerifier(agent_key, "agent")
    else:
        resumer, verifier = Resumer(agent_key, "agent"), ResumeVerifier(console_key, "console")
    assert exchange(resumer, verifier) == 1
    assert exchange(resumer, verifier) == 2  # a second drop, a second resume
    assert verifier.accepted_attempt == 2


def test_a_broker_without_the_key_cannot_resume_into_the_session() -> None:
    _, agent_key = paired_keys()
    broker_guess = ResumeKey(bytes(32), SESSION)  # all it knows is the session id
    verifier = ResumeVerifier(agent_key, "agent")
    request = Resumer(broker_guess, "console").request(10)
    challenge = verifier.challenge(request, 20)
    transcript = broker_guess.transcript("console", request, challenge.nonce, 20)
    with pytest.raises(ResumeError, match="does not match"):
        verifier.verify(broker_guess.prove("console", transcript))
    assert verifier.accepted_attempt == 0


def test_a_broker_cannot_pose_as_the_peer_either() -> None:
    console_key, _ = paired_keys()
    resumer = Resumer(console_key, "console")
    impostor = ResumeVerifier(ResumeKey(bytes(32), SESSION), "agent")
    with pytest.raises(ResumeError, match="not from the paired end"):
        exchange(resumer, impostor)


def test_a_recorded_proof_never_opens_another_attempt() -> None:
    console_key, agent_key = paired_keys()
    resumer, verifier = Resumer(console_key, "console"), ResumeVerifier(agent_key, "agent")
    request = resumer.request(10)
    recorded = resumer.answer(verifier.challenge(request, 20))
    verifier.verify(recorded)
    # The same proof again, for the same request replayed by someone who saw it:
    with pytest.raises(ResumeError, match="replay"):
        verifier.challenge(request, 20)
    # A newer attempt number copied by the replayer gets a fresh nonce:
    verifier.challenge(replace(request, attempt=2), 20)
    with pytest.raises(ResumeError, match="does not match"):
        verifier.verify(recorded)


def test_a_proof_opens_its_challenge_once() -> None:
    console_key, agent_key = paired_keys()
    resumer, verifier = Resumer(console_key, "console"), ResumeVerifier(agent_key, "agent")
    proof = resumer.answer(verifier.challenge(resumer.request(0), 0))
    verifier.verify(proof)
    with pytest.raises(ResumeError, match="no resume challenge open"):
        verifier.verify(proof)
    with pytest.raises(ResumeError, match="no resume attempt open"):
        resumer.answer(ResumeChallenge(bytes(NONCE_BYTES), 0, bytes(32)))


def test_the_challengers_proof_reflected_back_is_refused() -> None:
    console_key, agent_key = paired_keys()
    resumer, verifier = Resumer(console_key, "console"), ResumeVerifier(agent_key, "agent")
    challenge = verifier.challenge(resumer.request(0), 0)
    with pytest.raises(ResumeError):
        verifier.verify(challenge.proof)


def test_offsets_changed_on_the_way_are_caught() -> None:
    # A broker that edits an offset would make bytes be lost or doubled.
    console_key, agent_key = paired_keys()
    resumer, verifier = Resumer(console_key, "console"), ResumeVerifier(agent_key, "agent")
    request = resumer.request(10)
    with pytest.raises(ResumeError):
        verifier.verify(resumer.answer(verifier.challenge(replace(request, received=9), 20)))
    challenge = verifier.challenge(resumer.request(10), 20)
    with pytest.raises(ResumeError, match="not from the paired end"):
        resumer.answer(replace(challenge, received=21))


def test_a_key_of_another_session_does_not_fit() -> None:
    console_key, _ = paired_keys("s-1")
    _, other_agent_key = paired_keys("s-2")
    with pytest.raises(ResumeError):
        exchange(Resumer(console_key, "console"), ResumeVerifier(other_agent_key, "agent"))
    secret = bytes(range(32))
    assert ResumeKey(secret, "s-1").prove("console", b"t") != \
        ResumeKey(secret, "s-2").prove("console", b"t")


def test_malformed_requests_are_refused_before_any_proof() -> None:
    console_key, agent_key = paired_keys()
    verifier = ResumeVerifier(agent_key, "agent")
    request = Resumer(console_key, "console").request(0)
    for bad in (replace(request, nonce=b"short"), replace(request, attempt=0),
                replace(request, attempt=True), replace(request, received=-1)):
        with pytest.raises(ResumeError):
            verifier.challenge(bad, 0)
    with pytest.raises(ResumeError):
        verifier.verify(b"x" * 31)  # no challenge open, and the wrong length


def test_nonces_come_from_the_injected_source() -> None:
    console_key, agent_key = paired_keys()
    counter = iter(range(1, 100))
    def fixed(n: int) -> bytes:
        return bytes([next(counter)]) * n
    resumer = Resumer(console_key, "console", fixed)
    verifier = ResumeVerifier(agent_key, "agent", fixed)
    request = resumer.request(0)
    assert request.nonce == b"\x01" * NONCE_BYTES
    assert verifier.challenge(request, 0).nonce == b"\x02" * NONCE_BYTES


# --- the window and the backoff, on a fake clock ----------------------------


def test_a_lost_peer_may_resume_within_the_window_only() -> None:
    window = ResumeWindow()
    assert window.window == RESUME_WINDOW_SECONDS == 120
    assert not window.down and not window.may_resume(0.0) and window.deadline() is None
    window.lost(1000.0)
    window.lost(1100.0)  # a drop during the reconnects does not extend it
    assert window.deadline() == 1120.0
    assert window.may_resume(1119.9) and window.remaining(1119.0) == pytest.approx(1.0)
    assert not window.may_resume(1120.0) and window.expired(1120.0)
    assert window.remaining(1500.0) == 0.0
    assert window.next_attempt(1120.0) is None


def test_resuming_reports_the_gap_and_closes_the_window() -> None:
    window = ResumeWindow(window=30)
    window.lost(50.0)
    assert window.resumed(53.5) == pytest.approx(3.5)
    assert not window.down and not window.expired(1000.0)
    with pytest.raises(ValueError):
        window.resumed(60.0)


def test_the_backoff_grows_is_jittered_and_capped() -> None:
    rng = random.Random(7)
    backoff = Backoff(rng.random)
    delays = [backoff.next_delay() for _ in range(20)]
    step = 0.5
    for delay in delays:
        assert step / 2 <= delay <= step
        step = min(BACKOFF_MAX_SECONDS, step * 2)
    assert max(delays) <= BACKOFF_MAX_SECONDS
    assert len(set(delays)) == len(delays)  # jittered: no two alike
    again = Backoff(random.Random(7).random)
    assert [again.next_delay() for _ in range(20)] == delays
    backoff.reset()
    assert backoff.next_delay() <= 0.5


@pytest.mark.parametrize("value", [-5.0, 0.0, 1.0, 7.0])
def test_a_bad_random_source_cannot_unbound_the_delay(value: float) -> None:
    backoff = Backoff(lambda: value, first=2.0, cap=2.0)
    assert 1.0 <= backoff.next_delay() <= 2.0


def test_reconnect_attempts_never_reach_past_the_deadline() -> None:
    now = 0.0
    window = ResumeWindow(window=RESUME_WINDOW_SECONDS, backoff=Backoff(lambda: 0.999))
    window.lost(now)
    tries = 0
    while (delay := window.next_attempt(now)) is not None:
        assert 0 < delay <= BACKOFF_MAX_SECONDS
        now += delay
        assert now <= RESUME_WINDOW_SECONDS
        tries += 1
    assert now == pytest.approx(RESUME_WINDOW_SECONDS)  # the last try came just in time
    assert 10 < tries < 30


def test_a_resume_resets_the_backoff() -> None:
    window = ResumeWindow(backoff=Backoff(lambda: 1.0))
    window.lost(0.0)
    for _ in range(6):
        window.next_attempt(0.0)
    assert window.next_attempt(0.0) == BACKOFF_MAX_SECONDS
    window.resumed(5.0)
    window.lost(10.0)
    assert window.next_attempt(10.0) == 0.5


def test_while_the_link_is_up_the_oldest_bytes_give_way_and_a_resume_needs_the_rest() -> None:
    """A peer whose SSH window runs ahead of its acknowledgements (OpenSSH
    grants 2 MiB; acks take the broker's control path) must not end a healthy
    session: the bytes go out, the bound holds, and only a resume from before
    what is still held is refused."""
    sender = ReplayBuffer(10)
    sender.push(b"0123456789")
    assert sender.push(b"abcd", evict=True) == 10
    assert sender.held == 10 and sender.sent == 14
    assert sender.kept_from == 4 and sender.acked == 0 and not sender.complete
    sender.ack(2)  # an ack from before what is held moves nothing out
    assert sender.kept_from == 4 and sender.held == 10
    with pytest.raises(ResumeError, match="more was in flight"):
        sender.replay_from(3)
    assert sender.replay_from(6) == b"6789abcd"
    assert sender.complete and sender.acked == sender.kept_from == 6


def test_a_push_larger_than_the_buffer_keeps_its_tail() -> None:
    sender = ReplayBuffer(4)
    sender.push(b"0123456789", evict=True)
    assert sender.kept_from == 6 and sender.replay_from(8) == b"89"
