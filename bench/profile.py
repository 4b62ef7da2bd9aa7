"""Where keystroke CPU goes in each of the three processes: `make profile`
(`python -m bench.profile`).

A broker and an agent of their own, and the console's client in this
process, as in the keystroke rows: one-byte round trips through the remote
PTY with 2 ms think time, while py-spy samples the broker, the agent and
this process. Idle samples (a thread waiting in epoll) are left out, so the
counts are where the CPU goes. Each stack's innermost frame is charged its
self time; the report gives the top functions and the share of each
library per process, in bench/results/profile.md (README, "Performance",
reads it).

py-spy is not a dependency of consentry: `make profile` installs it into
the venv (`pip install py-spy`). It attaches with ptrace, so it needs root
or `kernel.yama.ptrace_scope=0`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from bench import measure
from bench.fixture import Deployment
from bench.paths import Agents, relayed
from bench.procs import cpu_seconds
from broker import eventloop

THINK_SECONDS = 0.002
RATE = 250  # samples per second per process
TOP = 15
# A frame's library, from its file path as py-spy gives it (shortened to the
# package: "websockets/frames.py", "ssl.py"): first match wins.
LIBRARIES = (
    ("asyncssh", "asyncssh"),
    ("websockets", "websockets"),
    ("ssl (the stdlib's wrappers; OpenSSL under them)", "ssl.py"),
    ("uvloop", "uvloop"),
    ("asyncio", "asyncio"),
    ("consentry: broker/ (in the agent and console: the shared frame path and relay)", "broker"),
    ("consentry agent", "agent"),
    ("consentry console", "console"),
    ("harness", "bench"),
    ("cryptography", "cryptography"),
    ("nacl", "nacl"),
)
# Samples whose innermost Python frame is the loop's `run` were in uvloop's
# own C code: dispatching callbacks, and the system calls it makes itself.
LOOP_FRAME = "Runner.run (asyncio/runners.py)"
LOOP_LABEL = "the event loop in C (uvloop: dispatch and its system calls)"


@dataclasses.dataclass(frozen=True)
class Profile:
    """One process's samples: self time by function and by library."""

    name: str
    samples: int
    functions: Counter[str]
    libraries: Counter[str]
    cpu_seconds: float = 0.0  # from /proc over the same window, py-spy attached


def library_of(frame: str) -> str:
    """`function (path:line)` -> the library its file belongs to."""
    path = frame.rsplit("(", 1)[-1].rsplit(":", 1)[0]
    if path.startswith("asyncio/runners.py") and frame.startswith("Runner.run"):
        return LOOP_LABEL
    parts = path.split("/")
    for name, marker in LIBRARIES:
        if marker in parts or parts[-1] == marker:
            return name
    return "other (stdlib, interpreter)"


def parse_collapsed(lines: Iterable[str], name: str) -> Profile:
    """py-spy's raw output: `thread;frame;frame;... count`, outermost first;
    a frame is `function (path:line)`. The innermost frame gets the samples."""
    functions: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        function = leaf.rsplit(":", 1)[0] + ")" if ":" in leaf else leaf  # no line number
        functions[function] += int(count)
        libraries[library_of(leaf)] += int(count)
        total += int(count)
    return Profile(name, total, functions, libraries)


def report(profiles: list[Profile], strokes: int, seconds: float) -> str:
    lines = [
        "# Where keystroke CPU goes (py-spy)", "",
        f"{strokes} one-byte round trips in {seconds:.0f} s (2 ms think time), sampled at "
        f"{RATE} Hz per process, idle samples left out; self time of the innermost "
        "Python frame (time in C, such as OpenSSL or the kernel, is charged to the "
        "Python function that called it). `make profile` writes this file.", ""]
    for profile in profiles:
        lines += [f"## {profile.name}: {profile.samples} samples; "
                  f"{profile.cpu_seconds / max(strokes, 1) * 1e6:.0f} us of CPU per round trip "
                  "(/proc, with py-spy attached)",
                  "", "| library | share |", "|---|---|"]
        for library, count in profile.libraries.most_common():
            lines.append(f"| {library} | {count / max(profile.samples, 1):.0%} |")
        lines += ["", "| function (self) | share |", "|---|---|"]
        for function, count in profile.functions.most_common(TOP):
            shown = LOOP_LABEL if function == LOOP_FRAME else f"`{function}`"
            lines.append(f"| {shown} | {count / max(profile.samples, 1):.1%} |")
        lines.append("")
    return "\n".join(lines)


def _cpu(pid: int) -> float:
    return time.process_time() if pid == os.getpid() else cpu_seconds(pid)


def _py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("bench.profile: py-spy is not installed: `make profile` installs it "
                         "(pip install py-spy)")
    return found


async def _profile(seconds: float, out: Path) -> Path:
    spy = _py_spy()
    dep = Deployment.create()
    dep.start_broker()
    agents = await Agents.start(dep, 1)
    assert dep.broker is not None
    targets = {"broker": dep.broker.pid, "agent": agents.proc.pid,
               "console (the harness's client)": os.getpid()}
    raw = {name: out / f"profile-{i}.txt" for i, name in enumerate(targets)}
    try:
        async with relayed(dep, agents, 0) as conn:
            chan, tap = await measure.make_echo(conn)
            await measure.keystrokes(chan, tap, 200, THINK_SECONDS)  # warm up
            spies = [await asyncio.create_subprocess_exec(
                spy, "record", "--pid", str(pid), "--rate", str(RATE), "--duration",
                str(int(seconds)), "--format", "raw", "--nonblocking", "-o", str(raw[name]),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for name, pid in targets.items()]
            strokes, began = 0, time.monotonic()
            cpu_before = {name: _cpu(pid) for name, pid in targets.items()}
            while time.monotonic() - began < seconds:
                strokes += len(await measure.keystrokes(chan, tap, 100, THINK_SECONDS))
            elapsed = time.monotonic() - began
            cpu = {name: _cpu(pid) - cpu_before[name] for name, pid in targets.items()}
            for proc in spies:
                _, err = await asyncio.wait_for(proc.communicate(), 60)
                if proc.returncode != 0:
                    raise SystemExit(f"bench.profile: py-spy failed: {err.decode()[-500:]}")
    finally:
        await agents.stop()
        dep.stop()
    profiles = [dataclasses.replace(parse_collapsed(raw[name].read_text().splitlines(), name),
                                    cpu_seconds=cpu[name]) for name in targets]
    for path in raw.values():
        path.unlink()
    md = out / "profile.md"
    md.write_text(report(profiles, strokes, elapsed))
    return md


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="how long to sample (20)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                   help="where profile.md goes (bench/results)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"bench.profile: wrote {eventloop.run(_profile(args.seconds, args.out))}")


if __name__ == "__main__":
    main()
