"""The agent's exception root.

    AgentError          anything the agent reports to the customer
    ├── SetupError      bad flags, unreadable state directory or CA file
    └── BrokerLost      the broker could not be reached or went away

`exit_code` maps each branch to a process exit status in `agent.__main__`.
"""

from __future__ import annotations


class AgentError(Exception):
    exit_code = 1


class SetupError(AgentError):
    exit_code = 2


class BrokerLost(AgentError):
    exit_code = 3
