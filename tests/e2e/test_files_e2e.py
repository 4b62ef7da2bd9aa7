"""File transfer end to end with real processes, one deployment for the module.

The scenario runs once (`story`), then each test checks one thing it left:

1. the plain console's own Ctrl-] f prompt sends one file and fetches
   another, and the console library (SFTP on `open_ssh`) does it again;
   every copy is byte-identical;
2. the customer's PTY showed each transfer's name and size;
3. `..`, a link in the shared folder leading out, and names with control
   characters are refused, each with its sentence;
4. a marker inside the files and their names is nowhere in the broker's
   data directory (every byte of every file, the SQLite ones included) nor
   in its stdout;
5. the audit has a `file_transferred` event per file (direction, bytes,
   outcome) and no name;
6. the customer's own record (`consentry-agent transfers`) names the files.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pexpect
import pytest

from agent.transfers.jail import CONTROL_CHARACTERS, LEAVES_FOLDER, link_outside
from broker.certs import init_dev_pki
from broker.wire.code import parse_code
from console.client import ConsoleClient
from console.identity import load_file_identity
from tests.e2e.conftest import BIN, Deployment, read_code, transcript
from tests.e2e.test_control import expect

# Unique per run, so finding it anywhere means this run's data leaked there.
MARKER = "mk" + secrets.token_hex(4)
# Short names: the customer's 80-column banner has room for about 25
# characters of name beside who is connected and the size.
UP, DOWN = f"u-{MARKER}.bin", f"d-{MARKER}.log"
LIB_UP, LIB_DOWN = f"lu-{MARKER}.bin", f"ld-{MARKER}.log"
UP_SIZE, DOWN_SIZE, LIB_SIZE = 300_000, 400_000, 250_000
PROMPT = "files> "


def blob(size: int) -> bytes:
    """Random bytes with the marker inside them (start, middle, end)."""
    mark = MARKER.encode()
    body = secrets.token_bytes(size - 3 * len(mark))
    third = len(body) // 3
    return mark + body[:third] + mark + body[third:] + mark


@dataclass
class Story:
    dep: Deployment
    agent_screen: str
    console_screen: str
    sent: dict[str, bytes]  # name in the session folder -> what was sent
    fetched: dict[str, tuple[bytes, bytes]]  # name -> (on the customer's disk, as fetched)
    incoming: Path  # the session folders' parent on the customer's computer
    refusals: dict[str, str]  # what was tried -> the reason the library heard


def plain_console_session(dep: Deployment, agent: pexpect.spawn, key: Path, eng: Path) -> str:
    """Session 1: the real `consentry-console join --files`, its Ctrl-] f prompt."""
    console = dep.console(read_code(agent), key, "alice", "--files")
    agent.expect(r"\[a\] allow all of this")
    agent.send("a")
    console.expect("granted: view and files")
    console.expect("connected to front desk")
    console.expect(r"\$ ")  # the remote shell: the console's terminal is raw by now
    console.send("\x1df")
    console.expect(PROMPT)
    console.send(f"put eng/{UP}\r")
    console.expect(rf"sent {UP}: 293\.0 KiB as \./{UP} on the customer's computer")
    agent.expect(rf"Received {UP} \(300 KB\)")
    console.send(f"get /shared/{DOWN} eng/\r")
    console.expect(rf"fetched {DOWN}: 390\.6 KiB saved as {eng / DOWN}")
    agent.expect(rf"Sent /shared/{DOWN} \(400 KB\)")
    console.send("get ../../etc/passwd eng/passwd\r")
    console.expect(r"refused \.\./\.\./etc/passwd: refused: '\.\.' would leave the transfer "
                   "folder")
    console.send("get /shared/escape eng/escape\r")
    console.expect("refused /shared/escape: refused: /shared/escape is a link that leads "
                   "outside the transfer folder")
    console.expect(PROMPT)
    console.send("\x1b")  # Esc: back to the shell
    console.expect("back to the shell")
    console.send("\x1dq")
    console.expect(pexpect.EOF)
    return transcript(console)


Results = tuple[dict[str, bytes], dict[str, bytes], dict[str, str]]


async def library_session(dep: Deployment, agent: pexpect.spawn, key: Path) -> Results:
    """Session 2: the console library's SFTP client over `open_ssh`, for what
    a person cannot type at the prompt (control characters in a name)."""
    code = read_code(agent)
    client = ConsoleClient(dep.url, dep.pki.ca_cert, load_file_identity("alice", key, None))
    join = asyncio.create_task(client.join(parse_code(code), ("view", "files")))
    await expect(agent, r"\[a\] allow all of this")
    agent.send("a")
    joined = await asyncio.wait_for(join, 30)
    sent = {LIB_UP: blob(LIB_SIZE)}
    fetched: dict[str, bytes] = {}
    refusals: dict[str, str] = {}
    conn, pump = await joined.open_ssh()
    try:
        async with conn.start_sftp_client() as sftp:
            async with sftp.open(LIB_UP, "xb") as dst:
                await dst.write(sent[LIB_UP])
            async with sftp.open(f"shared/{LIB_DOWN}", "rb") as src:
                data = await src.read()
                assert isinstance(data, bytes)
                fetched[LIB_DOWN] = data
            tries = {
                "escape": sftp.open(f"ctl-{MARKER}\x1b[2J.txt", "wb"),
                "newline": sftp.open(f"ctl-{MARKER}\nfake line.txt", "wb"),
                "dotdot": sftp.open("../../etc/passwd", "rb"),
                "link": sftp.open("shared/escape", "rb"),
            }
            for what, attempt in tries.items():
                try:
                    await attempt
                except asyncssh.SFTPError as exc:
                    refusals[what] = exc.reason
                else:  # pragma: no cover - the failure the test is for
                    refusals[what] = "opened!"
        await expect(agent, r"Refused sending /shared/escape to Alice")
        # The customer's files panel (Ctrl-] f) has the whole line of each.
        agent.send("\x1df")
        await expect(agent, r"Engineer Alice Example copied /shared/"
                     + LIB_DOWN.replace(".", r"\.") + r" \(250 KB\)")
        await expect(agent, r"Press any key to go back")
        agent.send(" ")
    finally:
        conn.close()
        await joined.leave()
        pump.cancel()
    return sent, fetched, refusals


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    root = tmp_path_factory.mktemp("files")
    dep = Deployment(root=root, pki=init_dev_pki(root / "certs"), data_dir=root / "var")
    try:
        dep.start_broker()
        key = dep.add_engineer("alice", display="Alice Example")
        share, eng = root / "share", root / "eng"
        share.mkdir()
        eng.mkdir()
        (root / "secret.txt").write_text(f"not for engineers {MARKER}")
        (share / "escape").symlink_to(root / "secret.txt")
        sent = {UP: blob(UP_SIZE)}
        (eng / UP).write_bytes(sent[UP])
        on_disk = {DOWN: blob(DOWN_SIZE), LIB_DOWN: blob(LIB_SIZE)}
        for name, data in on_disk.items():
            (share / name).write_bytes(data)
        # A customer's usual terminal: 80 columns, where the banner must still
        # name each file and its size beside who is connected.
        agent = dep.spawn(
            "consentry-agent", "--broker", dep.url, "--ca", str(dep.pki.ca_cert),
            "--state-dir", str(root / "agent-state"), "--shell", "/bin/sh",
            "--alias", "front desk", "--share", str(share), cols=80, rows=24)
        console_screen = plain_console_session(dep, agent, key, eng)
        lib_sent, lib_fetched, refusals = asyncio.run(library_session(dep, agent, key))
        sent.update(lib_sent)
        fetched = {DOWN: (on_disk[DOWN], (eng / DOWN).read_bytes()),
                   LIB_DOWN: (on_disk[LIB_DOWN], lib_fetched[LIB_DOWN])}
        agent_screen = transcript(agent)
        dep.stop()  # everything at rest before the broker's files are read
        yield Story(dep, agent_screen, console_screen, sent, fetched,
                    root / "consentry-transfers", refusals)
    finally:
        dep.stop()


def test_uploads_and_downloads_are_byte_identical(story: Story) -> None:
    for name, data in story.sent.items():
        (landed,) = story.incoming.glob(f"*/{name}")
        assert landed.read_bytes() == data, name
        assert landed.stat().st_mode & 0o777 == 0o600  # private, never executable
    for name, (original, copy) in story.fetched.items():
        assert copy == original, name
    # Two sessions, a folder each.
    assert len([p for p in story.incoming.iterdir() if p.is_dir()]) == 2


def test_the_customer_saw_each_name_and_size(story: Story) -> None:
    screen = story.agent_screen
    # The banner is one row of 80 columns: the file, its size, then the
    # engineer (cut here; the row begins with who is connected).
    assert "consentry: Alice Example is watching -- " in screen
    assert f"Received {UP} (300 KB)" in screen
    assert f"Received {LIB_UP} (250 KB)" in screen
    assert f"Sent /shared/{DOWN} (400 KB)" in screen
    assert f"Sent /shared/{LIB_DOWN} (250 KB)" in screen


def test_escapes_and_control_characters_are_refused(story: Story) -> None:
    assert story.refusals == {
        "escape": CONTROL_CHARACTERS,
        "newline": CONTROL_CHARACTERS,
        "dotdot": LEAVES_FOLDER,
        "link": link_outside("/shared/escape"),
    }
    # Nothing of a refused name was made, and the link's target was not copied.
    names = [p.name for p in story.incoming.rglob("*")]
    assert not [n for n in names if n.startswith("ctl-")]
    assert not (story.dep.root / "eng" / "escape").exists()
    assert not (story.dep.root / "eng" / "passwd").exists()
    assert "not for engineers" not in story.console_screen
    # The customer saw the refused copy (the prompt's attempt stopped at its
    # stat; the library's at the open, which is what a transfer is).
    assert "Refused sending /shared/escape to Alice" in story.agent_screen


def test_the_marker_is_nowhere_at_the_broker(story: Story) -> None:
    needles = [MARKER.encode(), MARKER.encode("utf-16-le"), MARKER.encode("utf-16-be")]
    files = [p for p in story.dep.data_dir.rglob("*") if p.is_file()]
    # The search can find things: the events are there in plain bytes.
    assert any(b"file_transferred" in p.read_bytes() for p in files), files
    for path in [*files, story.dep.broker_stdout]:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle!r} found in {path}"
    # Personal data is kept sealed, so the bytes alone would not show a name
    # stored as such: the whole log read back in clear has none either.
    everything = story.dep.cli("audit", "list", "--json")
    assert everything.returncode == 0, everything.stderr
    assert "front desk" in everything.stdout  # unsealed: the alias reads in clear
    assert MARKER not in everything.stdout
    sessions = {json.loads(line)["session"] for line in everything.stdout.splitlines()
                if line.strip() and json.loads(line).get("session")}
    assert len(sessions) == 2
    for session in sessions:
        shown = story.dep.cli("audit", "show", session, "--json")
        assert shown.returncode == 0, shown.stderr
        assert MARKER not in shown.stdout


def file_events(dep: Deployment) -> list[dict]:
    result = dep.cli("audit", "list", "--json", "--type", "file_transferred")
    assert result.returncode == 0, result.stderr
    assert MARKER not in result.stdout
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_the_audit_has_each_transfer_without_its_name(story: Story) -> None:
    events = file_events(story.dep)
    bodies = sorted((e["body"]["direction"], e["body"]["bytes"], e["body"]["outcome"])
                    for e in events)
    assert bodies == sorted([
        ("upload", UP_SIZE, "complete"), ("download", DOWN_SIZE, "complete"),
        ("upload", LIB_SIZE, "complete"), ("download", LIB_SIZE, "complete"),
        ("download", 0, "refused"),  # the link, opened by the library
    ])
    for event in events:
        assert set(event["body"]) <= {"direction", "bytes", "outcome", "seat"}, event
        assert "escape" not in json.dumps(event)
    # The human-readable listing names no file either.
    listing = story.dep.cli("audit", "list", "--type", "file_transferred")
    assert listing.returncode == 0 and MARKER not in listing.stdout


def test_the_customers_record_names_the_files(story: Story) -> None:
    result = subprocess.run(
        [str(BIN / "consentry-agent"), "transfers",
         "--state-dir", str(story.dep.root / "agent-state")],
        capture_output=True, text=True, timeout=30, env=story.dep.env())
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"Alice Example sent to this computer: /{UP} (300 KB) - complete" in out
    assert f"Alice Example copied from this computer: /shared/{DOWN} (400 KB) - complete" in out
    assert f"/{LIB_UP} (250 KB) - complete" in out
    assert f"/shared/{LIB_DOWN} (250 KB) - complete" in out
    assert "/shared/escape (0 bytes) - refused" in out
