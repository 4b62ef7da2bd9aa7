"""The device identity on disk: private modes, stable across runs."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.errors import SetupError
from agent.identity import load_identity
from broker.wire.receipt import Receipt, sign_receipt, verify_receipt


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_private_and_stable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = load_identity(state)
    assert _mode(state) == 0o700
    assert _mode(state / "device.key") == 0o600
    assert _mode(state / "device.id") == 0o600
    again = load_identity(state)
    assert again.device_id == first.device_id
    assert again.public_key == first.public_key


def test_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    load_identity(tmp_path)
    (tmp_path / "device.key").chmod(0o644)
    with pytest.raises(SetupError, match="chmod 600"):
        load_identity(tmp_path)


def test_receipts_kept_privately_and_verifiable(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    identity = load_identity(tmp_path)
    receipt = Receipt.make(
        session="s1", device_id=identity.device_id, engineer="alice",
        key_fingerprint="SHA256:x", asked=("view",), granted=("view",),
        decision="granted", now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    data, signature = sign_receipt(receipt, identity.key)
    identity.keep_receipt(data, signature)
    kept = tmp_path / "receipts.jsonl"
    assert _mode(kept) == 0o600
    import json

    line = json.loads(kept.read_text().splitlines()[0])
    assert verify_receipt(line["receipt"].encode(), bytes.fromhex(line["signature"]),
                          identity.public_key) == receipt


def test_keeps_the_brokers_checkpoint_as_a_witness_line(tmp_path: Path) -> None:
    import nacl.signing

    from broker.audit.checkpoint_record import make_checkpoint, parse_checkpoint

    identity = load_identity(tmp_path)
    audit_key = nacl.signing.SigningKey.generate()
    checkpoint = make_checkpoint(audit_key, seq=9, hash="a" * 64, time="2026-01-01T00:00:00Z",
                                 prev="0" * 64)
    assert identity.keep_checkpoint(checkpoint.text(), 7)
    assert not identity.keep_checkpoint(checkpoint.text(), 10)  # does not cover it
    assert not identity.keep_checkpoint('{"not": "a checkpoint"}', 1)
    kept = tmp_path / "checkpoints.jsonl"
    assert kept.read_bytes() == checkpoint.line()
    assert oct(kept.stat().st_mode & 0o777) == "0o600"
    assert parse_checkpoint(kept.read_text(), audit_key.verify_key).seq == 9
