"""What `/healthz` answers: 200 only while this node can do its work, so
that a balancer takes a node that could not record sessions out of the
pool (fail closed).

The audit log's side is what its last write said: a successful append
makes it writable, a failed one (a full disk, the quota, the database
gone) unwritable until the next append succeeds. A node with nothing to
write stays as it was, which is right: nothing has failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

__all__ = ["AuditHealth", "health_answer"]


@dataclass
class AuditHealth:
    writable: bool = True
    problem: str = ""

    def wrote(self, _seq: int = 0, _hash: str = "") -> None:
        """An append listener: a write went through."""
        self.writable, self.problem = True, ""

    def failed(self, problem: str) -> None:
        self.writable, self.problem = False, problem


def health_answer(*, clustered: bool, slot: int | None,
                  audit: AuditHealth) -> tuple[HTTPStatus, str]:
    """The status and one line for a person reading it."""
    if clustered and slot is None:
        return HTTPStatus.SERVICE_UNAVAILABLE, "no cluster lease: this node issues no codes\n"
    if not audit.writable:
        return HTTPStatus.SERVICE_UNAVAILABLE, "the audit log cannot be written\n"
    where = f" (cluster slot {slot})" if clustered else ""
    return HTTPStatus.OK, f"ok{where}\n"
