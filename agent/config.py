"""What the customer's agent may do, chosen on the customer's machine.

The broker cannot loosen any of this: the most an engineer can ever be
granted (`max_rights`), how long a consent prompt waits, and which optional
identifying details leave the machine (none by default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.consent import parse_max_rights
from agent.errors import SetupError
from agent.transfers.jail import MAX_FILE_BYTES, MAX_SESSION_BYTES
from broker.wire.codes import RIGHTS
from broker.wire.limits import (
    DEFAULT_CONSENT_TIMEOUT,
    MAX_CONSENT_TIMEOUT,
    MAX_LABEL,
    MIN_CONSENT_TIMEOUT,
)
from broker.wire.text import validate_label


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "consentry-agent"


@dataclass(frozen=True)
class AgentConfig:
    broker: str = "wss://127.0.0.1:8443"
    ca: Path = Path("certs/ca.crt")
    alias: str = "unnamed device"
    consent_timeout: float = DEFAULT_CONSENT_TIMEOUT
    # A comma list of rights, e.g. "view,files"; `control` alone means view
    # and control (see agent.consent.allowed).
    max_rights: str = ",".join(RIGHTS)
    share_hostname: bool = False
    share_user: bool = False
    state_dir: Path = field(default_factory=default_state_dir)
    shell: str = os.environ.get("SHELL") or "/bin/sh"
    # File transfer: where files engineers send go (a folder per session
    # under it; default ~/consentry-transfers), a folder shared read-only,
    # and the customer's limits (per file, per session, either way).
    transfers_dir: Path | None = None
    share: Path | None = None
    max_file_bytes: int = MAX_FILE_BYTES
    max_session_bytes: int = MAX_SESSION_BYTES

    def __post_init__(self) -> None:
        problem = validate_label(self.alias, MAX_LABEL)
        if problem:
            raise SetupError(f"--alias {problem}")
        if not MIN_CONSENT_TIMEOUT <= self.consent_timeout <= MAX_CONSENT_TIMEOUT:
            raise SetupError(
                f"--consent-timeout must be between {MIN_CONSENT_TIMEOUT:g} and "
                f"{MAX_CONSENT_TIMEOUT:g} seconds"
            )
        if parse_max_rights(self.max_rights) is None:
            raise SetupError("--max-rights must be a comma list drawn from "
                             f"{', '.join(RIGHTS)} (for example view,files)")
        if self.share is not None and not self.share.is_dir():
            raise SetupError(f"--share {self.share} is not a folder")
        if self.max_file_bytes <= 0 or self.max_session_bytes <= 0:
            raise SetupError("--max-file-size and --max-session-size must be more than 0")
