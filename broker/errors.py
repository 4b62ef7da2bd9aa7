"""The broker's exception root.

    BrokerError                 anything the broker reports to a person
    ├── ConfigError             bad flags, missing certificate or key files
    ├── RegistryError           engineer registry: bad name, key, role, duplicate
    ├── AuditError              audit log problems
    │   └── AuditWriteError     an event could not be made durable: fail closed
    └── PkiError                certificate material could not be made or read

Messages are written for the operator who reads them; `exit_code` maps each
branch to a process exit status in one place (`broker.__main__`).
"""

from __future__ import annotations


class BrokerError(Exception):
    """Root of every error the broker reports to a person."""

    exit_code = 1


class ConfigError(BrokerError):
    exit_code = 2


class RegistryError(BrokerError):
    exit_code = 3


class AuditError(BrokerError):
    exit_code = 4


class AuditWriteError(AuditError):
    """The audit log could not record an event; nothing may proceed without it."""


class PkiError(BrokerError):
    exit_code = 5
