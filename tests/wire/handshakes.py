"""Two client handshakes, console and agent, paired back to back (as h11's
tests pair two connections): directly, with a few lines standing in for
the broker's relay, or through the broker's real `SessionMachine`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from broker.wire.code import JoinCode
from broker.wire.machine.actions import Action
from broker.wire.machine.actions import Send as BrokerSend
from broker.wire.machine.handshake import (
    AgentSide,
    ConsoleSide,
    Event,
    Handshake,
    Output,
    Send,
)
from broker.wire.machine.session import AGENT_SESSION, CONSOLE
from broker.wire.messages import Message, decode, encode

CODE = JoinCode("4821", "193775")
ENGINEER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost"


def message(msg_type: str, **fields: object) -> Message:
    """A message as the broker's frame would decode (so the codec checks it)."""
    return decode(encode(msg_type, **fields))


def console_side(ssh_key: str = ENGINEER_KEY, wants: tuple[str, ...] = ("view",)) -> ConsoleSide:
    return ConsoleSide(wants, ssh_key)


def agent_side(engineer_key: str = ENGINEER_KEY, timeout: int = 60) -> AgentSide:
    return AgentSide(session="s1", token="tok", engineer_key=engineer_key, host_key=HOST_KEY,
                     consent_timeout=timeout)


# A hook that may change a body in transit: (sender role, type, fields) -> fields.
Tamper = Callable[[str, str, dict[str, object]], dict[str, object]]


def _untouched(_role: str, _type: str, fields: dict[str, object]) -> dict[str, object]:
    return fields


@dataclass
class Pair:
    """A console and an agent handshake and everything each produced."""

    console: Handshake
    agent: Handshake
    events: dict[str, list[Event]] = field(default_factory=lambda: {"console": [],
                                                                     "agent": []})
    sent: dict[str, list[Send]] = field(default_factory=lambda: {"console": [], "agent": []})

    def take(self, role: str, outputs: list[Output]) -> list[Send]:
        sends = [o for o in outputs if isinstance(o, Send)]
        self.sent[role].extend(sends)
        self.events[role].extend(o for o in outputs if not isinstance(o, Send))
        return sends

    def of(self, role: str) -> Handshake:
        return self.console if role == "console" else self.agent


class DirectRelay:
    """The broker's part in pairing, as little as it is: `joined` to the
    console, `pake` and `sealed` across unopened. What else a broker says
    the test says itself."""

    def __init__(self, pair: Pair, tamper: Tamper = _untouched) -> None:
        self.pair = pair
        self.tamper = tamper
        self.now = 0.0

    def start(self) -> None:
        self.pair.take("console", self.pair.console.start(self.now))
        self.pair.take("agent", self.pair.agent.start(self.now))
        self.deliver("console", message("joined", session="s1", alias="Front Desk"))

    def deliver(self, role: str, msg: Message) -> None:
        """`msg` reaches `role`; whatever it sends in return that the relay
        carries goes on to the other side."""
        for out in self.pair.take(role, self.pair.of(role).receive(msg, self.now)):
            if out.type in ("pake", "sealed"):
                other = "agent" if role == "console" else "console"
                fields = self.tamper(role, out.type, dict(out.fields))
                self.deliver(other, message(out.type, **fields))


def paired(*, console: ConsoleSide | None = None, agent: AgentSide | None = None,
           code: JoinCode = CODE, agent_code: JoinCode | None = None,
           tamper: Tamper = _untouched) -> tuple[Pair, DirectRelay]:
    """Both handshakes run as far as they go on their own (the agent then
    waits for the customer, if pairing worked)."""
    pair = Pair(Handshake(console or console_side(), code),
                Handshake(agent or agent_side(), agent_code or code))
    relay = DirectRelay(pair, tamper)
    relay.start()
    return pair, relay


def broker_sends(actions: list[Action]) -> list[tuple[str, Message]]:
    """The control messages a batch of the session machine's actions sends,
    as (connection, message)."""
    return [(a.to, message(a.type, **a.fields)) for a in actions if isinstance(a, BrokerSend)]


ROLE_OF = {CONSOLE: "console", AGENT_SESSION: "agent"}
CONN_OF = {"console": CONSOLE, "agent": AGENT_SESSION}
