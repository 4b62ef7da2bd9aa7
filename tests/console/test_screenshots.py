"""Keep docs/screenshots.py working: it must photograph every main screen."""

from __future__ import annotations

import importlib.util
from pathlib import Path


async def test_screenshots_are_taken(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[2] / "docs" / "screenshots.py"
    spec = importlib.util.spec_from_file_location("screenshots", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = await module.take(tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["console-audit.svg", "console-chat.svg", "console-connect.svg",
                     "console-files.svg", "console-home.svg", "console-session.svg"]
    for path in written:
        assert path.read_text().startswith("<svg")
    assert "error.log" in (tmp_path / "console-session.svg").read_text()
    assert "fix-4711.patch" in (tmp_path / "console-files.svg").read_text()
    assert "restart" in (tmp_path / "console-chat.svg").read_text()
