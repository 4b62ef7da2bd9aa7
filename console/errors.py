"""The console's exception root.

    ConsoleError              anything the console reports to the engineer
    ├── TerminalError         the engineer's own terminal failed mid-session
    ├── UsageError            bad flags or a code that cannot be read
    ├── IdentityError         the SSH key cannot be read (missing, passphrase)
    ├── BrokerError           the broker is unreachable, untrusted or refused
    │   ├── LinkLost          the connection to the broker broke mid-session
    │   └── BrokerShutdown    the broker was stopped or restarted by its operator
    └── JoinRefused           the join did not lead to a session
        ├── WrongCode         the code did not match (it is now burned)
        ├── SessionFull       the shared session already has the most engineers
        ├── NotApproved       the customer declined or did not answer
        └── KeyMismatch       the customer's computer saw another engineer key
                              than the broker announced (possible interception)

`exit_code` maps each branch to a process exit status in `console.__main__`.
"""

from __future__ import annotations


class ConsoleError(Exception):
    exit_code = 1


class TerminalError(ConsoleError):
    """The engineer's terminal could not be read or written (it hung up, or
    the output went to a pipe that closed). Not a leave: exit 1, and the
    broker is not told the engineer left."""


class UsageError(ConsoleError):
    exit_code = 2


class IdentityError(ConsoleError):
    exit_code = 3


class BrokerError(ConsoleError):
    exit_code = 4


class LinkLost(BrokerError):
    """Nobody ended the session: the link to the broker broke (a crash, a
    network failure). Exit 4, like any other broker failure."""


class BrokerShutdown(BrokerError):
    """The broker said it is shutting down (a stop or a restart): the session
    is over, through nobody's fault here, and a new join is the way on."""

    exit_code = 9


class JoinRefused(ConsoleError):
    exit_code = 5


class SessionFull(JoinRefused):
    """The customer's invitation is for a session that already has
    MAX_ENGINEERS_PER_SESSION engineers: refused by the broker, the customer
    not asked. Exit 5, like any join refusal."""


class WrongCode(JoinRefused):
    exit_code = 6


class NotApproved(JoinRefused):
    exit_code = 7


class KeyMismatch(JoinRefused):
    """Not the code's fault: the key this console offered in pairing is not
    the one the broker told the customer's computer to expect."""

    exit_code = 8
