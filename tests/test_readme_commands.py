"""The README's command reference stays true: every sub-command and option of
the three programs' argument parsers is in its table, with the same choices,
and the table names nothing the parsers do not take."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from tests.test_cli_help import PARSERS, commands, options

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# Said once above the table instead of on every broker row.
EVERY_BROKER_COMMAND = "Every `consentry-broker` sub-command takes `--data-dir DIR`"
EVERY_COMMAND = "Every command takes `--help` and `--version`"
_PIPE = "\x00"


def table_commands() -> list[tuple[str, str]]:
    """(command cell, what-it-does cell) of each row of the Commands table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.replace("\\|", _PIPE).strip("|").split(" | ")]
        assert len(cells) == 2, line
        (command,) = re.findall(r"`([^`]+)`", cells[0])
        rows.append((command.replace(_PIPE, "|"), cells[1]))
    return rows


def is_command(parser: argparse.ArgumentParser) -> bool:
    """A parser that runs something, not only a group of sub-commands."""
    has_sub = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    return not has_sub or any(True for _ in options(parser))


def resolve(command: str) -> tuple[str, tuple[str, ...], argparse.ArgumentParser, str]:
    """The program, sub-command path and parser a table command names, and
    the rest of it (its arguments)."""
    words = command.split()
    prog = words[0]
    assert prog in PARSERS, command
    parser: argparse.ArgumentParser = PARSERS[prog]()
    path: list[str] = []
    for word in words[1:]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser, path = subs[0].choices[word], [*path, word]
    return prog, tuple(path), parser, " ".join(words[1 + len(path):])


def skipped(prog: str, action: argparse.Action) -> bool:
    return prog == "consentry-broker" and bool(
        {"--data-dir", "--config", "--print-config"} & set(action.option_strings))


def test_the_table_covers_every_command_and_option() -> None:
    mentioned: dict[tuple[str, tuple[str, ...]], set[str]] = {}
    problems = []
    for command, what in table_commands():
        assert what, f"{command}: says nothing about what it does"
        prog, path, parser, rest = resolve(command)
        known = {s: a for a in options(parser) for s in a.option_strings}
        used = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest))
        for flag in sorted(used - set(known)):
            problems.append(f"{command}: {flag} is not an option of {prog} {' '.join(path)}")
        for flag, values in re.findall(r"(--[a-z][a-z0-9-]*) ([a-z]+(?:\|[a-z]+)+)", rest):
            action = known.get(flag)
            if action is not None and set(values.split("|")) != set(action.choices or ()):
                problems.append(f"{command}: {flag} takes {sorted(action.choices or ())}, "
                                f"the table says {values}")
        for action in options(parser):
            # A tuple metavar (one name per value) is not a name to look for.
            shown = (action.metavar if isinstance(action.metavar, str) and action.metavar
                     else action.dest.upper())
            if not action.option_strings and shown not in rest:
                problems.append(f"{command}: {action.dest.upper()} is missing")
        mentioned.setdefault((prog, path), set()).update(used)
    for prog, build in PARSERS.items():
        for path, parser in commands(build()):
            if not is_command(parser):
                continue
            name = " ".join((prog, *path))
            if (prog, path) not in mentioned:
                problems.append(f"{name} is not in the table")
                continue
            for action in options(parser):
                if action.option_strings and not skipped(prog, action) and not (
                        set(action.option_strings) & mentioned[(prog, path)]):
                    problems.append(f"{name} {action.option_strings[0]} is not in the table")
    assert problems == []


def test_the_options_said_once_are_said() -> None:
    text = README.read_text(encoding="utf-8")
    assert EVERY_BROKER_COMMAND in text and EVERY_COMMAND in text


def test_the_design_document_is_in_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    assert "../shared" not in text
    assert "(docs/design.md)" in text
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    assert design.startswith("# ")
    # Every file the design names exists in the repository as it is.
    for path in set(re.findall(r"`((?:broker|agent|console|tests|bench)/[\w/.]+\.py)`",
                               design)):
        assert (ROOT / path).is_file(), path


def test_every_file_the_readme_names_is_in_a_clone() -> None:
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    files = re.findall(r"`((?:broker|agent|console|tests|bench|docs|certs)/[\w/.-]+\.(?:py|md))`",
                       text)
    assert links and files
    missing = sorted({p for p in links + files if not (ROOT / p).exists()})
    assert missing == []
