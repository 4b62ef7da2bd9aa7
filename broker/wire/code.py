"""Join codes: ``NAMEPLATE-SSS-SSS``, e.g. 4821-193-775.

The nameplate routes the join to the right agent at the broker; the six
secret digits never leave the agent and the console, and are the SPAKE2
password. The nameplate is four digits while few agents wait and grows
with their number, so that a made-up one almost never finds a waiting agent
(`broker.wire.limits.NAMEPLATE_SPARSITY`).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from broker.wire.errors import CodeError
from broker.wire.limits import MAX_NAMEPLATE_DIGITS, MIN_NAMEPLATE_DIGITS, SECRET_DIGITS

__all__ = ["JoinCode", "draw_secret", "parse_code"]

_SEPARATORS = re.compile(r"[ \t-]+")
_LIKE = "like 4821-193-775"
_NAMEPLATE_RANGE = f"{MIN_NAMEPLATE_DIGITS} to {MAX_NAMEPLATE_DIGITS}"


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
    """Read a code as a person types it, and say what is wrong with a typo.

    Dashes and spaces between the groups are optional, but where they are
    typed they count: the first group is the nameplate, and the groups after
    it must hold exactly the six secret digits. So a code missing a digit
    (581-128-45) is refused here, instead of being read as nameplate 58 and
    sent to the broker, which would answer that no customer is waiting.
    """
    groups = [group for group in _SEPARATORS.split(text.strip(" \t")) if group]
    if not groups or not all(group.isascii() and group.isdigit() for group in groups):
        raise CodeError(f"a join code has only digits and dashes, {_LIKE}")
    if len(groups) == 1:
        digits = groups[0]
        nameplate_len = len(digits) - SECRET_DIGITS
        if not MIN_NAMEPLATE_DIGITS <= nameplate_len <= MAX_NAMEPLATE_DIGITS:
            raise CodeError(
                f"that code has {len(digits)} digits: a code has a nameplate of "
                f"{_NAMEPLATE_RANGE} digits and {SECRET_DIGITS} secret digits, {_LIKE}")
        nameplate, secret = digits[:nameplate_len], digits[nameplate_len:]
    else:
        nameplate, secret = groups[0], "".join(groups[1:])
        if len(secret) != SECRET_DIGITS:
            raise CodeError(
                f"that code has {len(secret)} secret digits after {nameplate}; a code has "
                f"{SECRET_DIGITS}, {_LIKE}: please check it with the customer")
        if not MIN_NAMEPLATE_DIGITS <= len(nameplate) <= MAX_NAMEPLATE_DIGITS:
            raise CodeError(
                f"the first group, {nameplate}, has {len(nameplate)} digits; it has "
                f"{_NAMEPLATE_RANGE}, {_LIKE}: please check it with the customer")
    if nameplate.startswith("0"):
        raise CodeError(f"a join code never starts with 0, {_LIKE}: please check it")
    return JoinCode(nameplate, secret)
