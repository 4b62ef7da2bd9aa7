"""`consentry-broker audit ...`: one module per concern, each registering its
own sub-commands, so they grow without stepping on each other."""

from __future__ import annotations

import argparse

from broker.audit_cli import export, integrity, listing, migrate, privacy, review


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    for module in (listing, review, export, integrity, privacy, migrate):
        module.register(sub, common)
