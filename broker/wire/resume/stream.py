"""Byte offsets and a bounded replay buffer for one direction of the SSH stream.

The sender numbers every byte of the SSH stream it puts on the link: byte
``n`` of the stream has offset ``n``, counted from 0 for the whole session,
across links. It keeps what it sent until the peer acknowledges it, so after
a drop it can send again exactly what the peer did not get. The receiver
counts what it has and drops a replayed prefix it already holds, so the SSH
connection above sees every byte once: none lost, none doubled.

No I/O here: the link's driver calls these with the bytes it moves.
"""

from __future__ import annotations

from collections import deque

from broker.wire.errors import ResumeError
from broker.wire.limits import MAX_REPLAY_BYTES, MAX_STREAM_OFFSET

__all__ = [
    "ACK_EVERY_BYTES",
    "MAX_REPLAY_BYTES",
    "MAX_STREAM_OFFSET",
    "ReceiveCursor",
    "ReplayBuffer",
]

# The receiver acknowledges at least this often, so a sender that streams
# holds at most about an SSH window in flight plus this much while the link
# is up: a quarter of the replay buffer. Each `ack` crosses the broker's
# control path (a few hundred microseconds of its CPU), so not more often:
# at 256 KiB the broker spent a third more CPU per GiB of a bulk copy.
ACK_EVERY_BYTES = MAX_REPLAY_BYTES // 4


def _check_offset(offset: int, what: str) -> None:
    # bool is an int in Python; a `true` from JSON is not an offset.
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise ResumeError(f"{what} is not a byte offset")
    if not 0 <= offset <= MAX_STREAM_OFFSET:
        raise ResumeError(f"{what} {offset} is out of range")


class ReplayBuffer:
    """The sending side of one direction: numbers bytes, keeps the
    unacknowledged ones (at most `limit`), replays them after a drop.

    ``acked <= kept_from <= sent`` always; the bytes held are exactly those
    from offset `kept_from` to offset `sent`. `kept_from` is `acked` unless
    a push while the link was up let the oldest unacknowledged bytes go
    (`push(..., evict=True)`): the link is fine then and the peer will have
    them, but until it acknowledges past `kept_from` a drop could not be
    resumed without a hole.
    """

    def __init__(self, limit: int = MAX_REPLAY_BYTES) -> None:
        if limit <= 0:
            raise ValueError("a replay buffer needs room for at least one byte")
        self.limit = limit
        # Chunks as pushed, oldest first: dropping from the front and adding at
        # the back copy nothing. (One bytearray did: once bytes had been deleted
        # from its front, growing it moved everything held, up to the whole
        # 4 MiB for each 32 KiB SFTP packet.)
        self._held: deque[bytes] = deque()
        self._size = 0
        self._acked = 0
        self._kept_from = 0

    @property
    def acked(self) -> int:
        """Offset up to which the peer said it has everything; older bytes are gone."""
        return self._acked

    @property
    def kept_from(self) -> int:
        """Offset of the oldest byte still held: a resume can start no earlier."""
        return self._kept_from

    @property
    def complete(self) -> bool:
        """Whether every unacknowledged byte is held (a drop now can be resumed)."""
        return self._kept_from == self._acked

    @property
    def sent(self) -> int:
        """Offset of the next byte to send: how many bytes were numbered so far."""
        return self._kept_from + self._size

    @property
    def held(self) -> int:
        """Bytes kept for a possible replay."""
        return self._size

    @property
    def room(self) -> int:
        """How many more bytes may be sent before the peer acknowledges some.
        At 0 the driver stops reading its source (backpressure)."""
        return self.limit - self._size

    def push(self, data: bytes | bytearray | memoryview, evict: bool = False) -> int:
        """Number `data` as the next bytes of the stream and keep them until
        acknowledged. Returns the offset of its first byte.

        More than `room` is refused, since dropping bytes would break the
        stream after a drop; unless `evict`: the link is up, so the bytes go
        out anyway and the oldest held ones are let go to keep the bound
        (a sender whose acknowledgements lag its peer's SSH window can get
        here without anything being wrong)."""
        size = len(data)
        if size > self.room and not evict:
            raise ResumeError(
                f"the replay buffer is full ({self.held} of {self.limit} bytes not "
                f"acknowledged); {size} more bytes cannot be kept")
        if self.sent + size > MAX_STREAM_OFFSET:
            raise ResumeError("the stream reached its largest offset")
        start = self.sent
        if size:
            self._held.append(bytes(data))
            self._size += size
        over = self._size - self.limit
        if over > 0:
            self._drop(over)
            self._kept_from += over
        return start

    def _drop(self, count: int) -> None:
        """Forget the `count` oldest bytes held."""
        held = self._held
        while count:
            first = held[0]
            if len(first) <= count:
                held.popleft()
                count -= len(first)
                self._size -= len(first)
            else:
                held[0] = first[count:]
                self._size -= count
                count = 0

    def ack(self, offset: int) -> None:
        """The peer has every byte before `offset`: forget them.

        An offset beyond what was sent is a lie (or a forgery) and an offset
        before the last acknowledgement goes backwards; both are errors, since
        the stream would no longer be what both ends think it is."""
        _check_offset(offset, "the acknowledged offset")
        if offset > self.sent:
            raise ResumeError(
                f"the peer acknowledged offset {offset}, but only {self.sent} bytes were sent")
        if offset < self._acked:
            raise ResumeError(
                f"the peer acknowledged offset {offset} after it had acknowledged {self._acked}")
        if offset > self._kept_from:
            self._drop(offset - self._kept_from)
            self._kept_from = offset
        self._acked = offset

    def replay_from(self, offset: int) -> bytes:
        """After a drop: the bytes after the peer's last received `offset`,
        exactly, to send first on the new link. Also acknowledges `offset`
        (the peer says it has everything before it).

        Refused if the peer claims more than was sent, or less than it had
        already acknowledged (those bytes were dropped and cannot be sent
        again), or less than is still held (let go while the link was up)."""
        _check_offset(offset, "the peer's received offset")
        if offset < self._acked:
            raise ResumeError(
                f"the peer asks to resume from offset {offset}, but it had acknowledged "
                f"{self._acked} and the bytes before that are gone")
        if offset < self._kept_from:
            raise ResumeError(
                f"the peer asks to resume from offset {offset}, but more was in flight "
                f"when the link broke than this end keeps; it holds from {self._kept_from}")
        self.ack(offset)
        return b"".join(self._held)


class ReceiveCursor:
    """The receiving side of one direction: how far the stream was received,
    and which part of a (replayed) frame is new.

    On a link, frames follow each other; only when a resumed stream starts
    does the sender say where (`restart`), and it may start earlier than what
    was received (a replay from its last acknowledged offset). The prefix
    already held is dropped here, so the SSH connection above sees each byte
    once.
    """

    def __init__(self, ack_every: int = ACK_EVERY_BYTES) -> None:
        if ack_every <= 0:
            raise ValueError("acknowledgements need a positive spacing")
        self.ack_every = ack_every
        self._received = 0
        self._incoming = 0  # offset of the next byte to arrive on this link
        self._acked = 0

    @property
    def received(self) -> int:
        """Offset of the next byte the stream above expects: everything before it arrived."""
        return self._received

    def restart(self, offset: int) -> None:
        """A resumed stream's bytes begin at `offset` (as its sender announced).

        It may repeat what was received, but never skip: a start beyond
        `received` would lose the bytes in between."""
        _check_offset(offset, "the replay's start")
        if offset > self._received:
            raise ResumeError(
                f"the replay starts at offset {offset}, but only {self._received} bytes "
                "were received: the bytes in between would be lost")
        self._incoming = offset

    def accept(self, data: bytes) -> bytes:
        """A frame from the link; returns the part not received before (maybe empty)."""
        start = self._incoming
        end = start + len(data)
        if end > MAX_STREAM_OFFSET:
            raise ResumeError("the stream went past its largest offset")
        self._incoming = end
        if end <= self._received:
            return b""
        fresh = data[self._received - start:] if start < self._received else data
        self._received = end
        return fresh

    def ack_due(self) -> bool:
        """Enough arrived since the last `ack` that the sender should hear of it."""
        return self._received - self._acked >= self.ack_every

    def take_ack(self) -> int | None:
        """The offset to acknowledge now, or None if nothing new arrived since
        the last one. The driver sends it when `ack_due`, and on an idle timer."""
        if self._received == self._acked:
            return None
        self._acked = self._received
        return self._acked
