"""Who is in a shared session: the broker's `roster`, as the console keeps
and shows it.

The broker sends a roster to every engineer once a session has had a second
one, after each join, change of rights or departure. Logins and display
names are labels the broker checked, but still text from the network: every
string here is escaped (`printable`) before it is put into words.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.wire.codes import Right
from broker.wire.messages import Message
from broker.wire.text import printable

__all__ = ["Roster", "RosterSeat", "rights_word"]

_NAME_CHARS = 40


def rights_word(rights: tuple[str, ...] | list[str]) -> str:
    """One engineer's rights in one word: control implies view."""
    return Right.CONTROL if Right.CONTROL in rights else Right.VIEW


@dataclass(frozen=True)
class RosterSeat:
    seat: str
    login: str
    display: str
    rights: tuple[str, ...]

    @property
    def name(self) -> str:
        """The display name, escaped (the login when there is none)."""
        return printable(self.display or self.login, _NAME_CHARS)


@dataclass(frozen=True)
class Roster:
    seats: tuple[RosterSeat, ...]
    you: str  # this console's own seat id

    @classmethod
    def from_message(cls, msg: Message) -> Roster:
        """From a validated `roster` frame (`broker.wire.messages` checked its shape)."""
        return cls(tuple(RosterSeat(str(s["seat"]), str(s["login"]), str(s["display"]),
                                    tuple(s["rights"])) for s in msg["seats"]),
                   str(msg["you"]))

    def others(self) -> tuple[RosterSeat, ...]:
        return tuple(s for s in self.seats if s.seat != self.you)

    def text(self) -> str:
        """Everyone, this engineer included, in the broker's order: "Alice
        Example (control), Bob Builder (view)"."""
        return ", ".join(f"{s.name} ({rights_word(s.rights)})" for s in self.seats)

    def others_text(self) -> str:
        """Everyone else, or "nobody else" once the others have gone."""
        others = self.others()
        if not others:
            return "nobody else"
        return ", ".join(f"{s.name} ({rights_word(s.rights)})" for s in others)
