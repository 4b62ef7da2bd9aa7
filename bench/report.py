"""The results table, as Markdown for people and JSON for tools."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench.cases import Mode, Row

HOW_TO_READ = """\
How to read this: every ratio compares consentry with a baseline measured in
the same run, repetition by repetition (the machine is shared and noisy, so
absolute numbers move between runs; ratios much less). Figures are medians,
with (min-max, n=repetitions). "met" compares the median with the target.
Why an unmet target is unmet, from profiles: README.md, "Performance".
"""


def write(rows: list[Row], mode: Mode, out: Path, seconds: float) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    name = "smoke" if mode.smoke else "latest"
    lines = [
        f"# consentry benchmark ({'smoke' if mode.smoke else 'full'} run, {stamp})",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, "
        f"{_cores()} cores; run took {seconds:.0f} s.",
        "",
        HOW_TO_READ,
        "| what | baseline (same run) | target | result | met |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        met = {True: "yes", False: "**no**", None: "-"}[row.met]
        lines.append(f"| {row.what} | {row.baseline} | {row.target} | {row.result} | {met} |")
    lines += _side_by_side(rows)
    notes = [row for row in rows if row.note]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- **{row.what}**: {row.note}" for row in notes]
    md = out / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    js = out / f"{name}.json"
    js.write_text(json.dumps({"when": stamp, "mode": asdict(mode), "seconds": seconds,
                              "rows": [asdict(r) for r in rows]}, indent=2, default=str))
    return md, js


SIDE_BY_SIDE = """\
The same measuring code on every path, taking turns in short blocks
(bench/bastion.py): the harness's own sshd for the customer and the bastion,
the stock ssh client, aes128-gcm, a PTY running `stty raw -echo; cat`.
"vs -J" is consentry over the bastion -J path.
"""


def _side_by_side(rows: list[Row]) -> list[str]:
    """The bastion rows again, as issue 15's table: each path a column."""
    compared = [row for row in rows if "cells" in row.detail]
    if not compared:
        return []
    paths = list(compared[0].detail["cells"])
    lines = ["", "## consentry vs OpenSSH bastion, same run", "", SIDE_BY_SIDE,
             "| row | " + " | ".join(paths) + " | target | vs -J | met |",
             "|---|" + "---|" * (len(paths) + 3)]
    for row in compared:
        cells = row.detail["cells"]
        met = {True: "met", False: "**not met**", None: "-"}[row.met]
        ratio = row.result.split(";", 1)[0]
        lines.append(f"| {row.detail['label']} | " + " | ".join(cells[p] for p in paths)
                     + f" | {row.target} | {ratio} | {met} |")
    return lines


def _cores() -> int:
    import os

    return os.cpu_count() or 1
