"""A warning logged in the agent or the console must not reach the person's
terminal through logging's last-resort handler."""

from __future__ import annotations

import subprocess
import sys

LEAK = ("import logging; {setup}logging.getLogger('consentry.agent').warning('LEAK %s', 1)")


def _stderr(setup: str) -> str:
    return subprocess.run([sys.executable, "-c", LEAK.format(setup=setup)],
                          capture_output=True, text=True, timeout=30).stderr


def test_without_it_a_warning_is_printed() -> None:
    assert "LEAK 1" in _stderr("")  # the test can fail: this is what is kept off


def test_the_programs_keep_warnings_off_the_screen() -> None:
    for program in ("agent", "console"):
        # --print-config returns right after reading the settings.
        setup = f"import {program}.__main__ as m; m.main(['--print-config']); "
        assert _stderr(setup) == "", program
