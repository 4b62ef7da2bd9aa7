"""The known_hosts entry `consentry-console proxy` writes for OpenSSH."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from console.errors import UsageError
from console.known_hosts import MARK, STALE_AFTER, code_part, entry_name, pin_host_key

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"


def test_the_name_is_the_host_name_ssh_was_given() -> None:
    assert entry_name("consentry-4821-193-775") == "consentry-4821-193-775"
    assert entry_name("4821-193-775") == "consentry-4821-193-775"
    assert entry_name("CONSENTRY-4821193775") == "consentry-4821193775"
    assert code_part("consentry-4821-193-775") == "4821-193-775"
    assert code_part("4821-193-775") == "4821-193-775"


@pytest.mark.parametrize("bad", ["4821 193 775", "evil.example", "4821-193-775 ssh-rsa x",
                                 "consentry-", "*"])
def test_a_name_that_is_not_a_code_is_refused(bad: str) -> None:
    with pytest.raises(UsageError, match="digits and dashes"):
        entry_name(bad)


def test_written_private_and_replacing_only_the_same_name(tmp_path: Path) -> None:
    known = tmp_path / "ssh" / "known_hosts"
    known.parent.mkdir()
    known.write_text(f"# mine\nexample.org {KEY_B}\nconsentry-1234-000-111 {KEY_B}\n")
    pin_host_key(known, "consentry-1234-000-111", KEY_A, now=1000.0)
    pin_host_key(known, "consentry-5678-000-222", KEY_B, now=1000.0)
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    assert known.read_text().splitlines() == [
        "# mine", f"example.org {KEY_B}",
        f"consentry-1234-000-111 {KEY_A} {MARK}1000",
        f"consentry-5678-000-222 {KEY_B} {MARK}1000",
    ]
    # No temporary file is left beside it (only the lock).
    assert sorted(p.name for p in known.parent.iterdir()) == ["known_hosts", "known_hosts.lock"]


def test_its_folder_is_made_private_and_old_entries_of_ours_go(tmp_path: Path) -> None:
    known = tmp_path / "new" / "known_hosts"
    pin_host_key(known, "consentry-1234-000-111", KEY_A, now=0.0)
    assert stat.S_IMODE(known.parent.stat().st_mode) == 0o700
    pin_host_key(known, "consentry-5678-000-222", KEY_B, now=STALE_AFTER + 1)
    assert [line.split()[0] for line in known.read_text().splitlines()] == [
        "consentry-5678-000-222"]
