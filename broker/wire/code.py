"""Join codes: ``NAMEPLATE-SSS-SSS``, e.g. 4821-193-775.

The nameplate routes the join to the right agent at the broker; the six
secret digits never leave the agent and the console, and are the SPAKE2
password. The nameplate is four digits while few agents wait and grows
with their number, so that a made-up one almost never finds a waiting agent
(`broker.wire.limits.NAMEPLATE_SPARSITY`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from broker.wire.errors import CodeError
from broker.wire.limits import MAX_NAMEPLATE_DIGITS, SECRET_DIGITS

__all__ = ["JoinCode", "draw_secret", "parse_code"]


@dataclass(frozen=True)
class JoinCode:
    nameplate: str
    secret: str

    def __str__(self) -> str:
        half = SECRET_DIGITS // 2
        return f"{self.nameplate}-{self.secret[:half]}-{self.secret[half:]}"

    @property
    def password(self) -> bytes:
        """The SPAKE2 password: binds the nameplate to the secret, so a code
        cannot be replayed against another waiting agent."""
        return f"consentry-code:{self.nameplate}:{self.secret}".encode()


def draw_secret() -> str:
    """Six uniformly random digits from the OS CSPRNG."""
    return f"{secrets.randbelow(10**SECRET_DIGITS):0{SECRET_DIGITS}d}"


def parse_code(text: str) -> JoinCode:
    """Read a code as a person types it: dashes and spaces are optional."""
    digits = "".join(ch for ch in text if ch not in " -\t")
    if not digits.isascii() or not digits.isdigit():
        raise CodeError("a join code has only digits and dashes, like 4821-193-775")
    nameplate_len = len(digits) - SECRET_DIGITS
    if not 1 <= nameplate_len <= MAX_NAMEPLATE_DIGITS:
        raise CodeError("that code is too short or too long; it looks like 4821-193-775")
    nameplate = digits[:nameplate_len]
    if nameplate.startswith("0"):
        raise CodeError("a join code never starts with 0; please check it")
    return JoinCode(nameplate, digits[nameplate_len:])
